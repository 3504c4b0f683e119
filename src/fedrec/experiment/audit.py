"""Privacy audit of a run: canaries through one training run, an attack on one replayed round
as the run's own server saw it, and membership inference on the final model.

* Canaries (:mod:`fedrec.simulation.canaries`): the run's configuration is trained once
  more with canary clients, unless the run already carried them (``[audit] canaries``); the
  report gives the attack's AUC, an empirical epsilon lower bound with its confidence, a
  Gaussian estimate, and the accounted epsilon next to them.
* Item inference: the next round of the run's last checkpoint is replayed with its own
  mechanisms, seed and selection, and the server's view (per-client sparse rows or dense
  vectors, or only the sum) is attacked; reported as the advantage over a popularity prior.
* Membership inference (Yeom et al. 2018): training interactions against never-interacted
  items of matched popularity, scored by the final model.
"""

from __future__ import annotations

import hashlib
import heapq
import json
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
from fedrec.simulation.training import CHECKPOINT, build_simulation, train_federated

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


def _popularity_prior(train_items: IntArray, n_items: int) -> IntArray:
    """Interactions per item: the public prior a server needs no client's upload to know."""
    return np.bincount(train_items, minlength=n_items).astype(np.int64)


def _with_prior(scores: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """The attack's ranking with ties (e.g. every item it did not see) broken by the prior,
    as ranks: an attacker holding both uses both."""
    order = np.lexsort((prior, scores))
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(len(scores))
    return ranks


def item_inference(
    rec: _Recorder,
    truth: dict[int, IntArray],
    n_items: int,
    vector: UploadVector | None,
    popularity: IntArray,
) -> tuple[dict[str, Any], str]:
    """Attack every observed client; returns the summary and what the server could see.

    Headline: the advantage over a public popularity prior, the AUC of the attack (ties
    broken by popularity) minus the AUC of ranking items by popularity alone, per client
    (the client's own interactions are taken out of the prior), floored at 0 over the sample.
    0 means the upload taught the server nothing beyond popularity; guessing popular items
    already beats 0.5 AUC whatever the protocol, so plain AUC (``auc_mean``) overstates leaks.
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
    scored = [(c, sc) for c, sc in scored if 0 < len(truth.get(c, ())) < n_items]
    results: list[InferenceResult] = []
    prior_auc: list[float] = []
    attack_auc: list[float] = []
    for c, sc in scored:
        mine = truth[c]
        results.append(evaluate_inference(sc, mine, n_items))
        prior = popularity.copy()
        prior[mine] -= 1
        is_mine = np.zeros(n_items, dtype=bool)
        is_mine[mine] = True
        prior_auc.append(roc_auc(prior[is_mine], prior[~is_mine]))
        ranks = _with_prior(sc, prior)
        attack_auc.append(roc_auc(ranks[is_mine], ranks[~is_mine]))
    out: dict[str, Any] = summarize(results) if results else {}
    if results:
        gain = np.array(attack_auc) - np.array(prior_auc)
        out["popularity_auc_mean"] = float(np.mean(prior_auc))
        out["attack_with_prior_auc_mean"] = float(np.mean(attack_auc))
        out["attack_minus_popularity_auc_mean"] = float(gain.mean())
        out["attack_minus_popularity_auc_std"] = float(gain.std())
        # An attacker who knows the prior can always fall back on it: a worse attack than the
        # prior (negative gain, e.g. noise under DP) has taught it nothing, not less.
        out["advantage_over_popularity_mean"] = max(0.0, float(gain.mean()))
    return out, view


def membership_advantage(member: np.ndarray, non: np.ndarray) -> float:
    """Yeom et al.'s membership advantage: the best threshold's TPR - FPR (0: no leak)."""
    scores = np.concatenate([member, non])
    label = np.r_[np.ones(len(member)), np.zeros(len(non))]
    order = np.argsort(-scores, kind="stable")
    s, lab = scores[order], label[order]
    last = np.r_[s[1:] != s[:-1], True]  # a threshold only between distinct scores
    tpr = np.cumsum(lab)[last] / len(member)
    fpr = np.cumsum(1 - lab)[last] / len(non)
    return float(max(0.0, (tpr - fpr).max()))


POPULARITY_BINS = 10


def membership_inference(
    model: Recommender, split: Split, users: int, seed: int, per_user: int = 5
) -> dict[str, Any]:
    """Training interactions against never-interacted items of matched popularity, scored by
    the final model (Yeom et al. 2018). Each member (u, i) is paired with an item u never
    interacted with (not in train, valid or test) from i's popularity decile, so neither
    popularity nor a time shift between train and held-out interactions separates them."""
    train = split.train
    n_items = train.n_items
    rng = np.random.default_rng(seed)
    pop = _popularity_prior(train.items, n_items)
    edges = np.unique(np.quantile(pop, np.linspace(0, 1, POPULARITY_BINS + 1)[1:-1]))
    bin_of = np.searchsorted(edges, pop, side="right")
    by_bin = [np.flatnonzero(bin_of == b) for b in range(len(edges) + 1)]
    seen_u = np.concatenate([train.users, split.valid.users, split.test.users])
    seen_i = np.concatenate([train.items, split.valid.items, split.test.items])
    order = np.argsort(seen_u, kind="stable")
    bounds = np.searchsorted(seen_u[order], np.arange(train.n_users + 1))
    candidates = np.unique(train.users)
    chosen = rng.choice(candidates, size=min(users, len(candidates)), replace=False)
    mu, mi, nu, ni = [], [], [], []
    for u in np.sort(chosen):
        seen = np.unique(seen_i[order[bounds[u] : bounds[u + 1]]])
        mine = np.intersect1d(train.items[train.users == u], seen)
        for i in rng.choice(mine, size=min(per_user, len(mine)), replace=False):
            pool = np.setdiff1d(by_bin[bin_of[i]], seen, assume_unique=True)
            if len(pool):
                mu.append(u)
                mi.append(i)
                nu.append(u)
                ni.append(int(rng.choice(pool)))
    if not mu:
        raise ValueError("no training interaction has a never-interacted item of its popularity")
    with torch.no_grad():
        member = model(torch.tensor(mu), torch.tensor(mi)).numpy()
        non = model(torch.tensor(nu), torch.tensor(ni)).numpy()
    return {
        "auc": membership_inference_auc(member, non),
        "advantage": membership_advantage(member, non),
        "pairs": len(mu),
        "non_members": "never-interacted items of the member's popularity decile",
    }


def canary_audit(run_dir: Path, cfg: RunConfig, split: Split, canaries: int) -> dict[str, Any]:
    """The run's own canary audit when it carried canaries, else one of a retraining of its
    configuration with ``canaries`` canaries (one run gives the estimate)."""
    saved = run_dir / "audit.json"
    if cfg.audit.canaries and saved.exists():
        found = json.loads(saved.read_text()).get("canary_audit")
        if found is not None:
            return dict(found)
    if canaries < 4:
        raise ValueError(
            f"canaries must be >= 4 to audit a run trained without them, got {canaries}"
        )
    raw = cfg.model_dump()
    raw["audit"] = {**raw["audit"], "canaries": canaries}
    result = train_federated(RunConfig.model_validate(raw), split)
    assert result.audit is not None
    return {**result.audit, "retrained": True}


def audit_run(
    run_dir: Path, *, clients: int = 500, seed: int = 0, canaries: int = 1000
) -> dict[str, Any]:
    """Canary audit, item inference on one replayed round, membership on the final model."""
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
    # The replayed round is the real clients' (a run's canaries are audited above).
    replay = RunConfig.model_validate({**cfg.model_dump(), "audit": {"canaries": 0}})
    sim = build_simulation(replay, split, observer=rec)
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
    popularity = _popularity_prior(train.items, train.n_items)
    inference, view = item_inference(rec, truth, train.n_items, vector, popularity)
    out: dict[str, Any] = {
        "run": str(run_dir),
        "canary_audit": canary_audit(run_dir, cfg, split, canaries),
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
