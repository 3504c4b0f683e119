"""Centralised training: the non-federated reference every federated run is compared to.

Selection is honest: only the validation hold-out picks the epoch (early stopping and the
returned model); the test hold-out is evaluated once, at the end, with that model.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from fedrec.config import RunConfig
from fedrec.data.sampling import TrainingNegativeSampler
from fedrec.data.table import Split
from fedrec.eval.metrics import LOWER_IS_BETTER
from fedrec.eval.protocols import EvalResult, evaluate, evaluate_ratings
from fedrec.models.base import Recommender
from fedrec.models.factory import build_model
from fedrec.models.losses import bce_loss, bpr_loss, l2_penalty, mse_loss
from fedrec.models.scoring import ModelScorer
from fedrec.training.result import RunResult


@dataclass(kw_only=True)
class TrainResult(RunResult):
    best_epoch: int
    epochs_run: int
    seconds_per_epoch: float


def _make_optimizer(cfg: RunConfig, model: Recommender) -> torch.optim.Optimizer:
    params = list(model.parameters())
    lr = cfg.train.lr
    if cfg.train.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr)
    if cfg.train.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=lr)
    return torch.optim.SGD(params, lr=lr)


def _monitor_value(metrics: dict[str, float], key: str) -> float:
    """The monitored metric, oriented so that larger is better."""
    if key not in metrics:
        raise KeyError(
            f"train.monitor = {key!r} is not a validation metric; available: {sorted(metrics)}"
        )
    value = float(metrics[key])
    return -value if key in LOWER_IS_BETTER else value


def _train_epoch(
    cfg: RunConfig,
    model: Recommender,
    opt: torch.optim.Optimizer,
    split: Split,
    sampler: TrainingNegativeSampler | None,
    rng: np.random.Generator,
) -> float:
    """One pass over the training positives; returns the mean batch loss."""
    train = split.train
    tc = cfg.train
    n = len(train)
    order = rng.permutation(n)
    users_all = torch.from_numpy(train.users.astype(np.int64))
    items_all = torch.from_numpy(train.items.astype(np.int64))
    explicit = tc.loss == "mse"
    negs_all: torch.Tensor | None = None
    if not explicit:
        if sampler is None or tc.negatives < 1:
            raise ValueError(f"train.loss = {tc.loss!r} needs train.negatives >= 1")
        negs_all = torch.from_numpy(
            np.asarray(sampler.sample(train.users, tc.negatives), dtype=np.int64)
        )
    ratings_all = torch.from_numpy(train.ratings.astype(np.float32)) if explicit else None
    model.train()
    total, batches = 0.0, 0
    order_t = torch.from_numpy(order)
    for s in range(0, n, tc.batch_size):
        idx = order_t[s : s + tc.batch_size]
        u = users_all[idx]
        b = len(idx)
        if explicit:
            assert ratings_all is not None
            it = items_all[idx]
            loss = mse_loss(model(u, it), ratings_all[idx])
            if tc.weight_decay > 0:
                loss = loss + l2_penalty(model.embedding_l2(u, it), b, tc.weight_decay)
        else:
            assert negs_all is not None
            cand = torch.cat([items_all[idx].unsqueeze(1), negs_all[idx]], dim=1)
            logits, l2 = model.score_candidates_l2(u, cand)
            fn = bce_loss if tc.loss == "bce" else bpr_loss
            loss = fn(logits[:, 0], logits[:, 1:])
            if tc.weight_decay > 0:
                loss = loss + l2_penalty(l2, cand.numel(), tc.weight_decay)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        total += float(loss.detach())
        batches += 1
    return total / max(1, batches)


def train_centralized(
    cfg: RunConfig,
    split: Split,
    *,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    read_test: bool = True,
) -> TrainResult:
    """Train on ``split.train``, select on ``split.valid``, test once on ``split.test``
    (not at all with ``read_test = False``: hyperparameter search decides on validation)."""
    start = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train = split.train
    model = build_model(cfg.model, train.n_users, train.n_items, train)
    tc = cfg.train
    epochs = tc.epochs if model.trainable else 0
    sampler = TrainingNegativeSampler(train, cfg.seed) if epochs > 0 and tc.loss != "mse" else None
    opt = _make_optimizer(cfg, model) if epochs > 0 else None
    scorer = ModelScorer(model)
    protocol = cfg.eval.protocol
    ks = list(cfg.eval.ks)
    explicit = tc.loss == "mse"

    def run_eval(which: Literal["valid", "test"], proto: Literal["sampled", "full"]) -> EvalResult:
        """Ranking metrics, or RMSE/MAE when the model predicts explicit ratings."""
        if explicit:
            return evaluate_ratings(scorer.predict, split.valid if which == "valid" else split.test)
        return evaluate(scorer, split, which=which, protocol=proto, ks=ks)

    history: list[dict[str, Any]] = []
    best_value = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch = 0
    best_valid: dict[str, float] = {}
    stale = 0
    train_seconds = 0.0
    eval_seconds = 0.0
    epochs_run = 0
    loss_value = float("nan")
    epoch_seconds = 0.0

    def evaluate_valid(epoch: int) -> bool:
        """Record one evaluation; True when early stopping says stop."""
        nonlocal best_value, best_state, best_epoch, best_valid, stale, eval_seconds
        t0 = time.perf_counter()
        metrics = dict(run_eval("valid", protocol).metrics)
        dt = time.perf_counter() - t0
        eval_seconds += dt
        value = _monitor_value(metrics, tc.monitor)
        improved = value > best_value
        if improved:
            best_value, best_epoch, best_valid, stale = value, epoch, metrics, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": loss_value,
            "seconds": epoch_seconds,
            "eval_seconds": dt,
            "best": improved,
        }
        record.update({f"valid/{k}": v for k, v in metrics.items()})
        history.append(record)
        if on_eval is not None:
            on_eval(record)
        return tc.patience > 0 and stale >= tc.patience

    if epochs == 0:
        evaluate_valid(0)
    for epoch in range(1, epochs + 1):
        assert opt is not None
        t0 = time.perf_counter()
        loss_value = _train_epoch(cfg, model, opt, split, sampler, rng)
        epoch_seconds = time.perf_counter() - t0
        train_seconds += epoch_seconds
        epochs_run = epoch
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"training loss became {loss_value} at epoch {epoch}; lower train.lr"
            )
        if (epoch % tc.eval_every == 0 or epoch == epochs) and evaluate_valid(epoch):
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    t0 = time.perf_counter()
    test_metrics: dict[str, float] = {}
    per_user_test = None
    test_full = None
    if read_test:
        test = run_eval("test", protocol)
        test_metrics, per_user_test = dict(test.metrics), test.per_user
        if cfg.eval.also_full and protocol != "full" and not explicit:
            test_full = dict(run_eval("test", "full").metrics)
    test_seconds = time.perf_counter() - t0
    total = time.perf_counter() - start
    return TrainResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        epochs_run=epochs_run,
        best_valid=best_valid,
        test_metrics=test_metrics,
        test_full=test_full,
        per_user_test=per_user_test,
        seconds=total,
        seconds_per_epoch=train_seconds / epochs_run if epochs_run else 0.0,
        timing={"train": train_seconds, "valid_eval": eval_seconds, "test_eval": test_seconds},
    )
