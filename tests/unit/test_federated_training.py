"""Federated training end to end on synthetic data: learning, selection, checkpoints, resume."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from fedrec.config import RunConfig
from fedrec.simulation.training import FederatedResult, train_federated
from tests.synthetic import mf_run_config, two_taste_split

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
    return mf_run_config(base, dim=8)


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


def test_test_is_read_once_at_the_end_for_the_selected_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A spy on every evaluation and every training round: the test split is read once, after
    the last round, with the model selected on validation."""
    import fedrec.simulation.engines as engines
    import fedrec.simulation.training as training

    calls: list[str] = []
    evaluate, train_clients = training.evaluate, engines.train_clients

    def spy_eval(scorer: Any, split: Any, which: str, protocol: str, ks: list[int]) -> Any:
        calls.append(f"{which}/{protocol}")
        return evaluate(scorer, split, which=which, protocol=protocol, ks=ks)  # type: ignore[arg-type]

    def spy_train(*args: Any, **kw: Any) -> Any:
        calls.append("train")
        return train_clients(*args, **kw)

    monkeypatch.setattr(training, "evaluate", spy_eval)
    monkeypatch.setattr(engines, "train_clients", spy_train)
    cfg = _cfg(rounds=6)
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"also_full": True})})
    result = train_federated(cfg, _split())
    last_train = max(i for i, c in enumerate(calls) if c == "train")
    tests = [i for i, c in enumerate(calls) if c.startswith("test/")]
    assert [calls[i] for i in tests] == ["test/sampled", "test/full"]
    assert min(tests) > last_train and calls.count("valid/sampled") == 3
    assert result.best_round in (2, 4, 6)


class _KilledError(Exception):
    pass


def _straight_and_killed(
    cfg: RunConfig,
    tmp_path: Path,
    kill_at: int,
    on_resume: Callable[[list[dict[str, Any]]], None] | None = None,
) -> tuple[FederatedResult, FederatedResult]:
    """The run straight through, and the same run killed after round ``kill_at`` and resumed."""
    split = _split()
    straight = train_federated(cfg, split, checkpoint_dir=tmp_path / "a")

    def kill(record: dict[str, Any]) -> None:
        if record["round"] == kill_at:
            raise _KilledError

    with pytest.raises(_KilledError):
        train_federated(cfg, split, checkpoint_dir=tmp_path / "b", on_round=kill)
    resumed = train_federated(
        cfg, split, checkpoint_dir=tmp_path / "b", resume=True, on_resume=on_resume
    )
    a = dict(straight.model.named_parameters())
    for name, p in resumed.model.named_parameters():
        assert torch.equal(p, a[name]), name
    return straight, resumed


def test_killed_run_resumes_to_the_same_model(tmp_path: Path) -> None:
    cfg = _cfg(sampling="poisson", rate=0.5, dropout=0.1, strategy="fedadam", server_lr=0.05)
    seen: list[list[dict[str, Any]]] = []
    # The last checkpoint before round 5 was written at round 4.
    straight, resumed = _straight_and_killed(
        cfg, tmp_path, kill_at=5, on_resume=lambda h: seen.append(list(h))
    )
    assert resumed.resumed_from == 4 and [r["round"] for r in seen[0]] == [1, 2, 3, 4]
    assert resumed.test_metrics == straight.test_metrics
    assert [r["round"] for r in resumed.history] == list(range(1, 9))


def test_killed_averaged_run_resumes_to_the_same_model(tmp_path: Path) -> None:
    """The moving average of ``ema_decay`` is checkpointed with the rest."""
    cfg = _cfg(ema_decay=0.8, sampling="poisson", rate=0.5)
    straight, resumed = _straight_and_killed(cfg, tmp_path, kill_at=7)
    assert resumed.resumed_from == 6

    def timeless(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in history]

    assert timeless(resumed.history) == timeless(straight.history)


def test_averaging_changes_what_is_released_not_how_clients_train() -> None:
    split = _split()
    plain = train_federated(_cfg(), split)
    averaged = train_federated(_cfg(ema_decay=0.7), split)
    assert [r["loss"] for r in averaged.history] == [r["loss"] for r in plain.history]
    items = "item_emb.weight"
    released = dict(averaged.model.named_parameters())[items]
    assert not torch.equal(released, dict(plain.model.named_parameters())[items])


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_federated(_cfg(), _split(), checkpoint_dir=tmp_path, resume=True)


def test_cross_silo_partition_by_random_silos() -> None:
    result = train_federated(_cfg(partition="random", silos=6, rounds=4), _split())
    assert result.clients == 6


def test_killed_dp_run_resumes_with_its_accountant_and_clip(tmp_path: Path) -> None:
    raw = _cfg(sampling="poisson", rate=0.5, weighting="uniform").model_dump()
    raw["privacy"] = {
        "dp": {"enabled": True, "noise_multiplier": 0.8, "adaptive_clip": True},
        "obfuscation": {"pseudo_items": 2},
    }
    straight, resumed = _straight_and_killed(RunConfig.model_validate(raw), tmp_path, kill_at=7)
    assert resumed.resumed_from == 6
    assert straight.privacy is not None and resumed.privacy == straight.privacy
    clips = [r["clip"] for r in straight.history]
    assert len(set(clips)) > 1  # the adaptive clip really moved, and was restored


def test_a_diverging_run_stops_and_keeps_its_best_validated_round() -> None:
    cfg = _cfg(rounds=12, eval_every=1, local={"epochs": 1, "batch_size": 4, "lr": 60.0})
    result = train_federated(cfg, _split())
    assert result.stop_reason.startswith("diverged")
    assert result.rounds_run < 12 and 1 <= result.best_round < result.rounds_run
    assert all(math.isfinite(v) for v in result.test_metrics.values())
