"""``fedrec tune``: a hyperparameter study decided on validation alone.

Optuna, not FLAML: Optuna prunes a trial from its intermediate values (here the validation
curve, reported at every federated evaluation round or centralized epoch), keeps the study in a
SQLite file that any number of processes share (so a study resumes after a crash and runs
``--jobs`` workers), and draws its plots with matplotlib (no browser or network). FLAML's
cost-frugal search stops trials by a resource budget, not from the curve of a running one.

Trials never read test: training runs with ``read_test = False``. Once the study ends, the best
configuration is written as ``best.toml``, retrained in ``best/`` (or reused when that run is
already there) and its test metrics read once, for the summary.
"""

from __future__ import annotations

import json
import math
import os
import time
import tomllib
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import optuna
import pandas as pd

from fedrec.config import ConfigError, RunConfig, dump_config
from fedrec.data.table import Split
from fedrec.eval.metrics import LOWER_IS_BETTER
from fedrec.experiment import pipeline
from fedrec.experiment.outputs import RunDirectory, finished_run
from fedrec.report.machine import describe_machine
from fedrec.simulation.training import train_federated
from fedrec.tracking import Tracker, open_tracker
from fedrec.training.centralized import train_centralized
from fedrec.tune.space import Space, apply_params, space_from_dict, space_to_dict
from fedrec.utils.atomic import atomic_open, atomic_write_text

STUDY = "fedrec-tune"
DB = "study.db"
_SAME = {"threads", "tracking"}  # options a resumed study may change: speed and bookkeeping


@dataclass(frozen=True)
class Job:
    """What one worker needs; plain data, so it crosses to a worker process."""

    config_toml: str
    space: dict[str, dict[str, Any]]
    out: str
    trials: int
    timeout: float | None
    seed: int
    threads: int
    parent_run_id: str | None = None
    tracking_uri: str | None = None


def storage_url(out: Path) -> str:
    return f"sqlite:///{(out / DB).resolve().as_posix()}"


def direction_of(monitor: str) -> Literal["minimize", "maximize"]:
    return "minimize" if monitor in LOWER_IS_BETTER else "maximize"


def _pruner(cfg: RunConfig) -> optuna.pruners.BasePruner:
    # A trial is compared with the median of earlier trials at the same round (or epoch), and
    # only after a quarter of its run: early curves of good step sizes often start slower.
    steps = cfg.federated.rounds if cfg.mode == "federated" else cfg.train.epochs
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=steps // 4)


