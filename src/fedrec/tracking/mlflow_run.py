"""One fedrec run as one MLflow run: params, per-round metrics, test once, artifacts, tags.

The run directory stays the record of truth; MLflow is a mirror for comparing runs. So a
tracking failure (server down, network gone, disk full on the store) never stops training: the
first one disables the tracker with a single :class:`TrackingWarning` and the run goes on.

MLflow metric names allow letters, digits and ``_ - . / : space``; ``valid/HR@10`` is logged as
``valid/HR_at_10`` (see :func:`metric_key`).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fedrec.config import RunConfig, flatten
from fedrec.utils.atomic import atomic_write_text

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

T = TypeVar("T")
RUN_FILE = "mlflow.json"
"""In the run directory: which tracking store and run mirror it (``fedrec audit`` adds to it)."""
ARTIFACTS = ("summary.json", "config.toml", "metrics.jsonl", "per_user_test.csv", "audit.json")
_BATCH = 100  # MLflow's limit on params (and tags) per log_batch call
_PARAM_MAX = 6000  # MLflow's limit on a param value's length
# A dead server must cost seconds, not MLflow's default of 7 retries with 120 s timeouts;
# set only when the user has not chosen their own.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class TrackingWarning(UserWarning):
    """MLflow tracking stopped; the run itself goes on."""


class TrackingUnavailableError(ValueError):
    """Tracking was asked for but MLflow is not installed."""


def tracking_uri(run_dir: Path) -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else a local SQLite store beside the run directory."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(run_dir.resolve().parent / 'mlflow.db').as_posix()}"


def _local_artifacts(uri: str) -> str | None:
    """Artifact root for a local SQLite store (beside the database); None for other stores,
    whose server or configuration decides."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()


def metric_key(key: str) -> str:
    """``key`` in MLflow's alphabet: ``@`` becomes ``_at_``, other unknown characters ``_``."""
    return re.sub(r"[^/\w.\- :]", "_", key.replace("@", "_at_"))


def flatten_config(cfg: RunConfig) -> dict[str, str]:
    """The resolved configuration as ``section.key -> value``, keys exactly as ``--set``."""
    return flatten(cfg.model_dump(mode="json"))


def privacy_mechanisms(cfg: RunConfig) -> str:
    """What protects the uploads, as a tag value (``none`` when nothing does)."""
    p = cfg.privacy
    names = []
    if p.secagg.enabled:
        names.append("secagg")
    if p.he.enabled:
        names.append("he-ckks")
    if p.dp.enabled:
        names.append(f"dp-{p.dp.mode}")
    if p.ldp.enabled:
        names.append(f"ldp-{p.ldp.mechanism}")
    if p.obfuscation.pseudo_items:
        names.append("pseudo-items")
    return ",".join(names) or "none"


def _numbers(record: dict[str, Any], skip: str) -> Iterator[tuple[str, float]]:
    for k, v in record.items():
        if k == skip or isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if math.isfinite(float(v)):
            yield metric_key(k), float(v)


