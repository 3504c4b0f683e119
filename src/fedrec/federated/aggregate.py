"""Weighted sums of client deltas for one round, and the mean update they give.

The server only ever needs sums (which is exactly what secure aggregation reveals), so both
engines and the deployment feed this accumulator and never keep per-client updates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from fedrec.federated.layout import ParamLayout

Params = dict[str, Tensor]


@dataclass
class Accumulator:
    layout: ParamLayout
    item_sum: Params
    item_weight: Tensor
    dense_sum: Params
    weight_total: Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    clients: int = 0
    examples: int = 0
    loss_sum: float = 0.0
    below_centred: float = 0.0
    """Adaptive clipping: sum over clients of (1[norm <= clip] - 1/2)."""

    @staticmethod
    def zeros(layout: ParamLayout, shared: Params, n_items: int) -> Accumulator:
        return Accumulator(
            layout=layout,
            item_sum={n: torch.zeros_like(shared[n]) for n in layout.item_rows},
            item_weight=torch.zeros(n_items, dtype=torch.float32),
            dense_sum={n: torch.zeros_like(shared[n]) for n in layout.dense},
        )

    def add_items(self, item_ids: Tensor, deltas: Params, weights: Tensor) -> None:
        """Rows ``deltas[name][r]`` of item ``item_ids[r]``, each weighted by ``weights[r]``."""
        for name in self.layout.item_rows:
            d = deltas[name]
            w = weights.to(d.dtype).reshape((-1,) + (1,) * (d.dim() - 1))
            self.item_sum[name].index_add_(0, item_ids, d * w)
        self.item_weight.index_add_(0, item_ids, weights.to(self.item_weight.dtype))

    def add_dense(self, deltas: Params, weights: Tensor) -> None:
        """Per-client dense deltas stacked on dim 0, weighted by ``weights`` (one per client)."""
        for name in self.layout.dense:
            d = deltas[name]
            w = weights.to(d.dtype).reshape((-1,) + (1,) * (d.dim() - 1))
            self.dense_sum[name] += (d * w).sum(0)

    def add_clients(self, weights: Tensor, examples: int, loss_sum: float) -> None:
        self.weight_total += weights.to(torch.float64).sum()
        self.clients += int(weights.numel())
        self.examples += examples
        self.loss_sum += loss_sum

    def mean_update(self, per_row_items: bool) -> Params:
        """The aggregated update Δ.

        ``per_row_items``: each item row is averaged over the clients that trained it (as
        sparse federated recommenders do); otherwise over all participating clients, a row no
        client touched counting as a zero update (plain FedAvg).
        """
        total = float(self.weight_total)
        if total <= 0:
            # A DP server sets a public denominator, so a noise-only round (no client) is fine.
            raise ValueError("no client update was aggregated this round")
        out: Params = {}
        for name, s in self.item_sum.items():
            if per_row_items:
                w = self.item_weight.clamp_min(1e-12).reshape((-1,) + (1,) * (s.dim() - 1))
                out[name] = torch.where(w > 1e-12, s / w, torch.zeros_like(s))
            else:
                out[name] = s / total
        for name, s in self.dense_sum.items():
            out[name] = s / total
        return out

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.clients, 1)
