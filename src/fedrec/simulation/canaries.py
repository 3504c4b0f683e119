"""Canary clients in a simulated run, and what the adversary makes of them.

Canaries are extra client ids after the real ones, sampled by the run's own rule. Each holds
a few items drawn uniformly (popularity cannot reveal them) and a fixed random direction over
those items' rows. An *inserted* canary uploads that direction, scaled to the DP clip (or,
without DP, to the median norm of the round's honest uploads); a *held-out* one takes part
but uploads nothing, so the two differ only in their data, as DP's neighbouring runs do.
Their uploads enter the round's sink like any client's (clip, noise share, encoding, SecAgg
masks or CKKS), so the adversary sees exactly what the mechanism shows:

* ``uploads`` (no secure sum, no trusted server: plain or local DP): each client's upload;
* ``sums`` (SecAgg+ or CKKS): each round's sum and who took part;
* ``released`` (central DP: the server is trusted): the released model only.

Two statistics per canary: ``score`` (the attack) is the largest cosine between the
canary's direction and a round's observation among the rounds it took part in (the released
model's for ``released``); ``cosine`` (Andrew et al.'s estimate) is the cosine with the
whole run's observation (the sum of rounds, or the model's change).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from fedrec.config import RunConfig
from fedrec.federated.aggregate import Accumulator
from fedrec.federated.layout import ParamLayout
from fedrec.federated.server import RoundOutcome
from fedrec.privacy.attacks import roc_auc
from fedrec.privacy.canary import gaussian_epsilon_estimate, one_run_audit
from fedrec.privacy.upload import UploadVector
from fedrec.simulation.protected import (
    AggregateObservation,
    Chunk,
    Observation,
    Observer,
    Sink,
    SinkFactory,
)

Params = dict[str, Tensor]
IntArray = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


def adversary_view(cfg: RunConfig) -> str:
    """What the configured mechanism shows the adversary (see the module docstring)."""
    priv = cfg.privacy
    if priv.secagg.enabled or priv.he.enabled:
        return "sums"
    if priv.dp.enabled:
        return "released"
    return "uploads"


@dataclass
class CanarySet:
    """The canaries of a run: ids ``first..first+m-1``, secret coins, items, directions."""

    first: int
    inserted: npt.NDArray[np.bool_]
    items: IntArray
    """(m, k) item ids per canary."""
    directions: Tensor
    """(m, k, row width) float64, each canary's unit direction in the upload's row space
    (parameters weighted as the upload weighs them)."""

    @property
    def m(self) -> int:
        return len(self.inserted)

    @staticmethod
    def draw(
        m: int, first: int, n_items: int, k: int, vector: UploadVector, seed: int
    ) -> CanarySet:
        """``m`` canaries, each inserted with probability 1/2 (the coins stay in this object,
        the adversary never reads them)."""
        gen = np.random.default_rng(np.random.SeedSequence([seed, 0xCA7A]))
        inserted = gen.random(m) < 0.5
        k = min(k, n_items)
        items = np.stack([np.sort(gen.choice(n_items, k, replace=False)) for _ in range(m)])
        dirs = gen.standard_normal((m, k, vector.row_width))
        col = 0
        for n, shape in zip(vector.item_names, vector.item_row_shapes, strict=True):
            size = math.prod(shape)
            if vector.weight(n) == 0:
                dirs[:, :, col : col + size] = 0.0  # a parameter the upload does not carry
            col += size
        norms = np.sqrt((dirs**2).sum(axis=(1, 2), keepdims=True))
        dirs = dirs / np.where(norms > 0, norms, 1.0)
        return CanarySet(first, inserted, items.astype(np.int64), torch.from_numpy(dirs))

    def chunk(
        self, ids: IntArray, layout: ParamLayout, shared: Params, vector: UploadVector, norm: float
    ) -> Chunk:
        """These canaries' uploads as a client chunk: inserted ones send ``norm`` times their
        direction (as raw parameter deltas), held-out ones nothing."""
        idx = ids - self.first
        sent = idx[self.inserted[idx]]
        sizes = np.where(self.inserted[idx], self.items.shape[1], 0)
        rows = (self.directions[sent] * norm).reshape(-1, vector.row_width)
        deltas: Params = {}
        col = 0
        weighted = dict(zip(vector.item_names, vector.item_row_shapes, strict=True))
        for n in layout.item_rows:
            shape = tuple(shared[n].shape[1:])
            if n not in weighted:
                deltas[n] = torch.zeros((len(rows), *shape), dtype=torch.float32)
                continue
            size = math.prod(shape)
            w = vector.weight(n)
            part = rows[:, col : col + size] / (w if w > 0 else 1.0)
            deltas[n] = part.reshape(len(rows), *shape).to(torch.float32)
            col += size
        dense = {
            n: torch.zeros((len(ids), *shared[n].shape), dtype=torch.float32) for n in layout.dense
        }
        return Chunk(
            clients=ids.astype(np.int64),
            item_ids=torch.from_numpy(self.items[sent].reshape(-1)),
            item_offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            item_deltas=deltas,
            dense_deltas=dense,
            num_examples=np.full(len(ids), self.items.shape[1], dtype=np.int64),
            losses=torch.full((len(ids),), float("nan")),
        )


def _rows_of_vector(vector: UploadVector, v: Tensor) -> Tensor:
    """The item-row segment of an upload vector, (n_items, row width), weighted."""
    w = vector.row_width
    return v[: vector.n_items * w].to(torch.float64).view(vector.n_items, w)


def _rows_of_params(vector: UploadVector, params: Params, n_rows: int) -> Tensor:
    """Item-row parameters (or deltas) side by side, weighted as the upload weighs them."""
    parts = [
        params[n].to(torch.float64).reshape(n_rows, math.prod(shape)) * vector.weight(n)
        for n, shape in zip(vector.item_names, vector.item_row_shapes, strict=True)
    ]
    return torch.cat(parts, dim=1) if parts else torch.zeros(n_rows, 0, dtype=torch.float64)


@dataclass
class CanaryLedger:
    """The adversary: an :class:`Observer` that scores the canaries from its view."""

    canaries: CanarySet
    vector: UploadVector
    view: str
    inner: Observer | None = None
    """Receives every observation too (e.g. an item-inference recorder)."""
    score: F64 = field(init=False)
    dots: F64 = field(init=False)
    """uploads view: running sum of <upload, direction> over a canary's own uploads."""
    sq: F64 = field(init=False)
    """uploads view: running sum of its uploads' squared norms."""
    total: Tensor | None = None
    """sums view: the running sum of rounds' observed row segments."""
    released: Tensor | None = None

    def __post_init__(self) -> None:
        m = self.canaries.m
        self.score = np.full(m, -np.inf)
        self.dots = np.zeros(m)
        self.sq = np.zeros(m)

    def _cosines(self, rows: Tensor, idx: IntArray) -> F64:
        """Cosine of each canary in ``idx``'s direction with the row table ``rows``."""
        norm = float(rows.norm())
        if norm == 0 or len(idx) == 0:
            return np.zeros(len(idx))
        c = self.canaries
        picked = rows[torch.from_numpy(c.items[idx])]  # (len, k, w)
        dots = (picked * c.directions[torch.from_numpy(idx)]).sum(dim=(1, 2))
        return np.asarray((dots / norm).numpy(), dtype=np.float64)

    def client(self, obs: Observation) -> None:
        if self.inner is not None:
            self.inner.client(obs)
        if self.view != "uploads" or obs.client < self.canaries.first:
            return
        i = obs.client - self.canaries.first
        if obs.vector is not None:
            rows = _rows_of_vector(self.vector, obs.vector)
        else:
            assert obs.item_ids is not None and obs.rows is not None
            rows = torch.zeros(self.vector.n_items, self.vector.row_width, dtype=torch.float64)
            ids = obs.item_ids.to(torch.long)
            rows[ids] = _rows_of_params(self.vector, obs.rows, len(ids))
        cos = float(self._cosines(rows, np.array([i]))[0])
        norm = float(rows.norm())
        self.score[i] = max(self.score[i], cos)
        self.dots[i] += cos * norm
        self.sq[i] += norm**2

    def aggregate(self, obs: AggregateObservation) -> None:
        if self.inner is not None:
            self.inner.aggregate(obs)
        if self.view != "sums":
            return
        rows = _rows_of_vector(self.vector, obs.vector)
        self.total = rows.clone() if self.total is None else self.total + rows
        c = self.canaries
        took_part = obs.clients[obs.clients >= c.first] - c.first
        took_part = took_part[took_part < c.m]
        self.score[took_part] = np.maximum(self.score[took_part], self._cosines(rows, took_part))

    def observe_model(self, before: Params, after: Params) -> None:
        """The released model's change over the run (the ``released`` view's observation)."""
        n = self.vector.n_items
        self.released = _rows_of_params(
            self.vector, {k: after[k] - before[k] for k in self.vector.item_names}, n
        )

    def cosines(self) -> F64:
        """Andrew et al.'s statistic: each canary against the whole run's observation."""
        every = np.arange(self.canaries.m)
        if self.view == "uploads":
            return np.where(self.sq > 0, self.dots / np.sqrt(np.maximum(self.sq, 1e-300)), 0.0)
        rows = self.total if self.view == "sums" else self.released
        if rows is None:
            return np.zeros(self.canaries.m)
        return self._cosines(rows, every)

    def scores(self) -> F64:
        """The attack's score per canary (never observed: -inf)."""
        if self.view == "released":
            return self.cosines()
        return self.score.copy()

    def report(self, accounted: float | None, delta: float, beta: float = 0.05) -> dict[str, Any]:
        """AUC, the one-run lower bound, Andrew et al.'s estimate and the accounted epsilon;
        ``per_canary`` records the secret coins and the scores (None: never observed), so
        anyone can recompute them."""
        c = self.canaries
        sc, cos, ins = self.scores(), self.cosines(), c.inserted
        out: dict[str, Any] = {
            "adversary_view": self.view,
            "canaries": c.m,
            "inserted": int(ins.sum()),
            "items_per_canary": int(c.items.shape[1]),
            "accounted_epsilon": accounted,
            "delta": delta,
        }
        if ins.all() or not ins.any():
            out["error"] = "every canary fell on the same side of its coin: nothing to compare"
            return out
        bound = one_run_audit(np.nan_to_num(sc, neginf=-1e9), ins, beta=beta, delta=delta)
        est = gaussian_epsilon_estimate(cos[ins], cos[~ins], delta)
        out.update(
            {
                "auc": roc_auc(sc[ins], sc[~ins]),
                "empirical_epsilon": bound.epsilon,
                "confidence": bound.confidence,
                "bound": {
                    "form": bound.form,
                    "guesses": bound.guesses,
                    "correct": bound.correct,
                },
                "per_canary": {
                    "inserted": [int(x) for x in ins],
                    "score": [round(float(x), 6) if np.isfinite(x) else None for x in sc],
                    "cosine": [round(float(x), 6) for x in cos],
                },
                "gaussian_estimate": {
                    "epsilon": est.epsilon,
                    "mu": est.mu,
                    "mean_inserted": est.mean_in,
                    "std_inserted": est.std_in,
                    "mean_held_out": est.mean_out,
                    "std_held_out": est.std_out,
                    "source": "Andrew et al. 2024 (ICLR), Gaussian fit of cosines",
                },
            }
        )
        return out


