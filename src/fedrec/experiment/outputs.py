"""The run directory: resolved config, per-evaluation metrics and a summary, written atomically.

A run directory is the unit of reproducibility: ``config.toml`` says what ran,
``metrics.jsonl`` what happened along the way and ``summary.json`` what came out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fedrec.config import RunConfig, dump_config
from fedrec.utils.atomic import atomic_write_text


class RunDirectoryError(RuntimeError):
    """The output directory cannot be used as given."""


def _jsonable(value: Any) -> Any:
    """Plain JSON types; NaN and infinities become None (JSON has no such numbers)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


class RunDirectory:
    """Owns one run's output folder.

    A folder that already holds a finished run (a ``summary.json``) is refused unless
    ``overwrite`` is set, so a typo in ``--out`` never silently replaces earlier results.
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise RunDirectoryError(f"--out {self.path} exists and is not a directory")
        if (self.path / "summary.json").exists() and not overwrite:
            raise RunDirectoryError(
                f"{self.path} already holds a finished run (summary.json); "
                "choose another --out or pass --overwrite"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        self._metrics: list[str] = []
        metrics = self.path / "metrics.jsonl"
        if overwrite and metrics.exists():
            metrics.unlink()

    def reset_metrics(self, records: list[dict[str, Any]]) -> None:
        """Replace the metrics with ``records`` (on resume: the checkpoint's history, so
        rounds logged after the checkpoint and then lost are not listed twice)."""
        self._metrics = [json.dumps(_jsonable(r), sort_keys=True) for r in records]
        atomic_write_text(self.path / "metrics.jsonl", "".join(m + "\n" for m in self._metrics))

    def write_config(self, cfg: RunConfig) -> None:
        """Start a run here: an earlier run's summary goes first, so that a summary beside a
        config always came from that config (a restart interrupted before its own summary
        must not look finished with the replaced run's results)."""
        (self.path / "summary.json").unlink(missing_ok=True)
        atomic_write_text(self.path / "config.toml", dump_config(cfg))

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one evaluation record; the whole file is rewritten atomically each time."""
        self._metrics.append(json.dumps(_jsonable(record), sort_keys=True))
        atomic_write_text(self.path / "metrics.jsonl", "\n".join(self._metrics) + "\n")

    def write_json(self, name: str, payload: dict[str, Any]) -> Path:
        target = self.path / name
        atomic_write_text(target, json.dumps(_jsonable(payload), indent=2, sort_keys=True) + "\n")
        return target

    def write_summary(self, summary: dict[str, Any]) -> Path:
        return self.write_json("summary.json", summary)


def finished_run(cfg: RunConfig, path: Path) -> dict[str, Any] | None:
    """The summary of a finished run in ``path`` made from the same resolved configuration
    (``threads`` and ``tracking`` aside: they change speed and bookkeeping, not results), else
    None. Benchmarks use it to
    resume where an interrupted invocation stopped instead of retraining."""
    summary, saved = path / "summary.json", path / "config.toml"
    if not (summary.exists() and saved.exists()):
        return None
    from fedrec.config import ConfigError, load_config

    try:
        previous = load_config(saved)
    except ConfigError:
        return None  # written by a fedrec whose options differ: not this configuration
    same = {"threads", "tracking"}
    if cfg.model_dump(exclude=same) != previous.model_dump(exclude=same):
        return None
    data: dict[str, Any] = json.loads(summary.read_text())
    return data
