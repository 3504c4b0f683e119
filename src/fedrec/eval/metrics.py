"""Ranking and rating metrics computed from 0-based target ranks.

A target's rank is the number of competing candidates scoring ``>=`` it: ties count AGAINST
the target. A model that scores everything the same (e.g. an untrained or collapsed one)
therefore gets the worst rank, never a lucky perfect one. NaN scores are an error, because
``x >= nan`` is False and would silently make a broken model look perfect.

Per-target functions return float64 arrays (one value per target); grouped functions take
``groups`` (the 0-based group, i.e. user slot, of each target) and return one value per group.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

LOWER_IS_BETTER = frozenset({"RMSE", "MAE"})
"""Error metrics: a model selected on one of these minimises it."""

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
F64 = npt.NDArray[np.float64]


def check_finite_scores(scores: npt.NDArray[np.floating], what: str = "scores") -> None:
    """Raise naming the first row with a NaN score."""
    bad = np.isnan(scores)
    if bad.any():
        row = int(np.flatnonzero(bad.reshape(len(scores), -1).any(axis=1))[0])
        raise ValueError(f"{what}: row {row} contains NaN (diverged or broken model?)")


def ranks_against(
    target_scores: npt.NDArray[np.floating],
    other_scores: npt.NDArray[np.floating],
    valid: BoolArray | None = None,
) -> IntArray:
    """Rank of each target: how many of its row's (valid) other candidates score >= it."""
    t = np.asarray(target_scores)
    o = np.asarray(other_scores)
    if o.ndim != 2 or t.shape != (o.shape[0],):
        raise ValueError(
            f"need target scores (B,) and other scores (B, C); got {t.shape}, {o.shape}"
        )
    check_finite_scores(t, "target scores")
    check_finite_scores(o, "candidate scores")
    ge = o >= t[:, None]
    if valid is not None:
        ge &= valid
    ranks: IntArray = ge.sum(axis=1).astype(np.int64)
    return ranks


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"cutoff k must be >= 1, got {k}")


def hit_at_k(ranks: IntArray, k: int) -> F64:
    """1 when the target is in the top ``k`` (rank < k)."""
    _check_k(k)
    return (np.asarray(ranks) < k).astype(np.float64)


def dcg_gain(ranks: IntArray) -> F64:
    """``1 / log2(rank + 2)``: the discounted gain of one relevant item at that rank."""
    return 1.0 / np.log2(np.asarray(ranks, dtype=np.float64) + 2.0)


def ndcg_at_k(ranks: IntArray, k: int) -> F64:
    """Single-target NDCG@k: the ideal DCG is 1, so it is the gain when in the top k, else 0."""
    _check_k(k)
    r = np.asarray(ranks)
    return np.where(r < k, dcg_gain(r), 0.0)


def reciprocal_rank(ranks: IntArray) -> F64:
    """``1 / (rank + 1)``, no cutoff."""
    return 1.0 / (np.asarray(ranks, dtype=np.float64) + 1.0)


def auc_from_rank(neg_ranks: IntArray, n_negatives: IntArray | int) -> F64:
    """Fraction of negatives scored strictly below the target (ties count against it).

    ``neg_ranks`` counts only negatives (not other targets). NaN where there are no negatives.
    """
    n = np.asarray(n_negatives, dtype=np.float64)
    r = np.asarray(neg_ranks, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: F64 = np.where(n > 0, (n - r) / n, np.nan)
    return out


def _group_sizes(groups: IntArray, n_groups: int) -> IntArray:
    return np.bincount(groups, minlength=n_groups).astype(np.int64)


def _group_sum(values: F64, groups: IntArray, n_groups: int) -> F64:
    return np.bincount(groups, weights=values, minlength=n_groups).astype(np.float64)


def recall_at_k(ranks: IntArray, groups: IntArray, n_groups: int, k: int) -> F64:
    """Share of each group's targets in the top ``k`` (denominator: all its targets)."""
    hits = _group_sum(hit_at_k(ranks, k), groups, n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: F64 = hits / _group_sizes(groups, n_groups)
    return out


def hit_any_at_k(ranks: IntArray, groups: IntArray, n_groups: int, k: int) -> F64:
    """1 when at least one of the group's targets is in the top ``k``."""
    return (_group_sum(hit_at_k(ranks, k), groups, n_groups) > 0).astype(np.float64)


def ideal_dcg(n_targets: IntArray, k: int) -> F64:
    """DCG of a perfect top-``k`` list for a group with ``n_targets`` relevant items."""
    _check_k(k)
    table = np.concatenate(([0.0], np.cumsum(dcg_gain(np.arange(k)))))
    return table[np.minimum(np.asarray(n_targets), k)]


def ndcg_multi_at_k(ranks: IntArray, groups: IntArray, n_groups: int, k: int) -> F64:
    """Multi-target NDCG@k: the group's DCG over its ideal DCG (binary relevance)."""
    dcg = _group_sum(ndcg_at_k(ranks, k), groups, n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: F64 = dcg / ideal_dcg(_group_sizes(groups, n_groups), k)
    return out


def group_mean(values: F64, groups: IntArray, n_groups: int) -> F64:
    """Mean of ``values`` within each group (NaN values are skipped; all-NaN gives NaN)."""
    v = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(v)
    s = np.bincount(groups[ok], weights=v[ok], minlength=n_groups)
    c = np.bincount(groups[ok], minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: F64 = s / c
    return out


def group_min(values: IntArray, groups: IntArray, n_groups: int) -> IntArray:
    """Smallest value per group (groups without values get int64 max)."""
    out = np.full(n_groups, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(out, groups, np.asarray(values, dtype=np.int64))
    return out


def rmse(pred: npt.ArrayLike, target: npt.ArrayLike) -> float:
    p, t = _pair(pred, target)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def mae(pred: npt.ArrayLike, target: npt.ArrayLike) -> float:
    p, t = _pair(pred, target)
    return float(np.mean(np.abs(p - t)))


def _pair(pred: npt.ArrayLike, target: npt.ArrayLike) -> tuple[F64, F64]:
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    t = np.asarray(target, dtype=np.float64).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"{len(p)} predictions for {len(t)} targets")
    if len(p) == 0:
        raise ValueError("no predictions to score")
    check_finite_scores(p[:, None], "predictions")
    return p, t