def _objective(
    job: Job, cfg: RunConfig, space: Space, split: Split
) -> Callable[[optuna.Trial], float]:
    monitor = cfg.train.monitor
    step_key = "round" if cfg.mode == "federated" else "epoch"
    out = Path(job.out)

    def objective(trial: optuna.Trial) -> float:
        params = {k: d.suggest(trial, k) for k, d in space.items()}
        tcfg = apply_params(cfg, {**params, "threads": job.threads})
        tdir = out / "trials" / f"{trial.number:04d}"
        run_dir = RunDirectory(tdir, overwrite=True)
        run_dir.write_config(tcfg)
        tracker = open_tracker(
            tcfg,
            tdir,
            parent_run_id=job.parent_run_id,
            run_name=f"trial {trial.number}",
            tags={"fedrec.tune.trial": str(trial.number)},
            uri=job.tracking_uri,
        )
        seen = {"step": 0}

        def on_record(record: dict[str, Any]) -> None:
            run_dir.log_metrics(record)
            if tracker is not None:
                tracker.log_record(record)
            seen["step"] = int(record.get(step_key, 0))
            value = record.get(f"valid/{monitor}")
            if value is None:
                return
            trial.report(float(value), seen["step"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at {step_key} {seen['step']}")

        start = time.perf_counter()
        try:
            if tcfg.mode == "federated":
                fres = train_federated(tcfg, split, on_round=on_record, read_test=False)
                best_valid, best_step, privacy = fres.best_valid, fres.best_round, fres.privacy
            else:
                cres = train_centralized(tcfg, split, on_eval=on_record, read_test=False)
                best_valid, best_step, privacy = cres.best_valid, cres.best_epoch, None
        except optuna.TrialPruned:
            _close(trial, run_dir, tracker, seen["step"], "pruned", time.perf_counter() - start)
            raise
        except BaseException:
            _close(trial, run_dir, tracker, seen["step"], "failed", time.perf_counter() - start)
            raise
        if monitor not in best_valid or not math.isfinite(best_valid[monitor]):
            _close(trial, run_dir, tracker, seen["step"], "failed", time.perf_counter() - start)
            raise ValueError(f"trial {trial.number}: no finite validation {monitor}")
        trial.set_user_attr("best_step", best_step)
        _close(
            trial,
            run_dir,
            tracker,
            seen["step"],
            "complete",
            time.perf_counter() - start,
            valid=best_valid,
            privacy=privacy,
        )
        return float(best_valid[monitor])

    return objective


def _close(
    trial: optuna.Trial,
    run_dir: RunDirectory,
    tracker: Tracker | None,
    steps: int,
    state: str,
    seconds: float,
    *,
    valid: dict[str, float] | None = None,
    privacy: dict[str, Any] | None = None,
) -> None:
    """A trial's own record (``trial.json``, no test figures) and its MLflow run closed."""
    trial.set_user_attr("steps", steps)
    trial.set_user_attr("seconds", seconds)
    record = {"trial": trial.number, "params": trial.params, "state": state, "steps": steps}
    record.update({"seconds": seconds, "valid": valid or {}})
    if privacy is not None:
        record["privacy"] = privacy
    run_dir.write_json("trial.json", record)
    if tracker is not None:
        tracker.set_tags({"fedrec.tune.state": state})
        status = {"complete": "FINISHED", "pruned": "KILLED"}.get(state, "FAILED")
        tracker.finish({"valid": valid or {}, "privacy": privacy}, status=status)


def _progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """One line per finished trial (printed by whichever worker ran it)."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = f"{study.best_value:.4f}" if complete else "-"
    value = f"{trial.value:.4f}" if trial.value is not None else "-"
    params = " ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    print(
        f"trial {trial.number:>3} {trial.state.name.lower():<8} value={value} best={best} "
        f"steps={trial.user_attrs.get('steps', '-')} "
        f"{trial.user_attrs.get('seconds', 0.0):.0f}s  {params}",
        flush=True,
    )


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _finished(study: optuna.Study) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(t.state in states for t in study.trials)


def run_worker(job: Job, split: Split | None = None, n_trials: int | None = None) -> None:
    """Run at most ``n_trials`` trials of the study in ``job.out``, stopping once it holds
    ``job.trials`` finished ones or ``job.timeout`` passes. Top-level (not a closure) so
    worker processes can import it."""
    from optuna.study import MaxTrialsCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = RunConfig.model_validate(tomllib.loads(job.config_toml))
    if split is None:
        split = pipeline.prepare(cfg).split
    study = optuna.load_study(
        study_name=STUDY,
        storage=storage_url(Path(job.out)),
        sampler=optuna.samplers.TPESampler(seed=job.seed),
        pruner=_pruner(cfg),
    )
    remaining = job.trials - _finished(study)
    if n_trials is not None:
        remaining = min(remaining, n_trials)
    if remaining <= 0:
        return
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    study.optimize(
        _objective(job, cfg, space_from_dict(job.space), split),
        n_trials=remaining,
        timeout=job.timeout,
        callbacks=[MaxTrialsCallback(job.trials, states=states), _progress],
        # A configuration that diverges or is invalid is a failed trial, not a failed study.
        catch=(ValueError, FloatingPointError, RuntimeError),
    )


def _open_study(cfg: RunConfig, space: Space, out: Path) -> optuna.Study:
    """Create the study in ``out`` or reopen it; a study of another configuration or space is
    refused, so a resumed study never mixes two searches."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=STUDY,
        storage=storage_url(out),
        direction=direction_of(cfg.train.monitor),
        load_if_exists=True,
    )
    base = json.dumps(cfg.model_dump(mode="json", exclude=_SAME), sort_keys=True)
    spec = json.dumps(space_to_dict(space), sort_keys=True)
    attrs = study.user_attrs
    if "config" in attrs and (attrs["config"] != base or attrs["space"] != spec):
        raise ConfigError(
            f"{out} holds a study of another configuration or search space; "
            "choose another --out (only threads and [tracking] may change on resume)"
        )
    study.set_user_attr("config", base)
    study.set_user_attr("space", spec)
    # RUNNING trials left by an interrupted session will never report: fail them so they
    # neither count as finished nor block the budget (one tune process per directory).
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    return study


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: its params, best validation value, steps run, pruned or not."""
    minimize = study.direction.name == "MINIMIZE"
    rows = []
    for t in study.trials:
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "best_valid": _best_value(t, minimize),
                "steps": t.user_attrs.get("steps"),
                "best_step": t.user_attrs.get("best_step"),
                "pruned": t.state.name == "PRUNED",
                "seconds": t.user_attrs.get("seconds"),
                **{f"param:{k}": v for k, v in t.params.items()},
            }
        )
    return pd.DataFrame(rows)


def _best_value(t: optuna.trial.FrozenTrial, minimize: bool) -> float | None:
    """A complete trial's value; for a pruned one, the best of the validation values it
    reported before it was stopped (Optuna keeps only the last)."""
    if t.state.name != "PRUNED" or not t.intermediate_values:
        return t.value
    values = list(t.intermediate_values.values())
    return min(values) if minimize else max(values)


def _markdown(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return _short(v)


def write_plots(study: optuna.Study, out: Path) -> dict[str, str]:
    """Optimisation history and parameter importances as PNG; a plot that cannot be drawn yet
    (importances need two finished trials that differ) is named with the reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    out.mkdir(parents=True, exist_ok=True)
    notes: dict[str, str] = {}
    draws: dict[str, Callable[[optuna.Study], Any]] = {
        "optimisation_history": ovm.plot_optimization_history,
        "param_importances": ovm.plot_param_importances,
    }
    for name, draw in draws.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks these plots experimental
                ax = draw(study)
            fig = ax.figure
            fig.set_size_inches(7, 4.5)
            fig.tight_layout()
            with atomic_open(out / f"{name}.png", "wb", encoding=None) as fh:
                fig.savefig(fh, format="png", dpi=100)
            plt.close(fig)
            notes[name] = f"plots/{name}.png"
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            notes[name] = f"not drawn: {exc}"
    return notes


def tune(
    cfg: RunConfig,
    out: Path,
    *,
    trials: int,
    space: Space,
    jobs: int = 1,
    timeout: float | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) the study in ``out`` until it holds ``trials`` finished trials, then
    retrain the best configuration and read its test metrics once; returns the summary."""
    if trials < 1 or jobs < 1:
        raise ConfigError("--trials and --jobs must be at least 1")
    out.mkdir(parents=True, exist_ok=True)
    study = _open_study(cfg, space, out)
    parent = open_tracker(
        cfg,
        out,
        resume=True,
        run_name=cfg.tracking.run_name or f"tune {out.name}",
        tags={"fedrec.tune": "study", "fedrec.tune.monitor": cfg.train.monitor},
    )
    try:
        return _run_study(cfg, out, study, parent, trials, space, jobs, timeout, echo)
    except BaseException:
        if parent is not None:
            parent.finish(None, status="FAILED")
        raise


def _run_study(
    cfg: RunConfig,
    out: Path,
    study: optuna.Study,
    parent: Tracker | None,
    trials: int,
    space: Space,
    jobs: int,
    timeout: float | None,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    threads = max(1, (cfg.threads or os.cpu_count() or 1) // jobs)
    job = Job(
        config_toml=dump_config(cfg),
        space=space_to_dict(space),
        out=str(out),
        trials=trials,
        timeout=timeout,
        seed=cfg.seed,
        threads=threads,
        parent_run_id=None if parent is None else parent.run_id,
        tracking_uri=None if parent is None else parent.uri,
    )
    before = _finished(study)
    echo(
        f"study {out / DB}: {before} of {trials} trials finished; {jobs} worker(s) of "
        f"{threads} thread(s); objective: validation {cfg.train.monitor} "
        f"({direction_of(cfg.train.monitor)}); test is not read until the study ends"
    )
    start = time.perf_counter()
    remaining = trials - before
    # Each worker gets its share of the trials and its own sampler seed, new on every resumed
    # session too: a sampler reseeded as before would propose the same points again.
    shares = [remaining // jobs + (i < remaining % jobs) for i in range(jobs)]
    work = [(replace(job, seed=cfg.seed + 7919 * before + i), n) for i, n in enumerate(shares) if n]
    if len(work) == 1:
        run_worker(work[0][0], pipeline.prepare(cfg).split, work[0][1])
    elif work:
        with ProcessPoolExecutor(len(work), mp_context=get_context("spawn")) as pool:
            for future in [pool.submit(run_worker, w, None, n) for w, n in work]:
                future.result()
    wall = float(study.user_attrs.get("wall_seconds", 0.0)) + time.perf_counter() - start
    study.set_user_attr("wall_seconds", wall)
    study = optuna.load_study(study_name=STUDY, storage=storage_url(out))
    table = trials_table(study)
    atomic_write_text(out / "trials.csv", table.to_csv(index=False))
    atomic_write_text(out / "trials.md", _markdown(table))
    plots = write_plots(study, out / "plots")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(f"no trial of {out / DB} finished; nothing to retrain")
    best = study.best_trial
    assert best.value is not None  # a complete trial has its value
    best_cfg = apply_params(cfg, best.params)
    header = (
        f"# Chosen by `fedrec tune` on validation {cfg.train.monitor} = {best.value:.4f} "
        f"(trial {best.number} of {len(study.trials)}).\n"
    )
    atomic_write_text(out / "best.toml", header + dump_config(best_cfg))
    best_dir = out / "best"
    final = finished_run(best_cfg, best_dir)
    if final is None:
        echo(f"retraining the best configuration (trial {best.number}) in {best_dir}")
        extra = None
        if parent is not None:
            extra = {"parent_run_id": parent.run_id, "uri": parent.uri, "run_name": "best"}
        final = pipeline.run_experiment(
            best_cfg, RunDirectory(best_dir, overwrite=True), tracking=extra
        )
    counts = table["state"].value_counts().to_dict() if len(table) else {}
    summary: dict[str, Any] = {
        "config_monitor": f"valid/{cfg.train.monitor}",
        "direction": direction_of(cfg.train.monitor),
        "trials": {"total": len(study.trials), **{str(k): int(v) for k, v in counts.items()}},
        "wall_seconds": wall,
        "jobs": jobs,
        "space": space_to_dict(space),
        "best": {
            "trial": best.number,
            "params": best.params,
            "valid": best.value,
            "steps": best.user_attrs.get("steps"),
            "best_step": best.user_attrs.get("best_step"),
        },
        "best_config": "best.toml",
        "retrained": {"dir": "best", "valid": final["valid"], "test": final["test"]},
        "plots": plots,
        "machine": describe_machine(),
    }
    if cfg.privacy.dp.enabled or cfg.privacy.ldp.enabled:
        summary["privacy"] = {
            "trials_on_private_data": len(study.trials),
            "note": (
                "every trial trained on the private data: releasing the tuned configuration "
                "costs privacy beyond one run's epsilon, growing with the number of trials "
                "(Papernot & Steinke, ICLR 2022); account for all of them"
            ),
            "epsilon_of_best_run": (final.get("privacy") or {}).get("epsilon"),
        }
    atomic_write_text(out / "tune.json", json.dumps(summary, indent=2, default=str) + "\n")
    if parent is not None:
        parent.log_final(
            {f"best_valid/{cfg.train.monitor}": float(best.value), "trials": len(study.trials)}
            | {f"test/{k}": float(v) for k, v in final["test"].items()}
        )
        parent.finish(None, files=[out / n for n in ("tune.json", "trials.csv", "best.toml")])
    return summary
