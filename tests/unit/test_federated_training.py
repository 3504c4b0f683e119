"""Federated training end to end on synthetic data: learning, selection, checkpoints, resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from fedrec.config import RunConfig
from fedrec.simulation.training import train_federated
from tests.synthetic import two_taste_split

_split = two_taste_split


def _cfg(**fed: Any) -> RunConfig:
    base: dict[str, Any] = {
        "rounds": 8,
        "eval_every": 2,
        "patience": 0,
        "checkpoint_every": 2,
        "local": {"epochs": 2, "batch_size": 8, "lr": 0.3, "negatives": 2},
    }
    base.update(fed)
    return RunConfig.model_validate(
        {
            "mode": "federated",
            "seed": 1,
            "model": {"name": "mf", "dim": 8, "init_std": 0.1},
            "eval": {"ks": [5]},
            "train": {"monitor": "HR@5"},
            "federated": base,
        }
    )


def test_federated_mf_learns_the_taste_groups() -> None:
    result = train_federated(_cfg(rounds=30, eval_every=5), _split())
    assert result.rounds_run == 30
    assert result.best_valid["HR@5"] > 0.75  # 5 of 11 candidates: random is about 0.45
    assert result.history[0]["loss"] > result.history[-1]["loss"]
    assert result.bytes_up > 0 and result.bytes_down > 0


def test_best_round_is_chosen_on_validation_only() -> None:
    split = _split()
    result = train_federated(_cfg(rounds=6), split)
    evaluated = [r for r in result.history if "valid/HR@5" in r]
    best = max(evaluated, key=lambda r: r["valid/HR@5"])  # first maximum wins ties
    assert result.best_round == best["round"]
    assert all("test" not in k for r in result.history for k in r)


def test_killed_run_resumes_to_the_same_model(tmp_path: Path) -> None:
    split = _split()
    cfg = _cfg(sampling="poisson", rate=0.5, dropout=0.1, strategy="fedadam", server_lr=0.05)
    straight = train_federated(cfg, split, checkpoint_dir=tmp_path / "a")

    class KilledError(Exception):
        pass

    def kill_after_round_5(record: dict[str, Any]) -> None:
        if record["round"] == 5:  # the last checkpoint was written at round 4
            raise KilledError

    with pytest.raises(KilledError):
        train_federated(cfg, split, checkpoint_dir=tmp_path / "b", on_round=kill_after_round_5)
    seen: list[list[dict[str, Any]]] = []
    resumed = train_federated(
        cfg,
        split,
        checkpoint_dir=tmp_path / "b",
        resume=True,
        on_resume=lambda h: seen.append(list(h)),
    )
    assert resumed.resumed_from == 4 and [r["round"] for r in seen[0]] == [1, 2, 3, 4]
    a = dict(straight.model.named_parameters())
    for name, p in resumed.model.named_parameters():
        assert torch.equal(p, a[name]), name
    assert resumed.test_metrics == straight.test_metrics
    assert [r["round"] for r in resumed.history] == list(range(1, 9))


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_federated(_cfg(), _split(), checkpoint_dir=tmp_path, resume=True)


def test_cross_silo_partition_by_random_silos() -> None:
    result = train_federated(_cfg(partition="random", silos=6, rounds=4), _split())
    assert result.clients == 6


def test_killed_dp_run_resumes_with_its_accountant_and_clip(tmp_path: Path) -> None:
    split = _split()
    raw = _cfg(sampling="poisson", rate=0.5, weighting="uniform").model_dump()
    raw["privacy"] = {
        "dp": {"enabled": True, "noise_multiplier": 0.8, "adaptive_clip": True},
        "obfuscation": {"pseudo_items": 2},
    }
    cfg = RunConfig.model_validate(raw)
    straight = train_federated(cfg, split, checkpoint_dir=tmp_path / "a")

    class KilledError(Exception):
        pass

    def kill(record: dict[str, Any]) -> None:
        if record["round"] == 7:
            raise KilledError

    with pytest.raises(KilledError):
        train_federated(cfg, split, checkpoint_dir=tmp_path / "b", on_round=kill)
    resumed = train_federated(cfg, split, checkpoint_dir=tmp_path / "b", resume=True)
    assert resumed.resumed_from == 6
    a = dict(straight.model.named_parameters())
    for name, p in resumed.model.named_parameters():
        assert torch.equal(p, a[name]), name
    assert straight.privacy is not None and resumed.privacy == straight.privacy
    clips = [r["clip"] for r in straight.history]
    assert len(set(clips)) > 1  # the adaptive clip really moved, and was restored


def test_a_diverging_run_stops_and_keeps_its_best_validated_round() -> None:
    cfg = _cfg(rounds=12, eval_every=1, local={"epochs": 1, "batch_size": 4, "lr": 60.0})
    result = train_federated(cfg, _split())
    assert result.stop_reason.startswith("diverged")
    assert result.rounds_run < 12 and 1 <= result.best_round < result.rounds_run
    assert all(math.isfinite(v) for v in result.test_metrics.values())
