"""Centralised training on a tiny synthetic low-rank data set."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from fedrec.config import RunConfig
from fedrec.data.sampling import TrainingNegativeSampler
from fedrec.data.table import Holdout, Interactions, Split
from fedrec.eval.protocols import evaluate
from fedrec.models import MF, Popularity
from fedrec.training import ModelScorer, TrainResult, train_centralized

N_USERS, N_ITEMS, N_POS, N_NEG = 80, 60, 12, 30


def _low_rank_split(seed: int = 0) -> Split:
    """Each user likes the top items of a rank-2 score matrix; one liked item each for
    validation and test, ranked against items the user does not like."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(N_USERS, 2)) @ rng.normal(size=(2, N_ITEMS))
    liked = np.argsort(-scores, axis=1)[:, :N_POS]
    for row in liked:
        rng.shuffle(row)
    disliked = np.argsort(-scores, axis=1)[:, N_POS:]
    negs = np.stack([rng.choice(row, N_NEG, replace=False) for row in disliked])
    users = np.arange(N_USERS, dtype=np.int64)
    train_u = np.repeat(users, N_POS - 2)
    train = Interactions(
        name="synthetic",
        users=train_u,
        items=liked[:, 2:].reshape(-1).astype(np.int64),
        ratings=np.ones(len(train_u), dtype=np.float32),
        timestamps=None,
        user_ids=users,
        item_ids=np.arange(N_ITEMS),
    )
    ones = np.ones(N_USERS, dtype=np.float32)
    valid = Holdout(users, liked[:, 0].astype(np.int64), ones, negs.astype(np.int64))
    test = Holdout(users, liked[:, 1].astype(np.int64), ones, negs[:, ::-1].copy())
    return Split(train=train, valid=valid, test=test, protocol="synthetic")


SPLIT = _low_rank_split()


def _cfg(**train: Any) -> RunConfig:
    tc: dict[str, Any] = {
        "epochs": 12,
        "batch_size": 128,
        "lr": 0.03,
        "negatives": 4,
        "patience": 0,
        "weight_decay": 1e-4,
    }
    tc.update(train)
    return RunConfig.model_validate(
        {
            "seed": 7,
            "model": {"name": "mf", "dim": 8, "init_std": 0.1},
            "train": tc,
            "eval": {"ks": [5, 10]},
        }
    )


def _params(result: TrainResult) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def _same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_decreases_loss_and_beats_popularity() -> None:
    records: list[dict[str, Any]] = []
    result = train_centralized(_cfg(), SPLIT, on_eval=records.append)
    assert records == result.history
    losses = [r["train_loss"] for r in result.history]
    assert len(losses) == 12
    assert losses[-1] < 0.7 * losses[0]
    pop = train_centralized(_cfg().model_copy(update={"model": _pop_model()}), SPLIT)
    assert result.test_metrics["NDCG@10"] > pop.test_metrics["NDCG@10"] + 0.1
    assert result.best_valid["HR@10"] > pop.best_valid["HR@10"]
    assert isinstance(result.model, MF)
    assert result.epochs_run == 12 and result.seconds > 0


def _pop_model() -> Any:
    return RunConfig.model_validate({"model": {"name": "popularity"}}).model


def test_bpr_training_learns() -> None:
    result = train_centralized(_cfg(loss="bpr", negatives=2), SPLIT)
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < 0.7 * losses[0]
    pop = train_centralized(_cfg().model_copy(update={"model": _pop_model()}), SPLIT)
    assert result.best_valid["NDCG@10"] > pop.best_valid["NDCG@10"]


def test_same_seed_same_result() -> None:
    a = train_centralized(_cfg(epochs=3), SPLIT)
    b = train_centralized(_cfg(epochs=3), SPLIT)
    strip = ("seconds", "eval_seconds")
    assert [{k: v for k, v in r.items() if k not in strip} for r in a.history] == [
        {k: v for k, v in r.items() if k not in strip} for r in b.history
    ]
    assert _same_params(_params(a), _params(b))
    assert a.test_metrics == b.test_metrics
    c = train_centralized(_cfg(epochs=3).model_copy(update={"seed": 8}), SPLIT)
    assert not _same_params(_params(a), _params(c))


def test_selection_never_reads_the_test_holdout() -> None:
    """Corrupting the test hold-out changes test metrics and nothing else."""
    rng = np.random.default_rng(1)
    bad_test = Holdout(
        users=SPLIT.test.users,
        items=rng.integers(0, N_ITEMS, N_USERS),
        ratings=SPLIT.test.ratings,
        negatives=rng.integers(0, N_ITEMS, (N_USERS, N_NEG)),
    )
    corrupt = dataclasses.replace(SPLIT, test=bad_test)
    cfg = _cfg(epochs=8, patience=2, lr=0.1)
    a = train_centralized(cfg, SPLIT)
    b = train_centralized(cfg, corrupt)
    assert a.best_epoch == b.best_epoch
    assert a.best_valid == b.best_valid
    assert _same_params(_params(a), _params(b))
    assert a.test_metrics != b.test_metrics


def test_test_is_evaluated_once_at_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []

    def spy(scorer: Any, split: Split, which: str, protocol: str, ks: list[int]) -> Any:
        calls.append((which, protocol))
        return evaluate(scorer, split, which=which, protocol=protocol, ks=ks)  # type: ignore[arg-type]

    monkeypatch.setattr("fedrec.training.centralized.evaluate", spy)
    cfg = _cfg(epochs=4, eval_every=2)
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"also_full": True})})
    result = train_centralized(cfg, SPLIT)
    assert calls == [("valid", "sampled")] * 2 + [("test", "sampled"), ("test", "full")]
    assert [r["epoch"] for r in result.history] == [2, 4]
    assert result.test_full is not None and "HR@10" in result.test_full
    assert result.per_user_test is not None and len(result.per_user_test) == N_USERS


