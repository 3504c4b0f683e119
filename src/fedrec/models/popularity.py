"""Most-popular baseline: the floor every learned model must clear."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from fedrec.models.base import Recommender


class Popularity(Recommender):
    """Scores an item by its number of training interactions, the same for every user.

    Counts live in a buffer, not a parameter: nothing is learned and nothing is private.
    """

    trainable = False
    counts: Tensor

    def __init__(self, n_users: int, n_items: int, train_items: npt.NDArray[np.int64]) -> None:
        super().__init__(n_users, n_items)
        items = np.asarray(train_items, dtype=np.int64)
        if items.size and (items.min() < 0 or items.max() >= n_items):
            raise ValueError(
                f"training item ids must lie in [0, {n_items}), got [{items.min()}, {items.max()}]"
            )
        counts = np.bincount(items, minlength=n_items).astype(np.float32)
        self.register_buffer("counts", torch.from_numpy(counts))

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return self.counts[items]

    def score_all(self, users: Tensor) -> Tensor:
        return self.counts.unsqueeze(0).expand(users.shape[0], -1)
