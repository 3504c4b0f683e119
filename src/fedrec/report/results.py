"""Writing a benchmark's results: one JSON file and one Markdown table, atomically.

Every benchmark script ends the same way, so it lives here once: the JSON carries the
machine description beside the figures, and a script measured a part at a time can merge
its new rows into the rows already on disk.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

from fedrec.utils.atomic import atomic_write_text


def write_results(
    out_dir: Path, stem: str, payload: dict[str, Any], markdown: str, machine: dict[str, Any]
) -> None:
    """``out_dir/stem.json`` (payload plus the machine) and ``out_dir/stem.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    body = json.dumps({**payload, "machine": machine}, indent=2) + "\n"
    atomic_write_text(out_dir / f"{stem}.json", body)
    atomic_write_text(out_dir / f"{stem}.md", markdown)


def merge_rows(
    path: Path,
    rows: Sequence[dict[str, Any]],
    key: Callable[[dict[str, Any]], Hashable],
    order: Sequence[Hashable],
) -> list[dict[str, Any]]:
    """The rows already in ``path`` (its ``rows`` list) updated with ``rows``, in ``order``."""
    previous = json.loads(path.read_text())["rows"] if path.exists() else []
    merged = {key(r): r for r in previous}
    merged.update({key(r): r for r in rows})
    return [merged[k] for k in order if k in merged]
