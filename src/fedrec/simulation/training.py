"""Federated training in simulation: rounds, evaluation on the clients, early stopping,
checkpoints and resume.

Evaluation is what each client would compute with its own private rows and the shared
model; the simulator assembles them into one model only to do it in a single pass.
"""

from __future__ import annotations

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
from fedrec.federated.client import LocalTrainer
from fedrec.federated.configure import (
    local_settings,
    loop_settings,
    make_partition,
    make_server_privacy,
    selection_of,
    strategy_of,
)
from fedrec.federated.layout import ParamLayout
from fedrec.federated.loop import LoopState, run_rounds
from fedrec.federated.partition import (
    Partition,
    client_groups,
)
from fedrec.federated.plan import ClientGroup
from fedrec.federated.selection import Selection
from fedrec.federated.server import ClientRunner, ServerState
from fedrec.federated.strategies import Strategy
from fedrec.models.base import Recommender
from fedrec.models.factory import build_model
from fedrec.models.scoring import ModelScorer
from fedrec.privacy.server import ServerPrivacy
from fedrec.privacy.upload import UploadVector
from fedrec.simulation.canaries import CanaryLedger, CanaryRunner, CanarySet, adversary_view
from fedrec.simulation.engines import BatchedEngine, EngineSettings, PrivateStore, SequentialEngine
from fedrec.simulation.protected import Observer, make_sinks
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
    audit: dict[str, Any] | None = None
    """The canary audit (``[audit] canaries > 0``)."""


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
    runner: ClientRunner | None = None
    """Who runs a round: the engine, or the engine plus canaries."""
    n_clients: int = 0
    """Clients the server samples from (canaries included)."""
    ledger: CanaryLedger | None = None


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
    m = cfg.audit.canaries
    n_clients = partition.n_clients + m
    privacy = make_server_privacy(cfg, n_clients)
    shared = {k: init[k] for k in layout.shared}
    ledger = None
    if m:
        vector = UploadVector.of(
            layout, shared, train.n_items, cfg.upload_count_scale, cfg.upload_weights
        )
        canaries = CanarySet.draw(
            m, partition.n_clients, train.n_items, cfg.audit.canary_items, vector, cfg.seed
        )
        ledger = CanaryLedger(canaries, vector, adversary_view(cfg), inner=observer)
        observer = ledger
    sinks = make_sinks(cfg, layout, shared, train.n_items, privacy, observer)
    runner: BatchedEngine | SequentialEngine = (
        BatchedEngine(
            trainer, group, partition, store, settings, chunk_samples=fed.chunk_samples, sinks=sinks
        )
        if kind == "batched"
        else SequentialEngine(trainer, group, partition, store, settings, sinks=sinks)
    )
    strategy = strategy_of(cfg)
    client_runner: ClientRunner = runner
    if ledger is not None:
        assert sinks is not None
        client_runner = CanaryRunner(runner, ledger.canaries, layout, ledger.vector, sinks)
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
        runner=client_runner,
        n_clients=n_clients,
        ledger=ledger,
    )


class _SimEvaluator:
    """Validation as every client would compute it with its own private rows; the simulator
    assembles them into one model only to do it in one pass."""

    def __init__(self, cfg: RunConfig, split: Split, model: Recommender, store: PrivateStore):
        self.cfg, self.split, self.model, self.store = cfg, split, model, store
        self.scorer = ModelScorer(model)
        self.seconds = 0.0
        self.best: dict[str, Params] | None = None

    def valid(self, state: ServerState) -> dict[str, float]:
        t0 = time.perf_counter()
        assemble(self.model, state.shared, self.store.tables)
        ks = list(self.cfg.eval.ks)
        res = evaluate(
            self.scorer, self.split, which="valid", protocol=self.cfg.eval.protocol, ks=ks
        )
        self.seconds += time.perf_counter() - t0
        return dict(res.metrics)

    def keep_best(self, state: ServerState) -> None:
        self.best = {
            "shared": {k: v.clone() for k, v in state.shared.items()},
            "private": {k: v.clone() for k, v in self.store.tables.items()},
        }


