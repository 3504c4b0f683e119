"""Federated training in simulation: rounds, evaluation on the clients, early stopping,
checkpoints and resume.

Evaluation is what each client would compute with its own private rows and the shared
model; the simulator assembles them into one model only to do it in a single pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedrec.config import RunConfig
from fedrec.data.table import Split
from fedrec.eval.protocols import evaluate
from fedrec.federated.client import LocalSettings, LocalTrainer
from fedrec.federated.layout import ParamLayout
from fedrec.federated.partition import (
    Partition,
    by_column,
    client_groups,
    cross_device,
    random_silos,
)
from fedrec.federated.plan import ClientGroup
from fedrec.federated.selection import Selection
from fedrec.federated.server import ServerState, run_round
from fedrec.federated.strategies import Strategy
from fedrec.models.base import Recommender
from fedrec.models.factory import build_model
from fedrec.models.scoring import ModelScorer
from fedrec.privacy.server import ServerPrivacy
from fedrec.simulation.engines import BatchedEngine, EngineSettings, PrivateStore, SequentialEngine
from fedrec.simulation.protected import Observer, make_server_privacy, make_sinks
from fedrec.training.result import RunResult
from fedrec.utils.atomic import atomic_open

Params = dict[str, Tensor]
CHECKPOINT = "checkpoint.pt"


@dataclass(kw_only=True)
class FederatedResult(RunResult):
    best_round: int
    rounds_run: int
    seconds_per_round: float
    bytes_up: int
    bytes_down: int
    clients: int
    resumed_from: int | None = None
    privacy: dict[str, Any] | None = None
    """What the run spent (epsilon and the numbers that recompute it), when DP or LDP is on."""
    stop_reason: str = ""


def make_partition(cfg: RunConfig, split: Split) -> Partition:
    fed, users = cfg.federated, split.train.users
    if fed.partition == "user":
        return cross_device(users)
    if fed.partition == "random":
        return random_silos(users, fed.silos, cfg.seed)
    feats = split.train.user_features
    col = fed.silo_column
    if feats is None or col not in feats.columns:
        have = [] if feats is None else list(feats.columns)
        raise ValueError(f"federated.silo_column {col!r} is not a user feature (have {have})")
    return by_column(users, feats[col].astype(str).to_numpy())


def local_settings(cfg: RunConfig) -> LocalSettings:
    loc = cfg.federated.local
    return LocalSettings(
        epochs=loc.epochs,
        batch_size=loc.batch_size,
        lr=loc.lr,
        dense_lr=loc.dense_lr,
        optimizer=loc.optimizer,
        negatives=loc.negatives,
        loss=cfg.train.loss,
        weight_decay=loc.weight_decay,
        prox_mu=loc.prox_mu,
        pseudo_items=cfg.privacy.obfuscation.pseudo_items,
        pseudo_labels=cfg.privacy.obfuscation.virtual_labels,
    )


def strategy_of(cfg: RunConfig) -> Strategy:
    f = cfg.federated
    return Strategy(
        f.strategy,
        server_lr=f.server_lr,
        momentum=f.momentum,
        beta1=f.beta1,
        beta2=f.beta2,
        tau=f.tau,
    )


def selection_of(cfg: RunConfig) -> Selection:
    f = cfg.federated
    return Selection(
        f.sampling,
        fraction=f.fraction,
        count=f.count,
        rate=f.rate,
        weighted=f.weighted_sampling,
        dropout=f.dropout,
    )


def assemble(model: Recommender, shared: Params, private: Params) -> Recommender:
    """Load shared and private parameters into ``model`` (in place) for evaluation."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(shared[name] if name in shared else private[name])
    return model


@dataclass
class Simulation:
    """Everything a simulated federated run is made of, freshly initialised from the seed."""

    model: Recommender
    layout: ParamLayout
    partition: Partition
    group: ClientGroup
    store: PrivateStore
    trainer: LocalTrainer
    engine: BatchedEngine | SequentialEngine
    strategy: Strategy
    selection: Selection
    state: ServerState
    privacy: ServerPrivacy | None = None


