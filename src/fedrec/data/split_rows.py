"""What every split protocol is built from: a split as row indices, the per-purpose random
streams, the duplicate rule, per-user ordering and the evaluation negatives.

Each random decision draws from its own stream, ``default_rng([seed, crc32(purpose)])``, so
changing one part (say the number of evaluation negatives) does not reshuffle another.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedrec.data.implicit import duplicate_mask
from fedrec.data.sampling import ComplementSampler, UserItemCSR, user_item_csr
from fedrec.data.table import Holdout, IntArray, Interactions, Split

BoolArray = npt.NDArray[np.bool_]


def split_rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed % (1 << 64), zlib.crc32(purpose.encode())])


@dataclass(frozen=True)
class SplitRows:
    """A split as row indices into the data: what the cache stores."""

    train_mask: BoolArray
    valid_rows: IntArray
    test_rows: IntArray
    valid_negatives: IntArray | None
    test_negatives: IntArray | None
    protocol: str
    info: dict[str, Any]


def assemble_split(data: Interactions, rows: SplitRows) -> Split:
    def holdout(idx: IntArray, neg: IntArray | None) -> Holdout:
        return Holdout(
            users=data.users[idx].astype(np.int64),
            items=data.items[idx].astype(np.int64),
            ratings=data.ratings[idx].astype(np.float32),
            negatives=None if neg is None else neg.astype(np.int64),
        )

    return Split(
        train=data.subset(rows.train_mask),
        valid=holdout(rows.valid_rows, rows.valid_negatives),
        test=holdout(rows.test_rows, rows.test_negatives),
        protocol=rows.protocol,
        info=dict(rows.info),
    )


# --------------------------------------------------------------------------- negatives


def sample_eval_negatives(
    interacted: UserItemCSR,
    users: IntArray,
    k: int,
    rng: np.random.Generator,
    user_ids: npt.NDArray[np.generic] | None = None,
) -> IntArray:
    """``(len(users), k)`` distinct items per row, uniform among items the user never touched.

    ``interacted`` must hold ALL of each user's interactions. Rows come back sorted. A user
    with fewer than ``k`` such items is an error (sampling with replacement would give that
    user an easier, different test).
    """
    if k < 1:
        raise ValueError(f"eval_negatives must be >= 1, got {k}")
    sampler = ComplementSampler(interacted, rng, user_ids)
    try:
        return sampler.sample_distinct(users, k)
    except ValueError as exc:
        raise ValueError(
            f"{exc}; lower data.eval_negatives or use the full-ranking protocol"
        ) from exc


def all_interactions(data: Interactions) -> UserItemCSR:
    return user_item_csr(data.users, data.items, data.n_users, data.n_items)


# --------------------------------------------------------------------------- ordering


def user_sorted(
    data: Interactions, rows: IntArray, rng: np.random.Generator, by_time: bool
) -> tuple[IntArray, IntArray]:
    """``rows`` ordered by (user, time or nothing, seeded tiebreak); plus each row's position
    from its user's end (0 = the user's last row)."""
    # Shuffle, then stable sorts: equal keys keep the seeded shuffled order. (Two stable
    # argsorts are ~4x faster than one np.lexsort on 1M rows.)
    srt = rows[rng.permutation(len(rows))]
    if by_time:
        assert data.timestamps is not None
        srt = srt[np.argsort(data.timestamps[srt], kind="stable")]
    srt = srt[np.argsort(data.users[srt], kind="stable")]
    su = data.users[srt].astype(np.int64)
    indptr = np.zeros(data.n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(su, minlength=data.n_users), out=indptr[1:])
    from_end = indptr[su + 1] - 1 - np.arange(len(srt), dtype=np.int64)
    return srt, from_end


def kept_rows(data: Interactions) -> tuple[BoolArray, int]:
    keep = duplicate_mask(data)
    return keep, int(len(keep) - keep.sum())


def finish_rows(
    data: Interactions,
    keep: BoolArray,
    valid_rows: IntArray,
    test_rows: IntArray,
    seed: int,
    eval_negatives: int,
    protocol: str,
    info: dict[str, Any],
) -> SplitRows:
    train_mask = keep.copy()
    train_mask[valid_rows] = False
    train_mask[test_rows] = False
    interacted = all_interactions(data)
    vneg = sample_eval_negatives(
        interacted,
        data.users[valid_rows],
        eval_negatives,
        split_rng(seed, "valid-negatives"),
        data.user_ids,
    )
    tneg = sample_eval_negatives(
        interacted,
        data.users[test_rows],
        eval_negatives,
        split_rng(seed, "test-negatives"),
        data.user_ids,
    )
    info = {"seed": seed, "eval_negatives": eval_negatives, **info}
    return SplitRows(train_mask, valid_rows, test_rows, vneg, tneg, protocol, info)
