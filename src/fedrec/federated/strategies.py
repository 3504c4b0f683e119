"""Server update rules: FedAvg, FedAvgM, and the adaptive FedAdam / FedYogi / FedAdagrad.

Each treats the aggregated client update Δ as a pseudo-gradient step (Reddi et al., ICLR 2021,
"Adaptive Federated Optimization", Algorithm 2). State is a dict of tensors so it checkpoints
with the rest of the server state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

Params = dict[str, Tensor]

STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


@dataclass(frozen=True)
class Strategy:
    name: str = "fedavg"
    server_lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    """Adaptivity floor of the adaptive rules (Reddi et al. use 1e-3 and smaller)."""

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.name!r}; choose one of {STRATEGIES}")

    def init_state(self, shared: Params) -> dict[str, Tensor]:
        state: dict[str, Tensor] = {}
        if self.name in ("fedavgm", "fedadam", "fedyogi", "fedadagrad"):
            state.update({f"m/{k}": torch.zeros_like(v) for k, v in shared.items()})
        if self.name in ("fedadam", "fedyogi", "fedadagrad"):
            init = self.tau**2
            state.update({f"v/{k}": torch.full_like(v, init) for k, v in shared.items()})
        return state

    def apply(
        self, shared: Params, delta: Params, state: dict[str, Tensor]
    ) -> tuple[Params, dict[str, Tensor]]:
        """New shared parameters and strategy state (inputs are not modified)."""
        new: Params = {}
        st = dict(state)
        lr = self.server_lr
        for k, p in shared.items():
            d = delta[k]
            if self.name == "fedavg":
                new[k] = p + lr * d
            elif self.name == "fedavgm":
                m = self.momentum * state[f"m/{k}"] + d
                st[f"m/{k}"] = m
                new[k] = p + lr * m
            else:
                m = self.beta1 * state[f"m/{k}"] + (1 - self.beta1) * d
                v0 = state[f"v/{k}"]
                d2 = d * d
                if self.name == "fedadam":
                    v = self.beta2 * v0 + (1 - self.beta2) * d2
                elif self.name == "fedyogi":
                    v = v0 - (1 - self.beta2) * d2 * torch.sign(v0 - d2)
                else:
                    v = v0 + d2
                st[f"m/{k}"], st[f"v/{k}"] = m, v
                new[k] = p + lr * m / (v.sqrt() + self.tau)
        return new, st
