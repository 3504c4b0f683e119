"""What a finished training run hands back, centralized or federated."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from fedrec.models.base import Recommender


@dataclass(kw_only=True)
class RunResult:
    model: Recommender
    """The model selected on validation (the last one when nothing was evaluated)."""
    history: list[dict[str, Any]]
    """One record per epoch or round: loss, seconds, ``valid/<metric>`` when evaluated."""
    best_valid: dict[str, float]
    test_metrics: dict[str, float]
    """Test metrics under ``cfg.eval.protocol``, computed once, for the selected model."""
    test_full: dict[str, float] | None
    """Full-ranking test metrics when asked for with ``also_full`` (and protocol is sampled)."""
    per_user_test: pd.DataFrame | None
    seconds: float
    timing: dict[str, float] = field(default_factory=dict)