def build_simulation(
    cfg: RunConfig, split: Split, engine: str | None = None, observer: Observer | None = None
) -> Simulation:
    """Model, clients, engine and server state of ``cfg`` (``engine`` overrides the config)."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    fed = cfg.federated
    torch.manual_seed(cfg.seed)
    train = split.train
    model = build_model(cfg.model, train.n_users, train.n_items, train)
    layout = ParamLayout.of(model)
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    partition = make_partition(cfg, split)
    group = client_groups(train, partition)
    store = PrivateStore({k: init[k] for k in layout.private})
    trainer = LocalTrainer(model, local_settings(cfg))
    settings = EngineSettings(seed=cfg.seed, weighting=fed.weighting, encoding=fed.encoding)
    kind = engine or fed.engine
    privacy = make_server_privacy(cfg, partition.n_clients)
    shared = {k: init[k] for k in layout.shared}
    sinks = make_sinks(cfg, layout, shared, train.n_items, privacy, observer)
    runner: BatchedEngine | SequentialEngine = (
        BatchedEngine(
            trainer, group, partition, store, settings, chunk_samples=fed.chunk_samples, sinks=sinks
        )
        if kind == "batched"
        else SequentialEngine(trainer, group, partition, store, settings, sinks=sinks)
    )
    strategy = strategy_of(cfg)
    return Simulation(
        model=model,
        layout=layout,
        partition=partition,
        group=group,
        store=store,
        trainer=trainer,
        engine=runner,
        strategy=strategy,
        selection=selection_of(cfg),
        state=ServerState.initial(shared, strategy, cfg.seed),
        privacy=privacy,
    )


def train_federated(
    cfg: RunConfig,
    split: Split,
    *,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    on_resume: Callable[[list[dict[str, Any]]], None] | None = None,
) -> FederatedResult:
    """Federated training of ``cfg.model`` on ``split`` (see module docstring)."""
    start = time.perf_counter()
    fed = cfg.federated
    sim = build_simulation(cfg, split)
    model, store, engine, partition = sim.model, sim.store, sim.engine, sim.partition
    strategy, selection, state = sim.strategy, sim.selection, sim.state
    privacy = sim.privacy
    stop_reason = ""
    weights = sim.group.sizes.astype(np.float64) if fed.weighted_sampling else None

    scorer = ModelScorer(model)
    ks = list(cfg.eval.ks)
    monitor = cfg.train.monitor
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {
        "value": -math.inf,
        "round": 0,
        "valid": {},
        "shared": None,
        "private": None,
    }
    stale = 0
    bytes_up = bytes_down = 0
    resumed_from: int | None = None
    ckpt = checkpoint_dir / CHECKPOINT if checkpoint_dir is not None else None
    if resume:
        if ckpt is None or not ckpt.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}")
        saved = torch.load(ckpt, weights_only=False)
        state = ServerState.from_dict(saved["server"])
        store.tables = saved["private"]
        history, best, stale = saved["history"], saved["best"], saved["stale"]
        bytes_up, bytes_down = saved["bytes_up"], saved["bytes_down"]
        if privacy is not None:
            privacy.load_state_dict(saved["privacy"])
        resumed_from = state.round
        if on_resume is not None:
            on_resume(history)

    def save_checkpoint() -> None:
        if ckpt is None:
            return
        payload = {
            "server": state.to_dict(),
            "private": store.tables,
            "history": history,
            "best": best,
            "stale": stale,
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "privacy": None if privacy is None else privacy.state_dict(),
        }
        with atomic_open(ckpt, "wb", encoding=None) as fh:
            torch.save(payload, fh)

    eval_seconds = 0.0
    round_seconds: list[float] = []
    while state.round < fed.rounds:
        if privacy is not None and privacy.budget_exhausted():
            stop_reason = (
                f"privacy budget spent: one more round would exceed epsilon "
                f"{cfg.privacy.dp.target_epsilon} at delta {cfg.privacy.dp.delta}"
            )
            break
        state, report = run_round(
            state,
            strategy=strategy,
            selection=selection,
            runner=engine,
            n_clients=partition.n_clients,
            per_row_items=fed.item_aggregation == "per-row",
            client_weights=weights,
            finalizer=privacy,
        )
        if privacy is not None:
            report.extra.update(_privacy_record(privacy))
        if not all(bool(torch.isfinite(v).all()) for v in state.shared.values()):
            # Diverged: no later round can be selected, and evaluating it would fail; the
            # best round chosen on validation so far is what the run reports.
            stop_reason = f"diverged: non-finite shared parameters after round {state.round}"
            history.append(report.as_dict())
            if on_round is not None:
                on_round(history[-1])
            break
        round_seconds.append(report.seconds)
        bytes_up += report.bytes_up
        bytes_down += report.bytes_down
        record = report.as_dict()
        stop = False
        if state.round % fed.eval_every == 0 or state.round == fed.rounds:
            t0 = time.perf_counter()
            assemble(model, state.shared, store.tables)
            metrics = dict(
                evaluate(scorer, split, which="valid", protocol=cfg.eval.protocol, ks=ks).metrics
            )
            eval_seconds += time.perf_counter() - t0
            if monitor not in metrics:
                raise KeyError(
                    f"train.monitor {monitor!r} is not a metric (have {sorted(metrics)})"
                )
            record.update({f"valid/{k}": v for k, v in metrics.items()})
            if metrics[monitor] > best["value"]:
                best = {
                    "value": metrics[monitor],
                    "round": state.round,
                    "valid": metrics,
                    "shared": {k: v.clone() for k, v in state.shared.items()},
                    "private": {k: v.clone() for k, v in store.tables.items()},
                }
                stale = 0
                record["best"] = True
            else:
                stale += 1
                record["best"] = False
            stop = fed.patience > 0 and stale >= fed.patience
            if stop:
                stop_reason = f"early stopping: {fed.patience} evaluations without improvement"
        history.append(record)
        if on_round is not None:
            on_round(record)
        last = stop or state.round == fed.rounds
        if fed.checkpoint_every and (state.round % fed.checkpoint_every == 0 or last):
            save_checkpoint()
        if stop:
            break
    if best["shared"] is not None:
        assemble(model, best["shared"], best["private"])
    else:
        assemble(model, state.shared, store.tables)
    t0 = time.perf_counter()
    test = evaluate(scorer, split, which="test", protocol=cfg.eval.protocol, ks=ks)
    test_full = None
    if cfg.eval.also_full and cfg.eval.protocol != "full":
        test_full = dict(evaluate(scorer, split, which="test", protocol="full", ks=ks).metrics)
    return FederatedResult(
        model=model,
        history=history,
        best_round=int(best["round"]),
        rounds_run=state.round,
        best_valid=dict(best["valid"]),
        test_metrics=dict(test.metrics),
        test_full=test_full,
        per_user_test=test.per_user,
        seconds=time.perf_counter() - start,
        seconds_per_round=float(np.mean(round_seconds)) if round_seconds else 0.0,
        bytes_up=bytes_up,
        bytes_down=bytes_down,
        clients=partition.n_clients,
        resumed_from=resumed_from,
        timing={"eval": eval_seconds, "test_eval": time.perf_counter() - t0},
        privacy=None if privacy is None else privacy.report(),
        stop_reason=stop_reason or "all rounds run",
    )


def _privacy_record(privacy: ServerPrivacy) -> dict[str, Any]:
    """The per-round privacy fields of a metrics record."""
    rep = privacy.report()
    return {k: rep[k] for k in ("epsilon", "clip") if k in rep and rep[k] is not None}
