"""Neural collaborative filtering (He et al., WWW 2017): GMF, MLP and NeuMF.

Trained from scratch (no GMF/MLP pre-training). ``score_all`` never materialises a
``(B * n_items)`` batch of pair ids: the GMF part is a matmul, and the MLP tower's first layer
is split into a user half and an item half so each is computed once, then broadcast.
"""

from __future__ import annotations

import itertools
from typing import cast

import torch
from torch import Tensor, nn

from fedrec.models.base import Recommender, rows, sq

_CHUNK_ELEMS = 1 << 22
"""Upper bound on ``users x items x width`` floats per chunk in MLP ``score_all`` (16 MiB)."""


class _Tower(nn.Module):
    """ReLU MLP over the concatenation [user embedding, item embedding]."""

    def __init__(self, layers: list[int], dropout: float) -> None:
        super().__init__()
        if len(layers) < 2:
            raise ValueError(f"mlp_layers needs at least 2 widths, got {layers}")
        if layers[0] % 2:
            raise ValueError(
                f"mlp_layers[0] = {layers[0]} must be even: it is the user+item embedding size"
            )
        self.emb_size = layers[0] // 2
        linears = [nn.Linear(a, b) for a, b in itertools.pairwise(layers)]
        for lin in linears:
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.linears = nn.ModuleList(linears)
        self.drop = nn.Dropout(dropout)
        self.width = layers[1]
        """Width of the first hidden layer (what ``score_all`` materialises per pair)."""

    def _linear(self, k: int) -> nn.Linear:
        return cast(nn.Linear, self.linears[k])

    def _rest(self, h: Tensor) -> Tensor:
        h = self.drop(torch.relu(h))
        for k in range(1, len(self.linears)):
            h = self.drop(torch.relu(self._linear(k)(h)))
        return h

    def pairs(self, u: Tensor, i: Tensor) -> Tensor:
        return self._rest(self._linear(0)(torch.cat([u, i], dim=-1)))

    def all_items(self, u: Tensor, items: Tensor) -> Tensor:
        """Output for every (user row, item row) pair: ``(B, n_items, width)``."""
        first = self._linear(0)
        w_u, w_i = first.weight[:, : self.emb_size], first.weight[:, self.emb_size :]
        a = u @ w_u.T + first.bias
        c = items @ w_i.T
        return self._rest(a.unsqueeze(1) + c.unsqueeze(0))