def test_early_stopping_restores_best_validation_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation that only gets worse: stop after `patience` evaluations, keep epoch 1."""
    real = evaluate
    seen = {"valid": 0}

    def worsening(scorer: Any, split: Split, which: str, protocol: str, ks: list[int]) -> Any:
        res = real(scorer, split, which=which, protocol=protocol, ks=ks)  # type: ignore[arg-type]
        if which == "valid":
            seen["valid"] += 1
            metrics = dict(res.metrics)
            metrics["NDCG@10"] = 1.0 / seen["valid"]
            return dataclasses.replace(res, metrics=metrics)
        return res

    monkeypatch.setattr("fedrec.training.centralized.evaluate", worsening)
    stopped = train_centralized(_cfg(epochs=10, patience=2), SPLIT)
    assert stopped.epochs_run == 3
    assert stopped.best_epoch == 1
    assert [r["best"] for r in stopped.history] == [True, False, False]
    monkeypatch.setattr("fedrec.training.centralized.evaluate", real)
    one = train_centralized(_cfg(epochs=1), SPLIT)
    assert _same_params(_params(stopped), _params(one))


def test_negatives_are_resampled_every_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[np.ndarray] = []
    original = TrainingNegativeSampler.sample

    def record(self: Any, users: np.ndarray, n: int) -> np.ndarray:
        out = original(self, users, n)
        drawn.append(out)
        return out

    monkeypatch.setattr(TrainingNegativeSampler, "sample", record)
    train_centralized(_cfg(epochs=3, negatives=3), SPLIT)
    assert len(drawn) == 3
    assert all(d.shape == (len(SPLIT.train), 3) for d in drawn)
    assert not np.array_equal(drawn[0], drawn[1])


def test_popularity_goes_through_the_same_function() -> None:
    cfg = _cfg().model_copy(update={"model": _pop_model()})
    result = train_centralized(cfg, SPLIT)
    assert isinstance(result.model, Popularity)
    assert result.epochs_run == 0 and result.best_epoch == 0
    assert [r["epoch"] for r in result.history] == [0]
    direct = evaluate(
        ModelScorer(result.model), SPLIT, which="test", protocol="sampled", ks=[5, 10]
    )
    assert result.test_metrics == direct.metrics


def test_unknown_monitor_names_the_metric() -> None:
    with pytest.raises(KeyError, match="NOPE@10"):
        train_centralized(_cfg(epochs=1, monitor="NOPE@10"), SPLIT)


def test_threads_setting_is_applied() -> None:
    before = torch.get_num_threads()
    try:
        train_centralized(_cfg(epochs=1).model_copy(update={"threads": 1}), SPLIT)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_model_scorer_matches_model_and_restores_mode() -> None:
    torch.manual_seed(0)
    model = MF(N_USERS, N_ITEMS, dim=4, init_std=0.5)
    model.train()
    scorer = ModelScorer(model, batch_users=3, batch_pairs=7)
    users = np.array([5, 0, 79, 5], dtype=np.int64)
    items = np.array([[1, 2, 3], [0, 0, 59], [4, 5, 6], [7, 8, 9]], dtype=np.int64)
    got = scorer.score_candidates(users, items)
    with torch.no_grad():
        full = model.score_all(torch.from_numpy(users)).numpy()
    np.testing.assert_allclose(got, np.take_along_axis(full, items, axis=1), rtol=1e-5)
    np.testing.assert_allclose(scorer.score_all(users), full, rtol=1e-5)
    assert got.dtype == np.float32
    assert model.training
    with pytest.raises(ValueError, match="items"):
        scorer.score_candidates(users, items[:2])


def test_explicit_ratings_train_with_mse_and_select_on_rmse() -> None:
    rng = np.random.default_rng(3)
    truth = 3 + rng.normal(size=(N_USERS, 2)) @ rng.normal(size=(2, N_ITEMS))
    users = np.repeat(np.arange(N_USERS, dtype=np.int64), N_ITEMS)
    items = np.tile(np.arange(N_ITEMS, dtype=np.int64), N_USERS)
    order = rng.permutation(len(users))
    users, items = users[order], items[order]
    ratings = truth[users, items].astype(np.float32)
    cut_v, cut_t = int(0.8 * len(users)), int(0.9 * len(users))
    train = Interactions(
        "ratings",
        users[:cut_v],
        items[:cut_v],
        ratings[:cut_v],
        None,
        np.arange(N_USERS),
        np.arange(N_ITEMS),
    )
    valid = Holdout(users[cut_v:cut_t], items[cut_v:cut_t], ratings[cut_v:cut_t])
    test = Holdout(users[cut_t:], items[cut_t:], ratings[cut_t:])
    split = Split(train=train, valid=valid, test=test, protocol="ratio")
    cfg = RunConfig.model_validate(
        {
            "seed": 0,
            "data": {"implicit": False},
            "model": {"name": "mf", "dim": 4, "init_std": 0.1},
            "train": {
                "loss": "mse",
                "epochs": 15,
                "lr": 0.05,
                "batch_size": 256,
                "monitor": "RMSE",
                "patience": 0,
            },
        }
    )
    result = train_centralized(cfg, split)
    rmses = [r["valid/RMSE"] for r in result.history]
    assert result.best_valid["RMSE"] == min(rmses)
    assert result.best_epoch == 1 + int(np.argmin(rmses))
    assert rmses[-1] < 0.5 * rmses[0]
    assert set(result.test_metrics) == {"RMSE", "MAE"}
    assert result.test_full is None
