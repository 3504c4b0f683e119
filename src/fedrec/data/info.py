"""Summary statistics of an interaction table, for ``fedrec data info`` and run summaries.

Federated results depend heavily on how much data each client (user) holds, so the
per-user distribution is reported in full rather than just the mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from fedrec.data.table import Interactions


def _distribution(counts: npt.NDArray[np.int64]) -> dict[str, float]:
    """min, quartiles, p90, max and mean of per-entity counts (zeros included)."""
    if len(counts) == 0:
        keys = ("min", "p25", "median", "p75", "p90", "max", "mean")
        return dict.fromkeys(keys, 0.0)
    q = np.percentile(counts, [25, 50, 75, 90])
    return {
        "min": float(counts.min()),
        "p25": float(q[0]),
        "median": float(q[1]),
        "p75": float(q[2]),
        "p90": float(q[3]),
        "max": float(counts.max()),
        "mean": float(counts.mean()),
    }


def describe(data: Interactions) -> dict[str, Any]:
    """Plain-Python (JSON-serialisable) statistics of ``data``.

    Keys: ``name``, ``users``, ``items``, ``interactions``, ``density`` (interactions per
    user-item cell), ``duplicates`` (rows repeating an earlier (user, item) pair),
    ``rating_min`` / ``rating_max`` / ``rating_mean`` / ``rating_values`` (distinct values),
    ``has_timestamps`` with ``time_min`` / ``time_max`` (epoch seconds or None),
    ``per_user`` and ``per_item`` (count distributions: min, p25, median, p75, p90, max,
    mean; users or items without interactions count as 0), and the side-feature column
    names ``user_features`` / ``item_features``.
    """
    n, nu, ni = len(data), data.n_users, data.n_items
    per_user = np.bincount(data.users, minlength=nu).astype(np.int64)
    per_item = np.bincount(data.items, minlength=ni).astype(np.int64)
    pairs = data.users * np.int64(max(ni, 1)) + data.items
    duplicates = n - len(np.unique(pairs))
    ratings = data.ratings.astype(np.float64)
    ts = data.timestamps
    return {
        "name": data.name,
        "users": nu,
        "items": ni,
        "interactions": n,
        "density": n / (nu * ni) if nu and ni else 0.0,
        "duplicates": int(duplicates),
        "rating_min": float(ratings.min()) if n else None,
        "rating_max": float(ratings.max()) if n else None,
        "rating_mean": float(ratings.mean()) if n else None,
        "rating_values": len(np.unique(ratings)),
        "has_timestamps": ts is not None,
        "time_min": int(ts.min()) if ts is not None and n else None,
        "time_max": int(ts.max()) if ts is not None and n else None,
        "per_user": _distribution(per_user),
        "per_item": _distribution(per_item),
        "user_features": [] if data.user_features is None else list(data.user_features.columns),
        "item_features": [] if data.item_features is None else list(data.item_features.columns),
    }
