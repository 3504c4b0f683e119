"""Model names as the run configuration defines them, so a test's model table cannot fall
behind the configuration: a name added to ``ModelConfig.name`` becomes a test case that
fails until the table builds it."""

from __future__ import annotations

from typing import get_args

from pydantic import ValidationError

from fedrec.config import ModelConfig, RunConfig

MODEL_NAMES: tuple[str, ...] = get_args(ModelConfig.model_fields["name"].annotation)


def _trains_federatedly(name: str) -> bool:
    try:
        RunConfig.model_validate({"mode": "federated", "model": {"name": name}})
    except ValidationError:
        return False
    return True


FEDERATED_MODEL_NAMES: tuple[str, ...] = tuple(n for n in MODEL_NAMES if _trains_federatedly(n))
"""The models the configuration accepts for federated training (all but popularity today)."""