def _chunks(n_rows: int, n_items: int, width: int) -> list[tuple[int, int]]:
    step = max(1, _CHUNK_ELEMS // max(1, n_items * width))
    return [(s, min(s + step, n_rows)) for s in range(0, n_rows, step)]


class GMF(Recommender):
    """Element-wise product of embeddings followed by a learned linear read-out."""

    _private = ("user_emb",)

    def __init__(self, n_users: int, n_items: int, dim: int = 64, init_std: float = 0.01) -> None:
        super().__init__(n_users, n_items)
        self.user_emb = nn.Embedding(n_users, dim)
        self.item_emb = nn.Embedding(n_items, dim)
        nn.init.normal_(self.user_emb.weight, std=init_std)
        nn.init.normal_(self.item_emb.weight, std=init_std)
        self.out = nn.Linear(dim, 1)
        nn.init.normal_(self.out.weight, mean=1.0 / dim**0.5, std=0.01)
        nn.init.zeros_(self.out.bias)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return self.score_rows(self.gather_rows(users, items))

    def score_rows(self, gathered: dict[str, Tensor]) -> Tensor:
        out: Tensor = self.out(gathered["user_emb.weight"] * gathered["item_emb.weight"])
        return out[:, 0]

    def score_all(self, users: Tensor) -> Tensor:
        return (
            rows(self.user_emb, users) * self.out.weight[0]
        ) @ self.item_emb.weight.T + self.out.bias

    def embedding_l2(self, users: Tensor, items: Tensor) -> Tensor:
        return sq(rows(self.user_emb, users), rows(self.item_emb, items))

    def score_candidates_l2(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        b, c = items.shape
        u = rows(self.user_emb, users)
        v = rows(self.item_emb, items.reshape(-1)).view(b, c, -1)
        out = torch.bmm(v, (u * self.out.weight[0]).unsqueeze(-1)).squeeze(-1) + self.out.bias
        return out, c * sq(u) + sq(v)

    def score_candidates(self, users: Tensor, items: Tensor) -> Tensor:
        return self.score_candidates_l2(users, items)[0]


class MLP(Recommender):
    """Concatenated embeddings through a ReLU tower: learned, non-linear similarity."""

    _private = ("user_emb",)

    def __init__(
        self,
        n_users: int,
        n_items: int,
        layers: list[int],
        dropout: float = 0.0,
        init_std: float = 0.01,
    ) -> None:
        super().__init__(n_users, n_items)
        self.tower = _Tower(layers, dropout)
        self.user_emb = nn.Embedding(n_users, self.tower.emb_size)
        self.item_emb = nn.Embedding(n_items, self.tower.emb_size)
        nn.init.normal_(self.user_emb.weight, std=init_std)
        nn.init.normal_(self.item_emb.weight, std=init_std)
        self.out = nn.Linear(layers[-1], 1)
        nn.init.xavier_uniform_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return self.score_rows(self.gather_rows(users, items))

    def score_rows(self, gathered: dict[str, Tensor]) -> Tensor:
        h = self.tower.pairs(gathered["user_emb.weight"], gathered["item_emb.weight"])
        out: Tensor = self.out(h)
        return out[:, 0]

    def score_all(self, users: Tensor) -> Tensor:
        u = rows(self.user_emb, users)
        parts = [
            self.tower.all_items(u[s:e], self.item_emb.weight) @ self.out.weight[0] + self.out.bias
            for s, e in _chunks(len(users), self.n_items, self.tower.width)
        ]
        return torch.cat(parts) if parts else u.new_zeros((0, self.n_items))

    def embedding_l2(self, users: Tensor, items: Tensor) -> Tensor:
        return sq(rows(self.user_emb, users), rows(self.item_emb, items))


class NeuMF(Recommender):
    """GMF and MLP with separate embeddings, fused by one linear read-out."""

    _private = ("user_gmf", "user_mlp")

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int = 64,
        layers: list[int] | None = None,
        dropout: float = 0.0,
        init_std: float = 0.01,
    ) -> None:
        super().__init__(n_users, n_items)
        layers = [128, 64, 32] if layers is None else layers
        self.tower = _Tower(layers, dropout)
        self.user_gmf = nn.Embedding(n_users, dim)
        self.item_gmf = nn.Embedding(n_items, dim)
        self.user_mlp = nn.Embedding(n_users, self.tower.emb_size)
        self.item_mlp = nn.Embedding(n_items, self.tower.emb_size)
        for emb in (self.user_gmf, self.item_gmf, self.user_mlp, self.item_mlp):
            nn.init.normal_(emb.weight, std=init_std)
        self.out = nn.Linear(dim + layers[-1], 1)
        nn.init.xavier_uniform_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.dim = dim

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return self.score_rows(self.gather_rows(users, items))

    def score_rows(self, gathered: dict[str, Tensor]) -> Tensor:
        g = gathered["user_gmf.weight"] * gathered["item_gmf.weight"]
        m = self.tower.pairs(gathered["user_mlp.weight"], gathered["item_mlp.weight"])
        out: Tensor = self.out(torch.cat([g, m], dim=-1))
        return out[:, 0]

    def score_all(self, users: Tensor) -> Tensor:
        w_g, w_m = self.out.weight[0, : self.dim], self.out.weight[0, self.dim :]
        gmf = (rows(self.user_gmf, users) * w_g) @ self.item_gmf.weight.T + self.out.bias
        u = rows(self.user_mlp, users)
        parts = [
            self.tower.all_items(u[s:e], self.item_mlp.weight) @ w_m
            for s, e in _chunks(len(users), self.n_items, self.tower.width)
        ]
        mlp = torch.cat(parts) if parts else gmf.new_zeros((0, self.n_items))
        return gmf + mlp

    def embedding_l2(self, users: Tensor, items: Tensor) -> Tensor:
        return sq(
            rows(self.user_gmf, users),
            rows(self.item_gmf, items),
            rows(self.user_mlp, users),
            rows(self.item_mlp, items),
        )
