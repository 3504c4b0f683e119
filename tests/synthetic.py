"""Tiny synthetic data shared by the unit and loopback tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import RunConfig
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


def two_taste_csv(path: Path, n_users: int = 60, n_items: int = 40, seed: int = 0) -> Path:
    """The two-taste interactions as a CSV file, for tests that run the whole pipeline
    (``data.name = "table"``) rather than hand a split to the trainer."""
    rng = np.random.default_rng(seed)
    lines = ["user,item"]
    for u in range(n_users):
        pool = np.arange(n_items)[np.arange(n_items) % 2 == u % 2]
        lines += [f"u{u},i{i}" for i in rng.choice(pool, size=8, replace=False)]
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_config(csv: Path, *, mode: str = "federated", rounds: int = 6) -> dict[str, Any]:
    """A raw config that trains in about a second on :func:`two_taste_csv` data."""
    return {
        "mode": mode,
        "seed": 1,
        "threads": 1,
        "data": {
            "name": "table",
            "table": {"path": str(csv), "user_col": "user", "item_col": "item"},
            "split": "loo-random",
            "eval_negatives": 10,
        },
        "model": {"name": "mf", "dim": 8, "init_std": 0.1},
        "eval": {"ks": [5, 10]},
        "train": {"monitor": "HR@5", "epochs": rounds, "lr": 0.01, "patience": 0},
        "federated": {
            "rounds": rounds,
            "eval_every": 2,
            "patience": 0,
            "checkpoint_every": 0,
            "local": {"epochs": 2, "batch_size": 8, "lr": 0.3, "negatives": 2},
        },
    }


def mf_run_config(
    federated: dict[str, Any],
    privacy: dict[str, Any] | None = None,
    *,
    dim: int = 4,
    seed: int = 1,
    **sections: Any,
) -> RunConfig:
    """The small federated MF run the unit tests share (HR@5 on validation); ``federated`` and
    ``privacy`` are those sections, ``sections`` any other top-level ones."""
    raw: dict[str, Any] = {
        "mode": "federated",
        "seed": seed,
        "model": {"name": "mf", "dim": dim, "init_std": 0.1},
        "eval": {"ks": [5]},
        "train": {"monitor": "HR@5"},
        "federated": federated,
        "privacy": privacy or {},
    }
    raw.update(sections)
    return RunConfig.model_validate(raw)
