"""The interface every recommender shares, and the private/shared parameter split.

The federated engine keeps each client's rows of the *private* (user-indexed) parameters on
the client and aggregates only the *shared* ones, so the split is part of the contract. It
also calls models through ``torch.func.functional_call``, so ``forward`` must be pure.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn


def rows(emb: nn.Embedding, ids: Tensor) -> Tensor:
    """Embedding rows by id.

    ``index_select`` rather than ``emb(ids)``: on CPU its backward is a plain ``index_add``,
    about 2.5x faster than the embedding kernel's, and it dominates an MF epoch.
    """
    return emb.weight.index_select(0, ids)


class Recommender(nn.Module, ABC):
    """Scores (user, item) pairs: a logit for implicit feedback, a rating for explicit.

    Subclasses list their user-indexed parameters in ``_private`` (attribute names of
    parameters whose first dimension is ``n_users``); everything else is shared.
    """

    _private: tuple[str, ...] = ()
    _frozen: tuple[str, ...] = ()
    """Attribute names of feature tables: data gathered like rows, never trained or uploaded."""
    trainable: bool = True
    """False for models fitted in closed form (Popularity): training skips the optimiser."""
    broadcast_rows: bool = False
    """True when :meth:`score_rows` is elementwise over any leading dimensions: it accepts
    rows shaped ``(*lead, *row)`` with broadcastable leads, and every dense parameter with
    the same leading dimensions before its own shape, returning ``(*lead)`` scores. Federated
    training then scores all clients' batches in one plain pass (each client with its own
    dense values) instead of vmapping a per-client function, which is much cheaper."""

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__()
        if n_users < 1 or n_items < 1:
            raise ValueError(f"need n_users >= 1 and n_items >= 1, got {n_users}, {n_items}")
        self.n_users = n_users
        self.n_items = n_items

    @abstractmethod
    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """Scores of the pairs ``(users[b], items[b])``: shape ``(B,)``."""

    @abstractmethod
    def score_all(self, users: Tensor) -> Tensor:
        """Scores of every item for each user: shape ``(B, n_items)``."""

    def embedding_l2(self, users: Tensor, items: Tensor) -> Tensor:
        """Sum of squares of the embedding (and bias) rows a batch touches.

        Regularising only the rows used keeps the penalty's strength per interaction the same
        whatever the catalogue size, which is how the NCF/Rendle baselines regularise.
        """
        return torch.zeros((), device=users.device)

    def score_candidates(self, users: Tensor, items: Tensor) -> Tensor:
        """Scores of ``items (B, C)`` for ``users (B,)``: shape ``(B, C)``."""
        b, c = items.shape
        flat: Tensor = self(users.repeat_interleave(c), items.reshape(-1))
        return flat.view(b, c)

    def score_candidates_l2(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        """``score_candidates`` plus ``embedding_l2`` over the same ``B * C`` pairs.

        One call so models can gather each user's rows once per row of candidates instead
        of once per pair; with 8 negatives that is most of an MF epoch's memory traffic.
        """
        c = items.shape[1]
        l2 = self.embedding_l2(users.repeat_interleave(c), items.reshape(-1))
        return self.score_candidates(users, items), l2

    def embedding_tables(self) -> list[tuple[str, nn.Embedding, bool]]:
        """``(parameter name, module, indexed by user?)`` of every user- or item-indexed table.

        User tables are the private ones (``_private``); item tables are the other embeddings
        with one row per item. Federated training trains and ships these row by row.
        """
        cached: list[tuple[str, nn.Embedding, bool]] | None = self.__dict__.get("_tables")
        if cached is not None:  # forward calls this per batch; the module tree never changes
            return cached
        out = []
        for name, module in self.named_modules():
            if not isinstance(module, nn.Embedding):
                continue
            if name.split(".")[0] in self._private:
                out.append((f"{name}.weight", module, True))
            elif module.num_embeddings == self.n_items:
                out.append((f"{name}.weight", module, False))
        self.__dict__["_tables"] = out
        return out

    def gather_rows(self, users: Tensor, items: Tensor) -> dict[str, Tensor]:
        """Each table's row for each pair: the input of :meth:`score_rows`."""
        return {
            name: rows(module, users if by_user else items)
            for name, module, by_user in self.embedding_tables()
        }

    def score_rows(self, gathered: dict[str, Tensor]) -> Tensor:
        """Scores from already-gathered table rows (one row per pair, keyed by parameter name).

        Models implement ``forward`` as ``score_rows(gather_rows(users, items))``, so the two
        cannot disagree; federated training calls ``score_rows`` directly to differentiate
        with respect to the rows a batch uses rather than whole tables.
        """
        raise NotImplementedError(f"{type(self).__name__} does not score from gathered rows")

    def private_parameter_names(self) -> list[str]:
        names = [n for n, _ in self.named_parameters()]
        return [n for n in names if n.split(".")[0] in self._private]

    def frozen_parameter_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if n.split(".")[0] in self._frozen]

    def shared_parameter_names(self) -> list[str]:
        private = set(self.private_parameter_names())
        return [n for n, _ in self.named_parameters() if n not in private]


def sq(*tensors: Tensor) -> Tensor:
    """Sum of squares of all given tensors."""
    out = tensors[0].pow(2).sum()
    for t in tensors[1:]:
        out = out + t.pow(2).sum()
    return out
