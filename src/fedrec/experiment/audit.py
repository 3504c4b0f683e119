"""Privacy audit of a run: replay one round as the run's own server saw it, and attack that.

An honest-but-curious server tries to tell which items each client interacted with from
exactly what reached it: per-client sparse rows, per-client dense vectors (local DP), or only
the sum (secure aggregation, homomorphic encryption). The round replayed is the next round of
the run's last checkpoint, with its own mechanisms, seed and selection, so the audit attacks
what the configured system really sends. A membership-inference attack on the final model
(Yeom et al. 2018) compares the scores of users' training interactions with their held-out
ones: a model that does not remember its training data cannot tell them apart (AUC 0.5).
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fedrec.config import RunConfig, load_config
from fedrec.data.table import Split
from fedrec.experiment.pipeline import prepare
from fedrec.federated.server import ServerState, run_round
from fedrec.models.base import Recommender
from fedrec.models.factory import build_model
from fedrec.privacy.attacks import (
    InferenceResult,
    aggregate_inference_scores,
    evaluate_inference,
    item_inference_scores,
    membership_inference_auc,
    roc_auc,
    summarize,
)
from fedrec.privacy.upload import UploadVector
from fedrec.simulation.protected import AggregateObservation, Observation
from fedrec.simulation.training import CHECKPOINT, build_simulation

IntArray = npt.NDArray[np.int64]
CLIENT_SAMPLE = "uniform: keyed hash of client ids"
"""What ``audit.json`` says of its client sample (audits before it attacked the first clients
to arrive)."""


def _row_and_bias(tables: dict[str, torch.Tensor]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(item rows, item bias) the attack reads: bias = the one-wide item table, rows = the rest."""
    rows, bias = [], None
    for name in sorted(tables):
        t = tables[name].detach().to(torch.float64)
        flat = t.reshape(t.shape[0], -1)
        if flat.shape[1] == 1 and "bias" in name:
            bias = flat[:, 0].numpy()
        else:
            rows.append(flat)
    return (torch.cat(rows, dim=1).numpy() if rows else None), bias


def _sample_key(seed: int, client: int) -> int:
    """A client's place in the audit's sample: a keyed hash, so the sample does not depend on
    the order in which an engine hands clients over (the batched engine sends the busiest
    clients first, and "the first 300" were then the 300 heaviest users)."""
    digest = hashlib.blake2b(f"{seed}:{client}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass
class _Recorder:
    """Keeps what the server received from a uniform sample of at most ``limit`` clients
    (those with the smallest keys, whatever their order of arrival), plus any sum."""

    limit: int
    seed: int = 0
    sums: list[AggregateObservation] = field(default_factory=list)
    _heap: list[tuple[int, int, Observation]] = field(default_factory=list)

    def client(self, obs: Observation) -> None:
        # A max-heap (negated keys) of the limit smallest keys seen so far.
        item = (-_sample_key(self.seed, obs.client), obs.client, obs)
        if len(self._heap) < self.limit:
            heapq.heappush(self._heap, item)
        elif item[0] > self._heap[0][0]:
            heapq.heapreplace(self._heap, item)

    @property
    def clients(self) -> list[Observation]:
        """The sampled clients' observations, in id order."""
        return [o for _, _, o in sorted(self._heap, key=lambda t: t[1])]

    def aggregate(self, obs: AggregateObservation) -> None:
        self.sums.append(obs)

    def pick(self, clients: IntArray) -> list[int]:
        """The sample among ``clients`` (the clients behind a sum), in id order."""
        keyed = sorted((_sample_key(self.seed, int(c)), int(c)) for c in clients)
        return sorted(c for _, c in keyed[: self.limit])


def item_inference(
    rec: _Recorder, truth: dict[int, IntArray], n_items: int, vector: UploadVector | None
) -> tuple[dict[str, Any], str]:
    """Attack every observed client; returns the summary and what the server could see.

    Two yardsticks. ``all items``: the client's items against every other item (random
    guessing gives 0.5, but so does nothing else: guessing popular items already beats it,
    whatever the protocol). ``matched`` (the headline): the client's items against another
    client's items, so both sets follow the population's popularity and only what the server
    learnt about *this* client separates them; under secure aggregation it is 0.5.
    """
    scored: list[tuple[int, np.ndarray]] = []
    view = "sparse rows with item ids"
    if rec.sums:
        obs = rec.sums[0]
        rows, bias = _row_and_bias(dict(obs.layout.split(obs.vector).item_sum))
        shared_scores = aggregate_inference_scores(rows, bias)
        scored = [(c, shared_scores) for c in truth]  # the sample, picked by audit_run
        view = "sum over clients only"
    for o in rec.clients:
        if o.item_ids is not None and o.rows is not None:
            rows, bias = _row_and_bias(o.rows)
            ids = o.item_ids.numpy()
        else:
            assert o.vector is not None and vector is not None
            view = "dense vector per client"
            rows, bias = _row_and_bias(dict(vector.split(o.vector.to(torch.float64)).item_sum))
            ids = None
        scored.append((o.client, item_inference_scores(n_items, ids, rows, bias)))
    scored = [(c, sc) for c, sc in scored if len(truth.get(c, ()))]
    results: list[InferenceResult] = []
    matched: list[float] = []
    for k, (c, sc) in enumerate(scored):
        mine = truth[c]
        results.append(evaluate_inference(sc, mine, n_items))
        other = truth[scored[(k + 1) % len(scored)][0]]
        # Items both have are dropped from both sides: they are the popular ones, and keeping
        # them on one side only would hand a popularity guess an edge.
        only_mine, only_theirs = np.setdiff1d(mine, other), np.setdiff1d(other, mine)
        if len(only_mine) and len(only_theirs) and len(scored) > 1:
            matched.append(roc_auc(sc[only_mine], sc[only_theirs]))
    out: dict[str, Any] = summarize(results) if results else {}
    if matched:
        out["matched_auc_mean"] = float(np.mean(matched))
        out["matched_auc_std"] = float(np.std(matched))
    return out, view


def membership_inference(
    model: Recommender, split: Split, users: int, seed: int
) -> dict[str, float]:
    """Training interactions vs the same users' held-out ones, scored by the final model."""
    test = split.test
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(test), size=min(users, len(test)), replace=False)
    train = split.train
    order = np.argsort(train.users, kind="stable")
    starts = np.searchsorted(train.users[order], test.users[chosen])
    ends = np.searchsorted(train.users[order], test.users[chosen], side="right")
    keep = ends > starts
    picks = order[starts[keep] + (rng.random(keep.sum()) * (ends - starts)[keep]).astype(int)]
    with torch.no_grad():
        member = model(torch.from_numpy(train.users[picks]), torch.from_numpy(train.items[picks]))
        non = model(
            torch.from_numpy(test.users[chosen][keep]), torch.from_numpy(test.items[chosen][keep])
        )
    return {
        "auc": membership_inference_auc(member.numpy(), non.numpy()),
        "pairs": int(keep.sum()),
    }