def train_federated(
    cfg: RunConfig,
    split: Split,
    *,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    on_resume: Callable[[list[dict[str, Any]]], None] | None = None,
    read_test: bool = True,
) -> FederatedResult:
    """Federated training of ``cfg.model`` on ``split`` (see module docstring).

    ``read_test = False`` leaves the test rows untouched (empty test metrics): hyperparameter
    search must decide on validation alone."""
    start = time.perf_counter()
    fed = cfg.federated
    sim = build_simulation(cfg, split)
    model, store, partition, privacy = sim.model, sim.store, sim.partition, sim.privacy
    weights = sim.group.sizes.astype(np.float64) if fed.weighted_sampling else None
    evaluator = _SimEvaluator(cfg, split, model, store)
    loop = LoopState(server=sim.state)
    resumed_from: int | None = None
    ckpt = checkpoint_dir / CHECKPOINT if checkpoint_dir is not None else None
    initial = {k: v.clone() for k, v in sim.state.shared.items()}
    if resume and sim.ledger is not None:
        raise ValueError(
            "audit.canaries: a resumed run cannot be audited (the adversary's observations of "
            "the earlier rounds are not checkpointed); rerun it from the start"
        )
    if resume:
        if ckpt is None or not ckpt.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}")
        saved = torch.load(ckpt, weights_only=False)
        loop = LoopState.from_dict(saved)
        store.tables = saved["private"]
        evaluator.best = saved["best_params"]
        if privacy is not None:
            privacy.load_state_dict(saved["privacy"])
        resumed_from = loop.server.round
        if on_resume is not None:
            on_resume(loop.history)

    def save_checkpoint(loop: LoopState) -> None:
        if ckpt is None:
            return
        payload = loop.to_dict()
        payload.update(
            {
                "private": store.tables,
                "best_params": evaluator.best,
                "privacy": None if privacy is None else privacy.state_dict(),
            }
        )
        with atomic_open(ckpt, "wb", encoding=None) as fh:
            torch.save(payload, fh)

    loop = run_rounds(
        loop,
        loop_settings(cfg),
        strategy=sim.strategy,
        selection=sim.selection,
        runner=sim.runner or sim.engine,
        evaluator=evaluator,
        n_clients=sim.n_clients,
        privacy=privacy,
        client_weights=weights,
        on_round=on_round,
        save=save_checkpoint,
    )
    audit = None
    if sim.ledger is not None:
        sim.ledger.observe_model(initial, loop.server.shared)
        rep = privacy.report() if privacy is not None else {}
        audit = sim.ledger.report(
            rep.get("epsilon"),
            float(rep.get("delta") or cfg.privacy.dp.delta),
            beta=1 - cfg.audit.confidence,
        )
    if evaluator.best is not None:
        assemble(model, evaluator.best["shared"], evaluator.best["private"])
    else:
        assemble(model, loop.server.shared, store.tables)
    t0 = time.perf_counter()
    ks = list(cfg.eval.ks)
    scorer = evaluator.scorer
    test_metrics: dict[str, float] = {}
    per_user_test = None
    test_full = None
    if read_test:
        test = evaluate(scorer, split, which="test", protocol=cfg.eval.protocol, ks=ks)
        test_metrics, per_user_test = dict(test.metrics), test.per_user
        if cfg.eval.also_full and cfg.eval.protocol != "full":
            test_full = dict(evaluate(scorer, split, which="test", protocol="full", ks=ks).metrics)
    return FederatedResult(
        model=model,
        history=loop.history,
        best_round=loop.best_round,
        rounds_run=loop.server.round,
        best_valid=dict(loop.best_valid),
        test_metrics=test_metrics,
        test_full=test_full,
        per_user_test=per_user_test,
        seconds=time.perf_counter() - start,
        seconds_per_round=float(np.mean(loop.round_seconds)) if loop.round_seconds else 0.0,
        bytes_up=loop.bytes_up,
        bytes_down=loop.bytes_down,
        clients=partition.n_clients,
        resumed_from=resumed_from,
        timing={"eval": evaluator.seconds, "test_eval": time.perf_counter() - t0},
        privacy=None if privacy is None else privacy.report(),
        stop_reason=loop.stop_reason,
        audit=audit,
    )
