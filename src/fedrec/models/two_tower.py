"""A profile-aware two-tower model: the user's profile stays on the device, item attributes
are public.

User tower: MLP over [private ID embedding, private profile features]; item tower: MLP over
[shared item embedding, public item features]; score: their dot product plus an item bias.
The towers are shared (dense) parameters, so the federation learns how profiles map to
tastes without any profile leaving its device; with ``dim = 0`` the model becomes purely
feature-based (a cold-start model whose user side is the profile alone).

Feature tables are *frozen* parameters (``requires_grad = False``, listed in ``_frozen``):
gathered like embedding rows so the federated engine feeds them to ``score_rows``, never
trained, never uploaded. The user profile is a private table, so it lives in each client's
private state with its embedding.
"""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from fedrec.models.base import Recommender, rows, sq


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(itertools.pairwise(sizes)):
        lin = nn.Linear(a, b)
        nn.init.xavier_uniform_(lin.weight)
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if k < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _frozen_table(values: npt.NDArray[np.float32]) -> nn.Embedding:
    emb = nn.Embedding(values.shape[0], values.shape[1])
    emb.weight = nn.Parameter(torch.from_numpy(np.ascontiguousarray(values)), requires_grad=False)
    return emb


class TwoTower(Recommender):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        user_features: npt.NDArray[np.float32],
        item_features: npt.NDArray[np.float32],
        dim: int = 32,
        layers: list[int] | None = None,
        init_std: float = 0.01,
    ) -> None:
        super().__init__(n_users, n_items)
        layers = list(layers or [64, 32])
        if not layers or min(layers) < 1:
            raise ValueError(f"tower_layers must be positive widths, got {layers}")
        if user_features.shape[0] != n_users or item_features.shape[0] != n_items:
            raise ValueError(
                f"feature rows {user_features.shape[0]}/{item_features.shape[0]} do not match "
                f"{n_users} users / {n_items} items"
            )
        fu, fi = int(user_features.shape[1]), int(item_features.shape[1])
        if dim < 1 and fu == 0:
            raise ValueError("two-tower needs dim >= 1 or user features (the user side is empty)")
        if dim < 1 and fi == 0:
            raise ValueError("two-tower needs dim >= 1 or item features (the item side is empty)")
        private: list[str] = []
        frozen: list[str] = []
        self.dim = dim
        if dim > 0:
            self.user_emb = nn.Embedding(n_users, dim)
            self.item_emb = nn.Embedding(n_items, dim)
            nn.init.normal_(self.user_emb.weight, std=init_std)
            nn.init.normal_(self.item_emb.weight, std=init_std)
            private.append("user_emb")
        if fu:
            self.user_profile = _frozen_table(user_features.astype(np.float32))
            private.append("user_profile")
            frozen.append("user_profile")
        if fi:
            self.item_profile = _frozen_table(item_features.astype(np.float32))
            frozen.append("item_profile")
        self.item_bias = nn.Embedding(n_items, 1)
        nn.init.zeros_(self.item_bias.weight)
        self.user_tower = _mlp([dim + fu, *layers])
        self.item_tower = _mlp([dim + fi, *layers])
        self._private = tuple(private)
        self._frozen = tuple(frozen)

    def _side(self, g: dict[str, Tensor], emb: str, profile: str) -> Tensor:
        parts = []
        if f"{emb}.weight" in g:
            parts.append(g[f"{emb}.weight"])
        if f"{profile}.weight" in g:
            parts.append(g[f"{profile}.weight"].detach())  # data, not a parameter to learn
        return torch.cat(parts, dim=-1)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return self.score_rows(self.gather_rows(users, items))

    def score_rows(self, gathered: dict[str, Tensor]) -> Tensor:
        u = self.user_tower(self._side(gathered, "user_emb", "user_profile"))
        v = self.item_tower(self._side(gathered, "item_emb", "item_profile"))
        out: Tensor = (u * v).sum(-1) + gathered["item_bias.weight"][:, 0]
        return out

    def score_all(self, users: Tensor) -> Tensor:
        all_items = torch.arange(self.n_items)
        g_users = {n: rows(m, users) for n, m, by_user in self.embedding_tables() if by_user}
        g_items = {
            n: rows(m, all_items) for n, m, by_user in self.embedding_tables() if not by_user
        }
        u = self.user_tower(self._side(g_users, "user_emb", "user_profile"))
        v = self.item_tower(self._side(g_items, "item_emb", "item_profile"))
        out: Tensor = u @ v.T + self.item_bias.weight[:, 0]
        return out

    def embedding_l2(self, users: Tensor, items: Tensor) -> Tensor:
        terms = [rows(self.item_bias, items)]
        if self.dim > 0:
            terms += [rows(self.user_emb, users), rows(self.item_emb, items)]
        return sq(*terms)
