"""Which parameters stay on a client, which travel as item rows, which travel whole.

A recommender's parameters fall into three kinds, and the federated protocol treats each
differently: *private* (first dimension indexed by user: a client keeps its own rows and
never uploads them), *item rows* (shared embedding tables indexed by item: a client trains
and uploads only the rows it touched), and *dense* (every other shared tensor: towers,
read-outs, global bias).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from fedrec.models.base import Recommender


@dataclass(frozen=True)
class ParamLayout:
    private: tuple[str, ...]
    item_rows: tuple[str, ...]
    dense: tuple[str, ...]
    frozen: tuple[str, ...] = ()
    """Feature tables among the above: fed to the model, never trained, never uploaded."""

    def trained(self, names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(n for n in names if n not in self.frozen)

    @property
    def shared(self) -> tuple[str, ...]:
        return self.item_rows + self.dense

    @staticmethod
    def of(model: Recommender) -> ParamLayout:
        private = tuple(model.private_parameter_names())
        tables = model.embedding_tables()
        if {n for n, _, by_user in tables if by_user} != set(private):
            raise ValueError(
                f"{type(model).__name__}: every private parameter must be a user table "
                f"(private {private}, user tables {[n for n, _, u in tables if u]})"
            )
        item_rows = [n for n, _, by_user in tables if not by_user]
        taken = set(private) | set(item_rows)
        dense = tuple(n for n, _ in model.named_parameters() if n not in taken)
        return ParamLayout(
            private=private,
            item_rows=tuple(item_rows),
            dense=dense,
            frozen=tuple(model.frozen_parameter_names()),
        )

    def split(self, params: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(private, shared) views of a full parameter dict."""
        return (
            {n: params[n] for n in self.private},
            {n: params[n] for n in self.shared},
        )