class _CanarySink(Sink):
    """A round's sink with the round's canaries added last, after the honest clients (whose
    median upload norm sets the canaries' norm when there is no clip)."""

    def __init__(
        self,
        inner: Sink,
        ids: IntArray,
        canaries: CanarySet,
        layout: ParamLayout,
        shared: Params,
        vector: UploadVector,
        fallback_norm: float,
    ) -> None:
        self.inner, self.ids, self.canaries = inner, ids, canaries
        self.layout, self.shared, self.vector = layout, shared, vector
        self.norms: list[float] = []
        self.fallback = fallback_norm

    def add(self, chunk: Chunk) -> None:
        for k in range(len(chunk.clients)):
            _, rows, dense = chunk.rows_of(k)
            self.norms.append(self.vector.payload_norm(rows, dense))
        self.inner.add(chunk)

    def norm(self) -> float:
        prot = getattr(self.inner, "protection", None)
        if prot is not None and prot.clip is not None:
            return float(prot.clip)
        if prot is not None and prot.ldp is not None:
            return float(prot.ldp.clip)
        return float(np.median(self.norms)) if self.norms else self.fallback

    def finish(self) -> tuple[Accumulator, IntArray]:
        if len(self.ids):
            norm = self.norm()
            self.fallback = norm
            self.inner.add(
                self.canaries.chunk(self.ids, self.layout, self.shared, self.vector, norm)
            )
        return self.inner.finish()


