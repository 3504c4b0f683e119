"""PFedRec (Zhang et al., IJCAI 2023, "Dual Personalization on Federated Recommendation").

No user embedding: each user owns a *score function* (a linear read-out over item
embeddings, weights ``w_u`` and bias ``b_u``) that never leaves the device, and the item
embeddings are shared, aggregated by the server and fine-tuned locally in every round's
local epochs. All clients start from the same score function, as in the authors' code (the
server model's read-out is copied to each client), and diverge as each trains its own.

The score ``<w_u, v_i> + b_u`` has the algebraic form of biased MF without item biases; what
makes it PFedRec is which parts are personal (the read-out) and how they start. We do not
use the held-out-item exclusion of the published code (its negative sampling skips the
test item, which leaks the test item into training decisions).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fedrec.models.base import Recommender, rows, sq


class PFedRec(Recommender):
    _private = ("score_weight", "score_bias")
    broadcast_rows = True

    def __init__(self, n_users: int, n_items: int, dim: int = 32, init_std: float = 0.01) -> None:
        super().__init__(n_users, n_items)
        self.dim = dim
        self.item_emb = nn.Embedding(n_items, dim)
        nn.init.normal_(self.item_emb.weight, std=init_std)
        # One read-out, initialised like nn.Linear(dim, 1), copied to every user.
        readout = nn.Linear(dim, 1)
        self.score_weight = nn.Embedding(n_users, dim)
        self.score_bias = nn.Embedding(n_users, 1)
        with torch.no_grad():
            self.score_weight.weight.copy_(readout.weight.expand(n_users, dim))
            self.score_bias.weight.copy_(readout.bias.expand(n_users, 1))

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return self.score_rows(self.gather_rows(users, items))

    def score_rows(self, gathered: dict[str, Tensor]) -> Tensor:
        w, v = gathered["score_weight.weight"], gathered["item_emb.weight"]
        # As MF.score_rows: a batched matmul when one user's read-out serves a whole batch.
        return torch.einsum("...d,...d->...", v, w) + gathered["score_bias.weight"][..., 0]

    def score_all(self, users: Tensor) -> Tensor:
        w = rows(self.score_weight, users)
        return w @ self.item_emb.weight.T + rows(self.score_bias, users)

    def embedding_l2(self, users: Tensor, items: Tensor) -> Tensor:
        return sq(rows(self.item_emb, items))
