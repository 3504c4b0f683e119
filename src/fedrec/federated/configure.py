"""The federated pieces a run configuration asks for: partition, local settings, strategy,
client selection and the server's privacy state. The simulator and the deployment build
theirs here, so one configuration means the same thing in both."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedrec.config import RunConfig
from fedrec.data.table import Split
from fedrec.federated.client import LocalSettings
from fedrec.federated.loop import LoopSettings
from fedrec.federated.partition import Partition, by_column, cross_device, random_silos
from fedrec.federated.selection import Selection
from fedrec.federated.server import SECAGG_ABORTED
from fedrec.federated.strategies import Strategy, StrategySettings, make_strategy
from fedrec.privacy.dp import min_survivors
from fedrec.privacy.ldp import LocalDP
from fedrec.privacy.secagg.config import SecAggConfig
from fedrec.privacy.server import DPSettings, Sampling, ServerPrivacy


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
    names = (field.name for field in dataclasses.fields(StrategySettings))
    return make_strategy(f.strategy, StrategySettings(**{n: getattr(f, n) for n in names}))


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


def dropout_allowance(cfg: RunConfig) -> float:
    """``privacy.dp.dropout_allowance``, or its default ``federated.dropout + 0.1`` (<= 0.9)."""
    d, fed = cfg.privacy.dp, cfg.federated
    return min(0.9, fed.dropout + 0.1) if d.dropout_allowance is None else d.dropout_allowance


def min_inputs_of(cfg: RunConfig, n_clients: int) -> int:
    """Distributed DP's m (1 otherwise): the fewest masked inputs a secure sum may cover. A
    deployed client computes it from its own copy of the configuration, as the server does."""
    priv, fed = cfg.privacy, cfg.federated
    if not (priv.dp.enabled and priv.dp.mode == "distributed"):
        return 1
    sampling = Sampling.of(
        fed.sampling, n_clients, fraction=fed.fraction, count=fed.count, rate=fed.rate
    )
    return min_survivors(sampling.expected_clients, dropout_allowance(cfg))


def make_server_privacy(cfg: RunConfig, n_clients: int) -> ServerPrivacy | None:
    """The server's DP state for a run (None when neither DP nor LDP is on)."""
    priv, fed = cfg.privacy, cfg.federated
    if not (priv.dp.enabled or priv.ldp.enabled):
        return None
    sampling = Sampling.of(
        fed.sampling, n_clients, fraction=fed.fraction, count=fed.count, rate=fed.rate
    )
    ldp = None
    if priv.ldp.enabled:
        cfg_l = priv.ldp
        delta = cfg_l.delta if cfg_l.mechanism == "gaussian" else 0.0
        ldp = LocalDP(cfg_l.mechanism, cfg_l.epsilon, delta, cfg_l.clip)
    dp = None
    if priv.dp.enabled:
        d = priv.dp
        dp = DPSettings(
            clip=d.clip,
            noise_multiplier=d.noise_multiplier,
            delta=d.delta,
            distributed=d.mode == "distributed",
            accountant=d.accountant,
            target_epsilon=d.target_epsilon,
            count_scale=cfg.upload_count_scale,
            min_count=d.min_count,
            adaptive=d.adaptive_clip,
            target_quantile=d.target_quantile,
            clip_lr=d.clip_lr,
            clip_count_stddev=d.clip_count_stddev,
            dropout_allowance=dropout_allowance(cfg),
            weights=cfg.upload_weights,
        )
    return ServerPrivacy(dp, sampling, ldp=ldp, seed=cfg.seed, rounds=fed.rounds)


def loop_settings(cfg: RunConfig) -> LoopSettings:
    fed = cfg.federated
    return LoopSettings(
        rounds=fed.rounds,
        eval_every=fed.eval_every,
        patience=fed.patience,
        checkpoint_every=fed.checkpoint_every,
        monitor=cfg.train.monitor,
        per_row_items=fed.item_aggregation == "per-row",
        target_epsilon=cfg.privacy.dp.target_epsilon,
        delta=cfg.privacy.dp.delta,
        ema_decay=fed.ema_decay,
    )


def secagg_max_dropout(cfg: RunConfig) -> float:
    """The dropout rate SecAgg+ parameters are chosen for: the configured one plus a margin for
    rates above it (the binomial analysis covers the randomness at the rate itself), at least
    the 10% every deployment should expect."""
    s = cfg.privacy.secagg
    return default_max_dropout(cfg.federated.dropout) if s.max_dropout is None else s.max_dropout


def default_max_dropout(dropout: float) -> float:
    return round(min(0.9, max(0.1, dropout + 0.05)), 6)


def secagg_config(cfg: RunConfig) -> SecAggConfig:
    """The protocol's configuration for a run with ``[privacy.secagg]`` on."""
    s = cfg.privacy.secagg
    return SecAggConfig(
        neighbours=s.neighbours,
        threshold=s.threshold,
        max_dropout=secagg_max_dropout(cfg),
        collusion=s.collusion,
        target_failure=s.target_failure,
        security_bits=s.security_bits,
        clip=s.clip,
        bits=s.bits,
    )


def secagg_summary(cfg: RunConfig, history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run summary's SecAgg+ block: the model behind (k, t), the pair at the median round
    size with its predicted abort probability, and the rounds that did abort, by reason."""
    config = secagg_config(cfg)
    sizes = [int(r["selected"]) for r in history if int(r.get("selected", 0)) >= 2]
    aborts = [
        str(r["aborted"]) for r in history if str(r.get("aborted", "")).startswith(SECAGG_ABORTED)
    ]
    out: dict[str, Any] = {
        "max_dropout": config.max_dropout,
        "collusion": config.collusion,
        "target_failure": config.target_failure,
        "security_bits": config.security_bits,
        "rounds": len(history),
        "aborts": len(aborts),
        "abort_reasons": dict(Counter(aborts).most_common(5)),
    }
    if sizes:
        typical = config.analysis(int(np.median(sizes)))
        worst = max((config.analysis(n) for n in set(sizes)), key=lambda a: a.failure)
        out |= {
            "clients_per_round": typical.n,
            "neighbours": typical.k,
            "threshold": typical.t,
            "predicted_failure": typical.failure,
            "predicted_failure_max": worst.failure,
            "insecurity_bound": typical.insecurity,
        }
    return out