@dataclass
class CanaryRunner:
    """A :class:`ClientRunner` over real clients and canaries: the engine trains the real
    ones, the canaries' uploads join the same sink."""

    engine: Any
    """A simulation engine (its ``sinks`` factory is replaced here)."""
    canaries: CanarySet
    layout: ParamLayout
    vector: UploadVector
    factory: SinkFactory
    _pending: IntArray = field(default_factory=lambda: np.zeros(0, np.int64))
    _norm: float = 1.0
    _last: _CanarySink | None = None

    def __post_init__(self) -> None:
        self.engine.sinks = self._sink

    def _sink(self, clients: IntArray, dropped: IntArray, shared: Params, round_: int) -> Sink:
        ids = self._pending
        inner = self.factory(np.concatenate([clients, ids]), dropped, shared, round_)
        sink = _CanarySink(inner, ids, self.canaries, self.layout, shared, self.vector, self._norm)
        self._last = sink
        return sink

    def run(
        self, clients: IntArray, shared: Params, round_: int, dropped: IntArray | None = None
    ) -> RoundOutcome:
        first = self.canaries.first
        self._pending = np.sort(clients[clients >= first]).astype(np.int64)
        out: RoundOutcome = self.engine.run(clients[clients < first], shared, round_, dropped)
        if self._last is not None:
            self._norm = self._last.fallback
        return out
