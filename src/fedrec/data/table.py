"""The one interaction table every loader returns, and the split that evaluation consumes.

Ids are contiguous and 0-based so models can index embeddings directly; the raw ids stay in
``user_ids`` / ``item_ids`` so results can be mapped back to what the data set calls things.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Interactions:
    """Interaction rows (one per (user, item) event) with id maps and optional side features.

    Rows keep the order of the source file, because some published protocols (the NCF item
    numbering for ML-1M) are defined by that order.
    """

    name: str
    users: IntArray
    items: IntArray
    ratings: FloatArray
    """Explicit rating, implicit weight (e.g. play count), or 1.0."""
    timestamps: IntArray | None
    """Seconds since the epoch, or None when the data set has none."""
    user_ids: npt.NDArray[np.generic]
    """Raw id of each internal user id (index = internal id)."""
    item_ids: npt.NDArray[np.generic]
    user_features: pd.DataFrame | None = None
    """Indexed by internal user id (0..n_users-1), one column per feature."""
    item_features: pd.DataFrame | None = None
    """Indexed by internal item id; a ``title`` column when the data set has titles."""

    def __post_init__(self) -> None:
        n = len(self.users)
        for nm, arr in (("items", self.items), ("ratings", self.ratings)):
            if len(arr) != n:
                raise ValueError(f"{self.name}: {nm} has {len(arr)} rows, users has {n}")
        if self.timestamps is not None and len(self.timestamps) != n:
            raise ValueError(f"{self.name}: timestamps has {len(self.timestamps)} rows, users {n}")

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, mask_or_index: npt.NDArray[np.bool_] | IntArray) -> Interactions:
        """Rows selected by a boolean mask or an index array; id maps and features are kept."""
        ts = None if self.timestamps is None else self.timestamps[mask_or_index]
        return Interactions(
            name=self.name,
            users=self.users[mask_or_index],
            items=self.items[mask_or_index],
            ratings=self.ratings[mask_or_index],
            timestamps=ts,
            user_ids=self.user_ids,
            item_ids=self.item_ids,
            user_features=self.user_features,
            item_features=self.item_features,
        )


@dataclass(frozen=True)
class Holdout:
    """Held-out (user, item) rows for validation or test.

    ``negatives`` fixes the sampled-protocol candidates: row r is ranked against
    ``negatives[r]`` (shape ``(len(users), N)``). Full ranking ignores it.
    """

    users: IntArray
    items: IntArray
    ratings: FloatArray
    negatives: IntArray | None = None

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class Split:
    """Train interactions plus validation and test hold-outs of one data set.

    ``train`` is the only thing training may read. ``valid`` is the only thing model
    selection may read. ``test`` is read once, at the end.
    """

    train: Interactions
    valid: Holdout
    test: Holdout
    protocol: str
    """Which split made this (e.g. ``loo-time``, ``ncf``), for the run summary."""
    info: dict[str, object] = field(default_factory=dict)
