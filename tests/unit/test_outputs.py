from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedrec.config import RunConfig, load_config
from fedrec.experiment.outputs import RunDirectory, RunDirectoryError, finished_run
from fedrec.utils.atomic import atomic_open, atomic_write_text


def test_run_directory_writes_config_metrics_summary(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    cfg = RunConfig(seed=5)
    run.write_config(cfg)
    run.log_metrics({"epoch": 1, "valid": {"HR@10": np.float32(0.5)}})
    run.log_metrics({"epoch": 2, "valid": {"HR@10": math.nan}})
    run.write_summary({"test": {"HR@10": 0.4}, "valid": {}, "seconds": 1.0})
    assert load_config(run.path / "config.toml") == cfg
    lines = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["valid"]["HR@10"] == 0.5
    assert lines[1]["valid"]["HR@10"] is None  # NaN is not JSON
    assert json.loads((run.path / "summary.json").read_text())["test"]["HR@10"] == 0.4


def test_finished_run_is_not_overwritten_by_accident(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    run.write_summary({"test": {}})
    with pytest.raises(RunDirectoryError, match="--overwrite"):
        RunDirectory(tmp_path / "run")
    RunDirectory(tmp_path / "run", overwrite=True)


def test_out_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirectoryError, match="not a directory"):
        RunDirectory(tmp_path / "f")


def test_atomic_write_keeps_old_content_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("partial")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temp file left behind


def test_finished_run_matches_the_resolved_config_but_not_threads(tmp_path: Path) -> None:
    cfg = RunConfig.model_validate({"seed": 3, "threads": 2})
    out = RunDirectory(tmp_path / "run")
    assert finished_run(cfg, out.path) is None  # nothing finished yet
    out.write_config(cfg)
    out.write_summary({"test": {"HR@10": 0.5}})
    assert finished_run(cfg.model_copy(update={"threads": 1}), out.path) == {"test": {"HR@10": 0.5}}
    assert finished_run(cfg.model_copy(update={"seed": 4}), out.path) is None
    # a run written by a fedrec with other options is not this configuration (nor an error)
    saved = out.path / "config.toml"
    saved.write_text(saved.read_text() + "\n[privacy.dp]\nretired_option = 1\n")
    assert finished_run(cfg, out.path) is None


def test_a_restarted_run_does_not_look_finished_with_the_replaced_runs_summary(
    tmp_path: Path,
) -> None:
    old = RunConfig.model_validate({"seed": 3})
    out = RunDirectory(tmp_path / "run")
    out.write_config(old)
    out.write_summary({"test": {"HR@10": 0.5}})
    new = old.model_copy(update={"seed": 4})
    RunDirectory(tmp_path / "run", overwrite=True).write_config(new)  # then interrupted
    assert finished_run(new, out.path) is None
    assert finished_run(old, out.path) is None
