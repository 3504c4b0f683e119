"""A protected upload: one fixed-shape vector, and what a client does to it before it leaves.

Plain uploads are sparse (the rows a client touched, with their ids), which tells the server
which items the client interacted with. Protected uploads are *vectors over the whole item
table*, whatever the client touched, laid out as::

    [ item rows (n_items x row width) | per-row counts (n_items) | dense tensors | 1 | b - 1/2 ]

* per-row counts: ``count_scale`` for every row the client trained (scaled with the rows when
  clipped), so the server can average each row over the clients that trained it, from the
  same protected sum (and, under DP, from a noised count). Absent (``count_scale`` None) when
  rows are averaged over a public denominator (``item_aggregation = "fedavg"``): then they
  would only spend the clipping bound;
* each parameter's part is multiplied by its weight (``weights``, 1 unless configured), and
  divided by it again when the sum is read: how the DP clip bound is shared between them;
* ``1``: the client itself, so a secure sum also counts its participants;
* ``b - 1/2``: adaptive clipping's centred "my norm was under the clip" bit (Andrew et al.).

The client-side steps (:class:`ClientProtection`) are the same code in simulation and in a
deployment: clip to the DP bound (user-level DP), then local DP noise or this client's share
of distributed DP noise. Everything runs in float64 so clipping and noise are exact enough for
the quantisation of secure aggregation that follows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from fedrec.federated import rng
from fedrec.federated.aggregate import Accumulator
from fedrec.federated.layout import ParamLayout
from fedrec.privacy.ldp import LocalDP

Params = dict[str, Tensor]


@dataclass(frozen=True)
class Decoded:
    """A sum of upload vectors, cut back into its parts."""

    item_sum: Params
    counts: Tensor
    """Per-row sum of the count entries, divided by ``count_scale`` (so: clients per row);
    zeros when the upload carries no counts."""
    dense_sum: Params
    clients: float
    below_centred: float

    def accumulator(
        self,
        layout: ParamLayout,
        shared: Params,
        n_items: int,
        *,
        clients: int,
        examples: int,
        loss_sum: float,
    ) -> Accumulator:
        """The round's accumulator, as if the summed clients had been added one by one.

        ``clients``, ``examples`` and ``loss_sum`` travel beside the protected sum (they are
        the round's public bookkeeping), so the caller passes them in.
        """
        acc = Accumulator.zeros(layout, shared, n_items)
        acc.item_sum.update(self.item_sum)
        acc.item_weight = self.counts
        acc.dense_sum.update(self.dense_sum)
        acc.weight_total = torch.tensor(self.clients, dtype=torch.float64)
        acc.clients = clients
        acc.examples = examples
        acc.loss_sum = loss_sum
        acc.below_centred = self.below_centred
        return acc


@dataclass(frozen=True)
class UploadVector:
    """Where each part of a protected upload sits in its vector."""

    item_names: tuple[str, ...]
    item_row_shapes: tuple[tuple[int, ...], ...]
    frozen_items: tuple[tuple[str, tuple[int, ...]], ...]
    n_items: int
    dense_names: tuple[str, ...]
    dense_shapes: tuple[tuple[int, ...], ...]
    count_scale: float | None
    """None: no per-row count segment."""
    weights: tuple[tuple[str, float], ...] = ()
    """Parameters whose update enters the vector multiplied by a weight other than 1 (and
    leaves it divided by it): how user-level DP's clip bound is shared between them."""

    @staticmethod
    def of(
        layout: ParamLayout,
        shared: Params,
        n_items: int,
        count_scale: float | None,
        weights: Mapping[str, float] | None = None,
    ) -> UploadVector:
        if count_scale is not None and not (math.isfinite(count_scale) and count_scale > 0):
            raise ValueError(f"count_scale must be > 0 (or None: no counts), got {count_scale}")
        items = layout.trained(layout.item_rows)
        dense = layout.trained(layout.dense)
        frozen = tuple((n, tuple(shared[n].shape)) for n in layout.item_rows if n in layout.frozen)
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(items) - set(dense))
        if unknown:
            raise ValueError(
                f"privacy.dp.clip_weights names {unknown}, which the model does not share; "
                f"its shared, trained parameters are {sorted(items + dense)}"
            )
        bad = {n: w for n, w in weights.items() if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise ValueError(f"privacy.dp.clip_weights must be finite and >= 0, got {bad}")
        return UploadVector(
            item_names=items,
            item_row_shapes=tuple(tuple(shared[n].shape[1:]) for n in items),
            frozen_items=frozen,
            n_items=n_items,
            dense_names=dense,
            dense_shapes=tuple(tuple(shared[n].shape) for n in dense),
            count_scale=None if count_scale is None else float(count_scale),
            weights=tuple(sorted((n, float(w)) for n, w in weights.items() if w != 1.0)),
        )

    @cached_property
    def _weight_of(self) -> dict[str, float]:
        return dict(self.weights)

    def weight(self, name: str) -> float:
        """The factor ``name``'s update carries inside the vector (1 unless configured)."""
        return self._weight_of.get(name, 1.0)

    def _unweigh(self, name: str, part: Tensor) -> Tensor:
        w = self.weight(name)
        if w == 1.0:
            return part
        return part / w if w > 0 else torch.zeros_like(part)

    @property
    def row_width(self) -> int:
        return sum(math.prod(s) for s in self.item_row_shapes)

    @property
    def dense_size(self) -> int:
        return sum(math.prod(s) for s in self.dense_shapes)

    @property
    def count_size(self) -> int:
        return 0 if self.count_scale is None else self.n_items

    @property
    def _dense_start(self) -> int:
        return self.n_items * self.row_width + self.count_size

    @property
    def payload_dim(self) -> int:
        """Entries covered by clipping and noise: rows, counts and dense tensors."""
        return self._dense_start + self.dense_size

    @property
    def dim(self) -> int:
        return self.payload_dim + 2

    def payload_norm(self, rows: Params, dense: Params) -> float:
        """L2 norm of a client's payload from its sparse parts (rows: one per touched item)."""
        sq = 0.0
        k = 0
        for n in self.item_names:
            r = rows[n].to(torch.float64)
            k = int(r.shape[0])
            sq += self.weight(n) ** 2 * float(r.pow(2).sum())
        if self.count_scale is not None:
            sq += k * self.count_scale**2
        for n in self.dense_names:
            sq += self.weight(n) ** 2 * float(dense[n].to(torch.float64).pow(2).sum())
        return math.sqrt(sq)

    def build(
        self,
        item_ids: Tensor,
        rows: Params,
        dense: Params,
        *,
        scale: float = 1.0,
        below: float = 0.0,
    ) -> Tensor:
        """One client's vector: its rows put in place (zeros elsewhere), all scaled by ``scale``."""
        w = self.row_width
        out = torch.zeros(self.dim, dtype=torch.float64)
        table = out[: self.n_items * w].view(self.n_items, w)
        if self.item_names:
            parts = [
                rows[n].to(torch.float64).reshape(len(item_ids), -1) * self.weight(n)
                for n in self.item_names
            ]
            table[item_ids] = torch.cat(parts, dim=1) * scale
        if self.count_scale is not None:
            out[self.n_items * w : self._dense_start][item_ids] = self.count_scale * scale
        start = self._dense_start
        for n, shape in zip(self.dense_names, self.dense_shapes, strict=True):
            size = math.prod(shape)
            out[start : start + size] = dense[n].to(torch.float64).reshape(-1) * (
                self.weight(n) * scale
            )
            start += size
        out[self.payload_dim] = 1.0
        out[self.payload_dim + 1] = below
        return out

    def build_many(
        self,
        item_ids: Tensor,
        sizes: Sequence[int] | npt.NDArray[np.integer],
        rows: Params,
        dense: Params,
        *,
        scales: Sequence[float],
        belows: Sequence[float],
        out: Tensor | None = None,
    ) -> Tensor:
        """Several clients' vectors at once, one row each: row k is exactly
        ``build(ids_k, rows_k, dense_k, scale=scales[k], below=belows[k])``.

        ``item_ids`` and ``rows`` are the clients' sparse rows concatenated in client order,
        ``sizes[k]`` of them for client k; ``dense`` is stacked per client on dim 0. ``out``:
        a float64 (clients, dim) buffer to overwrite instead of allocating one.
        """
        b = len(sizes)
        if len(scales) != b or len(belows) != b:
            raise ValueError(f"{b} clients but {len(scales)} scales and {len(belows)} belows")
        if out is None:
            out = torch.zeros(b, self.dim, dtype=torch.float64)
        else:
            if out.shape != (b, self.dim) or out.dtype != torch.float64:
                raise ValueError(f"out must be float64 of shape ({b}, {self.dim})")
            out.zero_()
        owner = torch.repeat_interleave(
            torch.arange(b), torch.as_tensor(np.asarray(sizes), dtype=torch.long)
        )
        ids = item_ids.to(torch.long)
        if owner.numel() != ids.numel():
            raise ValueError(f"sizes add up to {owner.numel()} rows, item_ids has {ids.numel()}")
        scale = torch.tensor(list(scales), dtype=torch.float64)
        row_scale = scale[owner]
        w, n_items = self.row_width, self.n_items
        if self.item_names:
            table = out[:, : n_items * w].view(b, n_items, w)
            parts = [
                rows[n].to(torch.float64).reshape(len(ids), math.prod(shape)) * self.weight(n)
                for n, shape in zip(self.item_names, self.item_row_shapes, strict=True)
            ]
            table[owner, ids] = torch.cat(parts, dim=1) * row_scale[:, None]
        if self.count_scale is not None:
            out[:, n_items * w : self._dense_start][owner, ids] = self.count_scale * row_scale
        start = self._dense_start
        for n, shape in zip(self.dense_names, self.dense_shapes, strict=True):
            size = math.prod(shape)
            out[:, start : start + size] = dense[n].to(torch.float64).reshape(b, size) * (
                self.weight(n) * scale[:, None]
            )
            start += size
        out[:, self.payload_dim] = 1.0
        out[:, self.payload_dim + 1] = torch.tensor(list(belows), dtype=torch.float64)
        return out

    def split(self, total: Tensor | np.ndarray) -> Decoded:
        t = torch.as_tensor(total, dtype=torch.float64)
        if t.shape != (self.dim,):
            raise ValueError(f"expected a vector of {self.dim} entries, got shape {tuple(t.shape)}")
        w = self.row_width
        table = t[: self.n_items * w].view(self.n_items, w)
        item_sum: Params = {}
        col = 0
        for n, shape in zip(self.item_names, self.item_row_shapes, strict=True):
            size = math.prod(shape)
            part = table[:, col : col + size].reshape(self.n_items, *shape)
            item_sum[n] = self._unweigh(n, part).float()
            col += size
        for n, shape in self.frozen_items:
            item_sum[n] = torch.zeros(shape)
        if self.count_scale is None:
            counts = torch.zeros(self.n_items)
        else:
            counts = (t[self.n_items * w : self._dense_start] / self.count_scale).float()
        dense_sum: Params = {}
        start = self._dense_start
        for n, shape in zip(self.dense_names, self.dense_shapes, strict=True):
            size = math.prod(shape)
            dense_sum[n] = self._unweigh(n, t[start : start + size].reshape(shape)).float()
            start += size
        return Decoded(
            item_sum=item_sum,
            counts=counts,
            dense_sum=dense_sum,
            clients=float(t[self.payload_dim]),
            below_centred=float(t[self.payload_dim + 1]),
        )


@dataclass(frozen=True)
class ClientProtection:
    """What every client does to its upload this round, before it leaves the device.

    ``clip``: user-level DP bound on the payload's L2 norm (None: no clipping). ``ldp``: local
    DP (clips with its own bound and adds this client's noise). ``noise_std`` and
    ``count_noise_std``: this client's share of distributed DP noise on the payload and on the
    adaptive-clipping bit.
    """

    clip: float | None = None
    ldp: LocalDP | None = None
    noise_std: float = 0.0
    count_noise_std: float = 0.0

    def scale(self, norm: float) -> float:
        """Factor that brings a payload of this norm within the clip."""
        if self.clip is None or norm <= self.clip:
            return 1.0
        return self.clip / norm

    def below(self, norm: float) -> float:
        """The centred adaptive-clipping bit b - 1/2."""
        return 0.0 if self.clip is None else (0.5 if norm <= self.clip else -0.5)

    def noise(
        self,
        vector: Tensor,
        payload_dim: int,
        generator: torch.Generator,
        *,
        scratch: Tensor | None = None,
    ) -> Tensor:
        """Local DP or a distributed-DP share, added in place to ``vector``; returns it.

        ``scratch``: an optional float64 work buffer of at least ``payload_dim`` entries, so a
        caller noising many vectors allocates none (same result, same draws).
        """
        if self.ldp is not None:
            vector[:payload_dim] = self.ldp.apply(vector[None, :payload_dim], generator)[0]
        if self.noise_std > 0:
            if scratch is None:
                vector[:payload_dim] += self.noise_std * torch.randn(
                    payload_dim, generator=generator, dtype=torch.float64
                )
            else:
                z = scratch[:payload_dim]
                torch.randn(payload_dim, generator=generator, dtype=torch.float64, out=z)
                z.mul_(self.noise_std)
                vector[:payload_dim] += z
        if self.count_noise_std > 0:
            vector[payload_dim + 1] += self.count_noise_std * float(
                torch.randn((), generator=generator, dtype=torch.float64)
            )
        return vector


CLIENT_NOISE = 12
"""rng stream tag of each client's own privacy noise."""


def client_generator(seed: int, round_: int, client: int) -> torch.Generator:
    """A client's own noise stream for a round. In simulation ``seed`` is the run's seed; a
    deployed client keys it with a secret that never leaves its device."""
    return torch.Generator().manual_seed(int(rng.hash64(seed, round_, CLIENT_NOISE, client)))