def audit_run(run_dir: Path, *, clients: int = 500, seed: int = 0) -> dict[str, Any]:
    """Attack one replayed round of the run at ``run_dir`` and its final model."""
    cfg_path = run_dir / "config.toml"
    ckpt = run_dir / "checkpoints" / CHECKPOINT
    model_path = run_dir / "model.pt"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path} is missing: is {run_dir} a fedrec run directory?")
    cfg: RunConfig = load_config(cfg_path)
    if cfg.mode != "federated":
        raise ValueError(f"{run_dir} is a centralized run: there is no server to audit")
    prepared = prepare(cfg)
    split = prepared.split
    rec = _Recorder(limit=clients, seed=seed)
    sim = build_simulation(cfg, split, observer=rec)
    state = sim.state
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        state = ServerState.from_dict(saved["server"])
        sim.store.tables = saved["private"]
        if sim.privacy is not None and saved.get("privacy") is not None:
            sim.privacy.load_state_dict(saved["privacy"])
    run_round(
        state,
        strategy=sim.strategy,
        selection=sim.selection,
        runner=sim.engine,
        n_clients=sim.partition.n_clients,
        per_row_items=cfg.federated.item_aggregation == "per-row",
        finalizer=sim.privacy,
    )
    train = split.train
    order = np.argsort(train.users, kind="stable")
    bounds = np.searchsorted(train.users[order], np.arange(train.n_users + 1))
    observed = [o.client for o in rec.clients]
    if rec.sums:
        observed = rec.pick(rec.sums[0].clients)
    truth: dict[int, IntArray] = {}
    for c in observed:
        rows = [order[bounds[u] : bounds[u + 1]] for u in sim.partition.users_of(c)]
        truth[c] = np.unique(train.items[np.concatenate(rows)])
    vector = None
    if cfg.privacy.any:
        lay = sim.layout
        vector = UploadVector.of(
            lay, state.shared, train.n_items, cfg.upload_count_scale, cfg.upload_weights
        )
    inference, view = item_inference(rec, truth, train.n_items, vector)
    out: dict[str, Any] = {
        "run": str(run_dir),
        "round_replayed": state.round + 1,
        "client_sample": CLIENT_SAMPLE,
        "server_view": view,
        "item_inference": inference,
    }
    if model_path.exists():
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, train.n_users, train.n_items, train)
        model.load_state_dict(torch.load(model_path, weights_only=True))
        out["membership_inference"] = membership_inference(model.eval(), split, 2000, seed)
    return out
