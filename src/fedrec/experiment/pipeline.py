"""Config → data → split → training → run directory. The CLI and the benchmarks both call this."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedrec.config import RunConfig
from fedrec.data.implicit import to_implicit
from fedrec.data.loaders import load_dataset, load_table
from fedrec.data.splits import make_split
from fedrec.data.table import Interactions, Split
from fedrec.experiment.outputs import RunDirectory
from fedrec.federated.configure import secagg_summary
from fedrec.federated.loop import aborted_rounds
from fedrec.report.machine import describe_machine
from fedrec.report.plots import plot_learning_curves
from fedrec.simulation.training import FederatedResult, train_federated
from fedrec.tracking import open_tracker
from fedrec.training.centralized import TrainResult, train_centralized
from fedrec.utils.atomic import atomic_open, atomic_write_text


@dataclass(frozen=True)
class Prepared:
    data: Interactions
    split: Split
    seconds: float


def load_data(cfg: RunConfig) -> Interactions:
    """The configured data set as one interaction table (implicit when configured)."""
    if cfg.data.name == "table":
        assert cfg.data.table is not None  # guaranteed by RunConfig validation
        spec = dict(cfg.data.table)
        path = spec.pop("path", None)
        if path is None:
            raise ValueError("[data.table] needs 'path'")
        data = load_table(Path(path), **spec)
    else:
        data = load_dataset(cfg.data.name, cfg.data.dir)
    if cfg.data.implicit:
        data = to_implicit(data, cfg.data.implicit_threshold)
    return data


def prepare(cfg: RunConfig) -> Prepared:
    start = time.perf_counter()
    data = load_data(cfg)
    split = make_split(data, cfg.data, cfg.seed, cfg.data.dir)
    return Prepared(data=data, split=split, seconds=time.perf_counter() - start)


def _environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


def summarize(
    cfg: RunConfig, prepared: Prepared, result: TrainResult | FederatedResult, seconds: float
) -> dict[str, Any]:
    split = prepared.split
    summary: dict[str, Any] = {
        "mode": cfg.mode,
        "data": {
            "name": prepared.data.name,
            "users": prepared.data.n_users,
            "items": prepared.data.n_items,
            "interactions": len(prepared.data),
            "split": split.protocol,
            "train_interactions": len(split.train),
            "valid_rows": len(split.valid),
            "test_rows": len(split.test),
        },
        "model": cfg.model.name,
        "protocol": cfg.eval.protocol,
        "valid": result.best_valid,
        "test": result.test_metrics,
        "seconds": seconds,
        "seconds_data": prepared.seconds,
        "seconds_train": result.seconds,
        "environment": _environment(),
        "machine": describe_machine(),
    }
    if isinstance(result, FederatedResult):
        summary.update(
            {
                "best_round": result.best_round,
                "rounds": result.rounds_run,
                "clients": result.clients,
                "seconds_per_round": result.seconds_per_round,
                "bytes": {
                    "up_total": result.bytes_up,
                    "down_total": result.bytes_down,
                    "up_per_client_round": _per_client(result, "bytes_up_per_client"),
                    "down_per_client_round": _per_client(result, "bytes_down_per_client"),
                },
            }
        )
        if result.resumed_from is not None:
            summary["resumed_from_round"] = result.resumed_from
        summary["stop_reason"] = result.stop_reason
        summary["aborted_rounds"] = aborted_rounds(result.history)
        if result.privacy is not None:
            summary["privacy"] = result.privacy
        summary["uploads"] = _uploads(cfg)
        if cfg.privacy.secagg.enabled:
            summary["secagg"] = secagg_summary(cfg, result.history)
    else:
        summary.update(
            {
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "seconds_per_epoch": result.seconds_per_epoch,
            }
        )
    if result.test_full is not None:
        summary["test_full"] = result.test_full
    return summary


def _uploads(cfg: RunConfig) -> dict[str, Any]:
    """What left each client, in words a reader can check against the config."""
    p = cfg.privacy
    return {
        "form": "dense fixed-shape vector" if p.dense_uploads else "sparse rows with item ids",
        "secure_aggregation": p.secagg.enabled,
        "homomorphic_encryption": p.he.enabled,
        "user_level_dp": p.dp.mode if p.dp.enabled else None,
        "local_dp": p.ldp.mechanism if p.ldp.enabled else None,
        "pseudo_items": p.obfuscation.pseudo_items,
        "encoding": cfg.federated.encoding,
    }


def _per_client(result: FederatedResult, key: str) -> float:
    values = [float(r[key]) for r in result.history if r.get("participants")]
    return sum(values) / len(values) if values else 0.0


def run_experiment(
    cfg: RunConfig,
    out: RunDirectory,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    *,
    resume: bool = False,
    tracking: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one configuration end to end and write its run directory; returns the summary.
    With ``[tracking] mlflow = true`` the run is mirrored in MLflow as it goes (``tracking``:
    extra arguments of :func:`~fedrec.tracking.open_tracker`, e.g. a parent run)."""
    start = time.perf_counter()
    out.write_config(cfg)  # threads are set by the training entry points themselves
    tracker = open_tracker(cfg, out.path, resume=resume, **(tracking or {}))
    try:
        summary = _run(cfg, out, on_eval, resume, tracker.log_record if tracker else None, start)
    except BaseException:
        if tracker is not None:
            tracker.finish(None, status="FAILED")
        raise
    if tracker is not None:
        tracker.finish(summary)
    return summary


def _run(
    cfg: RunConfig,
    out: RunDirectory,
    on_eval: Callable[[dict[str, Any]], None] | None,
    resume: bool,
    track: Callable[[dict[str, Any]], None] | None,
    start: float,
) -> dict[str, Any]:
    prepared = prepare(cfg)

    def _log(record: dict[str, Any]) -> None:
        out.log_metrics(record)
        if track is not None:
            track(record)
        if on_eval is not None:
            on_eval(record)

    result: TrainResult | FederatedResult
    if cfg.mode == "federated":
        result = train_federated(
            cfg,
            prepared.split,
            on_round=_log,
            checkpoint_dir=out.path / "checkpoints",
            resume=resume,
            on_resume=out.reset_metrics,
        )
    else:
        if resume:
            raise ValueError("--resume applies to federated runs (mode = 'federated')")
        result = train_centralized(cfg, prepared.split, on_eval=_log)
    if isinstance(result, FederatedResult) and result.audit is not None:
        audit = {"run": str(out.path), "canary_audit": result.audit}
        atomic_write_text(out.path / "audit.json", json.dumps(audit, indent=2) + "\n")
    if result.per_user_test is not None:
        frame = result.per_user_test.copy()
        if "user" in frame.columns:
            frame.insert(1, "raw_user_id", prepared.data.user_ids[frame["user"].to_numpy()])
        atomic_write_text(out.path / "per_user_test.csv", frame.to_csv(index=False))
    with atomic_open(out.path / "model.pt", "wb", encoding=None) as fh:
        # Simulation only: a deployed client keeps its private rows on its own device.
        torch.save(result.model.state_dict(), fh)
    x_key = "round" if cfg.mode == "federated" else "epoch"
    plot_learning_curves(result.history, out.path / "plots", x_key=x_key)
    summary = summarize(cfg, prepared, result, time.perf_counter() - start)
    out.write_summary(summary)
    return summary
