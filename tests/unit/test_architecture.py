"""The package import graph of src/fedrec matches the dependency table of the design.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a lazy
import is still knowledge of the other package. An edge outside ``ALLOWED`` fails the test
unless it is one of today's known violations in ``KNOWN_VIOLATIONS``, which may only shrink:
an entry whose import is gone fails too, so it gets deleted.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

_CORE = {"data", "models", "eval", "federated", "privacy", "training", "utils"}
_ALL = _CORE | {"config", "simulation", "deploy", "experiment", "report", "tracking", "tune", "cli"}

ALLOWED: dict[str, set[str]] = {
    # core: knows nothing of how clients are run or reached, nor the run schema (config)
    "utils": set(),
    "data": {"utils"},
    "models": {"data", "utils"},
    "eval": {"data", "models", "utils"},
    "training": {"data", "models", "eval", "utils"},
    "federated": {"data", "models", "eval", "utils"},
    "privacy": {"data", "models", "eval", "federated", "utils"},
    # the run schema may check names against the core's registries
    "config": _CORE,
    # outer layers
    "report": {"data", "eval", "config", "utils"},
    "simulation": _CORE | {"config"},
    "tracking": {"config", "utils"},
    "deploy": _CORE | {"config", "report", "tracking"},
    "experiment": _ALL - {"cli", "tune", "experiment"},
    "tune": _ALL - {"cli", "tune"},
    "cli": _ALL - {"cli"},
}
"""Package -> the fedrec packages it may import (the table in the design note)."""

# Today's violations, importer module -> imported module. Delete a line when its import goes;
# never add one: fix the import instead.
KNOWN_VIOLATIONS: set[tuple[str, str]] = {
    # core modules that read the whole run schema instead of typed settings
    ("fedrec.data.splits", "fedrec.config"),
    ("fedrec.models.factory", "fedrec.config"),
    ("fedrec.training.centralized", "fedrec.config"),
    ("fedrec.federated.configure", "fedrec.config"),
    # the federated <-> privacy cycle (privacy builds on federated; this direction goes)
    ("fedrec.federated.configure", "fedrec.privacy.dp"),
    ("fedrec.federated.configure", "fedrec.privacy.ldp"),
    ("fedrec.federated.configure", "fedrec.privacy.secagg.config"),
    ("fedrec.federated.configure", "fedrec.privacy.server"),
    ("fedrec.federated.loop", "fedrec.privacy.server"),
    # the deployment reaching into the composition root
    ("fedrec.deploy.launcher", "fedrec.experiment.pipeline"),
    ("fedrec.deploy.server", "fedrec.experiment.outputs"),
    ("fedrec.deploy.server_app", "fedrec.experiment.outputs"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    base = SRC.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(module: str, source: str, is_package: bool = False) -> Iterator[str]:
    """Every fedrec module ``source`` (the text of ``module``) imports, relative ones resolved;
    ``from pkg import name`` counts as ``pkg.name`` when that is a module."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "fedrec")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "fedrec":
                continue
            subs = [f"{target}.{a.name}" for a in node.names if _is_module(f"{target}.{a.name}")]
            yield from subs or [target]


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def violations(module: str, source: str, is_package: bool = False) -> set[tuple[str, str]]:
    """The (importer, imported) module pairs of ``source`` that the table forbids."""
    own = _package(module)
    out = set()
    for target in imports_of(module, source, is_package):
        other = _package(target)
        if own is None or other is None or other == own:
            continue
        if other not in ALLOWED.get(own, set()):
            out.add((module, target))
    return out


def _tree_violations() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in sorted((SRC / "fedrec").rglob("*.py")):
        found |= violations(
            _module_name(path), path.read_text(encoding="utf-8"), path.name == "__init__.py"
        )
    return found


def test_every_package_is_in_the_table() -> None:
    packages = {p.name for p in (SRC / "fedrec").iterdir() if (p / "__init__.py").is_file()}
    assert packages | {"config"} == set(ALLOWED)


def test_the_allowed_table_has_no_cycle() -> None:
    done: set[str] = set()

    def visit(pkg: str, path: tuple[str, ...]) -> None:
        assert pkg not in path, f"cycle: {' -> '.join((*path, pkg))}"
        if pkg in done:
            return
        for dep in ALLOWED[pkg]:
            visit(dep, (*path, pkg))
        done.add(pkg)

    for pkg in ALLOWED:
        visit(pkg, ())


def test_imports_follow_the_table() -> None:
    found = _tree_violations()
    new = sorted(found - KNOWN_VIOLATIONS)
    assert not new, "forbidden imports (importer, imported):\n" + "\n".join(map(str, new))


def test_known_violations_only_shrink() -> None:
    stale = sorted(KNOWN_VIOLATIONS - _tree_violations())
    assert not stale, "fixed, so delete from KNOWN_VIOLATIONS:\n" + "\n".join(map(str, stale))


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "fedrec.data.newsource",
            "from fedrec.simulation.engines import BatchedEngine\n",
            {("fedrec.data.newsource", "fedrec.simulation.engines")},
        ),
        (
            "fedrec.privacy.mech",
            "def f():\n    import fedrec.deploy.server as s\n    return s\n",
            {("fedrec.privacy.mech", "fedrec.deploy.server")},
        ),
        (
            "fedrec.federated.ingest",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fedrec import config\n",
            {("fedrec.federated.ingest", "fedrec.config")},
        ),
        (
            "fedrec.models.mf",
            "from ..federated import layout\nfrom . import base\n",
            {("fedrec.models.mf", "fedrec.federated.layout")},
        ),
        (
            "fedrec.simulation.engines",
            "from fedrec.federated.client import LocalTrainer\nimport numpy\n",
            set(),
        ),
    ],
    ids=["forbidden", "lazy", "type-checking", "relative", "allowed"],
)
def test_the_checker_flags_an_injected_forbidden_import(
    module: str, source: str, expected: set[tuple[str, str]]
) -> None:
    assert violations(module, source) == expected
