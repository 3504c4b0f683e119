"""Explicit ratings → implicit positives, and collapsing repeated (user, item) rows.

Id maps are kept whole: a user or item that loses all its rows to the threshold stays in
the id space (it simply has no interactions). Embedding tables and saved models therefore
line up with the loader's ids whatever threshold is used; such users get no hold-out rows
and such items are only ever negatives.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fedrec.data.table import Interactions


def duplicate_mask(data: Interactions) -> npt.NDArray[np.bool_]:
    """True for the rows to KEEP: one per (user, item), the latest one.

    "Latest" is the largest timestamp, ties and timestamp-less data going to the later file
    row: a re-rating is the user's current opinion, and for leave-last-out the latest
    event is the one that matters.
    """
    n = len(data)
    keys = data.users.astype(np.int64) * data.n_items + data.items.astype(np.int64)
    rows = np.arange(n, dtype=np.int64)
    if data.timestamps is None:
        order = np.lexsort((rows, keys))
    else:
        order = np.lexsort((rows, data.timestamps, keys))
    sk = keys[order]
    last = np.ones(n, dtype=bool)
    if n > 1:
        last[:-1] = sk[1:] != sk[:-1]
    keep = np.zeros(n, dtype=bool)
    keep[order[last]] = True
    return keep


def deduplicate(data: Interactions) -> Interactions:
    """One row per (user, item), keeping the latest (see :func:`duplicate_mask`) in file order."""
    keep = duplicate_mask(data)
    return data if bool(keep.all()) else data.subset(keep)


def to_implicit(data: Interactions, threshold: float | None) -> Interactions:
    """Positives only: rows with rating >= ``threshold`` (every row when None), rating 1.0.

    Repeated (user, item) rows collapse to one (an implicit positive is a set member). Row
    order and the id maps are kept; see the module docstring for users/items left empty.
    """
    if threshold is not None and not np.isfinite(threshold):
        raise ValueError(f"implicit threshold must be a finite number or None, got {threshold}")
    kept = data if threshold is None else data.subset(data.ratings >= threshold)
    kept = deduplicate(kept)
    return Interactions(
        name=kept.name,
        users=kept.users,
        items=kept.items,
        ratings=np.ones(len(kept), dtype=np.float32),
        timestamps=kept.timestamps,
        user_ids=kept.user_ids,
        item_ids=kept.item_ids,
        user_features=kept.user_features,
        item_features=kept.item_features,
    )