class Tracker:
    """Mirror of one run directory in MLflow. Every call is a no-op once tracking failed."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        *,
        parent_run_id: str | None = None,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        uri: str | None = None,
    ) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise TrackingUnavailableError(
                "tracking.mlflow = true needs MLflow: pip install 'fedrec[tracking]'"
            ) from exc
        for key, value in _HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        self.cfg, self.run_dir = cfg, run_dir
        self.uri = uri or tracking_uri(run_dir)
        self.failed = False
        self.run_id: str | None = None
        self.step_key = "round" if cfg.mode == "federated" else "epoch"
        self._client: MlflowClient = MlflowClient(tracking_uri=self.uri)
        self._parent = parent_run_id
        self._name = run_name or cfg.tracking.run_name or run_dir.name
        self._tags = {
            "fedrec.data": cfg.data.name,
            "fedrec.model": cfg.model.name,
            "fedrec.mode": cfg.mode,
            "fedrec.privacy": privacy_mechanisms(cfg),
            "fedrec.run_dir": str(run_dir.resolve()),
            **cfg.tracking.tags,
            **(tags or {}),
        }

    def _guard(self, what: str, fn: Callable[[], T]) -> T | None:
        if self.failed:
            return None
        try:
            return fn()
        except Exception as exc:  # any MLflow or network failure: see module docstring
            self.failed = True
            warnings.warn(
                f"MLflow tracking stopped ({what} at {self.uri}: {type(exc).__name__}: "
                f"{str(exc)[:300]}); training goes on and {self.run_dir} stays complete. "
                "No further tracking warnings for this run.",
                TrackingWarning,
                stacklevel=3,
            )
            return None

    def start(self, *, resume: bool = False) -> None:
        """Create (or, on resume, reopen) the MLflow run and log params and tags."""
        self._guard("starting the run", lambda: self._start(resume))

    def _experiment_id(self) -> str:
        name = self.cfg.tracking.experiment
        for _ in range(3):  # parallel tuning workers may race to create it
            exp = self._client.get_experiment_by_name(name)
            if exp is not None:
                return str(exp.experiment_id)
            try:
                return str(
                    self._client.create_experiment(
                        name, artifact_location=_local_artifacts(self.uri)
                    )
                )
            except Exception:
                time.sleep(0.5)
        raise RuntimeError(f"cannot create or find MLflow experiment {name!r}")

    def _start(self, resume: bool) -> None:
        from mlflow.entities import Param

        previous = self.run_dir / RUN_FILE
        if resume and previous.exists():
            saved = json.loads(previous.read_text())
            if saved.get("tracking_uri") == self.uri:
                self.run_id = str(saved["run_id"])
                self._client.update_run(self.run_id, status="RUNNING")
                return
        tags = dict(self._tags)
        if self._parent is not None:
            tags["mlflow.parentRunId"] = self._parent
        run = self._client.create_run(self._experiment_id(), run_name=self._name, tags=tags)
        self.run_id = run.info.run_id
        atomic_write_text(
            previous,
            json.dumps(
                {
                    "tracking_uri": self.uri,
                    "experiment_id": run.info.experiment_id,
                    "run_id": self.run_id,
                },
                indent=2,
            )
            + "\n",
        )
        params = [Param(k, v[:_PARAM_MAX]) for k, v in sorted(flatten_config(self.cfg).items())]
        for i in range(0, len(params), _BATCH):
            self._client.log_batch(self.run_id, params=params[i : i + _BATCH])

    def log_record(self, record: dict[str, Any]) -> None:
        """One round's (or epoch's) record: every finite number in it, at its step."""
        if self.run_id is None:
            return
        step = int(record.get(self.step_key, 0))
        self._log_metrics(dict(_numbers(record, self.step_key)), step, "logging a round")

    def _log_metrics(self, metrics: dict[str, float], step: int, what: str) -> None:
        from mlflow.entities import Metric

        if self.run_id is None or not metrics:
            return
        run_id, now = self.run_id, int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in metrics.items()]
        self._guard(what, lambda: self._client.log_batch(run_id, metrics=batch))

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        if self.run_id is None:
            return
        run_id, batch = self.run_id, [RunTag(k, v) for k, v in tags.items()]
        self._guard("tagging the run", lambda: self._client.log_batch(run_id, tags=batch))

    def log_final(self, metrics: dict[str, float]) -> None:
        """Figures logged once (step 0), e.g. a study's best validation value."""
        self._log_metrics({metric_key(k): v for k, v in metrics.items()}, 0, "logging figures")

    def finish(
        self,
        summary: dict[str, Any] | None,
        *,
        status: str = "FINISHED",
        files: Sequence[Path] = (),
    ) -> None:
        """Final figures (test once, best validation, epsilon), artifacts (the run directory's
        and ``files``), run closed."""
        if self.run_id is None:
            return
        final: dict[str, float] = {}
        if summary is not None:
            for section in ("test", "test_full", "valid"):
                block = summary.get(section) or {}
                name = "best_valid" if section == "valid" else section
                final.update(
                    {
                        metric_key(f"{name}/{k}"): float(v)
                        for k, v in block.items()
                        if isinstance(v, int | float) and math.isfinite(float(v))
                    }
                )
            eps = (summary.get("privacy") or {}).get("epsilon")
            if isinstance(eps, int | float) and math.isfinite(float(eps)):
                final["privacy/epsilon"] = float(eps)
        self._log_metrics(final, 0, "logging final metrics")
        self._guard("uploading artifacts", lambda: self._upload(files))
        run_id = self.run_id
        self._guard("closing the run", lambda: self._client.set_terminated(run_id, status))

    def _upload(self, files: Sequence[Path]) -> None:
        assert self.run_id is not None
        for path in [self.run_dir / name for name in ARTIFACTS] + list(files):
            if path.is_file():
                self._client.log_artifact(self.run_id, str(path))
        plots = self.run_dir / "plots"
        if plots.is_dir() and any(plots.iterdir()):
            self._client.log_artifacts(self.run_id, str(plots), artifact_path="plots")


def open_tracker(
    cfg: RunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    uri: str | None = None,
) -> Tracker | None:
    """A started tracker when ``cfg.tracking.mlflow`` is on, else None."""
    if not cfg.tracking.mlflow:
        return None
    tracker = Tracker(
        cfg, run_dir, parent_run_id=parent_run_id, run_name=run_name, tags=tags, uri=uri
    )
    tracker.start(resume=resume)
    return tracker


def attach_artifact(run_dir: Path, path: Path) -> bool:
    """Add ``path`` (e.g. a later ``audit.json``) to the MLflow run mirroring ``run_dir``, if
    there is one; a failure is one warning, never an error. True when it was logged."""
    saved = run_dir / RUN_FILE
    if not saved.exists():
        return False
    try:
        from mlflow.tracking import MlflowClient

        for key, value in _HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        info = json.loads(saved.read_text())
        MlflowClient(tracking_uri=info["tracking_uri"]).log_artifact(info["run_id"], str(path))
    except Exception as exc:  # tracking never breaks the command it rides on
        warnings.warn(
            f"could not add {path.name} to the MLflow run of {run_dir}: "
            f"{type(exc).__name__}: {str(exc)[:300]}",
            TrackingWarning,
            stacklevel=2,
        )
        return False
    return True
