"""Tiny synthetic data shared by the unit and loopback tests."""

from __future__ import annotations

import numpy as np

from fedrec.data.splits import leave_one_out_random
from fedrec.data.table import Interactions, Split


def two_taste_split(
    n_users: int = 60,
    n_items: int = 40,
    seed: int = 0,
    *,
    per_user: int = 8,
    string_ids: bool = False,
) -> Split:
    """Two taste groups: users of group g mostly like items of group g (learnable).

    ``string_ids`` gives users raw ids like ``"u3"``, as a real data set's would be, for tests
    that look users up by raw id.
    """
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        pool = np.arange(n_items)[np.arange(n_items) % 2 == u % 2]
        chosen = rng.choice(pool, size=per_user, replace=False)
        users += [u] * len(chosen)
        items += chosen.tolist()
    data = Interactions(
        name="syn",
        users=np.array(users, dtype=np.int64),
        items=np.array(items, dtype=np.int64),
        ratings=np.ones(len(users), np.float32),
        timestamps=None,
        user_ids=np.array([f"u{u}" for u in range(n_users)]) if string_ids else np.arange(n_users),
        item_ids=np.arange(n_items),
    )
    return leave_one_out_random(data, seed=seed, eval_negatives=10)
