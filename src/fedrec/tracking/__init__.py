"""Experiment tracking: a fedrec run mirrored as an MLflow run (``pip install 'fedrec[tracking]'``).

Nothing in the core packages imports this; the run pipeline, the deployed server and
``fedrec tune`` open a :class:`~fedrec.tracking.mlflow_run.Tracker` when the config asks.
"""

from fedrec.tracking.mlflow_run import (
    Tracker,
    TrackingUnavailableError,
    TrackingWarning,
    attach_artifact,
    flatten_config,
    metric_key,
    open_tracker,
    tracking_uri,
)

__all__ = [
    "Tracker",
    "TrackingUnavailableError",
    "TrackingWarning",
    "attach_artifact",
    "flatten_config",
    "metric_key",
    "open_tracker",
    "tracking_uri",
]
