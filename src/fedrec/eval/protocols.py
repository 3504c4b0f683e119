"""Evaluation protocols: sampled (target vs fixed negatives), full ranking, rating error.

Ranking metrics are averaged per user first and then over users, so a user with many
held-out items counts as much as one with a single item (for leave-one-out splits this is
the plain mean over rows). Rating errors (RMSE/MAE) are over rows, the usual convention.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedrec.data.table import FloatArray, Holdout, IntArray, Split
from fedrec.eval import metrics as M

_MAX_CELLS = 1 << 24
"""Largest (targets x items) comparison block evaluated at once (~16 M cells)."""


class Scorer(Protocol):
    """What evaluation needs from a model; higher score = more recommended."""

    def score_candidates(self, users: IntArray, items: IntArray) -> FloatArray:
        """Scores ``(B, C)`` for ``users (B,)`` and their candidate ``items (B, C)``."""
        ...

    def score_all(self, users: IntArray) -> FloatArray:
        """Scores ``(B, n_items)`` of every item for ``users (B,)``."""
        ...


class ItemSets(Protocol):
    """Per-user item sets in CSR form (``fedrec.data.sampling.UserItemCSR`` fits)."""

    @property
    def indptr(self) -> IntArray: ...

    @property
    def indices(self) -> IntArray: ...


@dataclass(frozen=True)
class ItemSetsCSR:
    indptr: IntArray
    indices: IntArray


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, float]
    """Means over users, e.g. ``HR@10``, ``NDCG@10``, ``MRR``, ``AUC``, ``Recall@10``."""
    per_user: pd.DataFrame
    """One row per evaluated user: ``user``, ``n_targets`` and each metric."""
    n_users: int


def _ks(ks: Sequence[int]) -> list[int]:
    out = sorted({int(k) for k in ks})
    if not out or out[0] < 1:
        raise ValueError(f"ks must be a non-empty list of cutoffs >= 1, got {list(ks)}")
    return out


def _result(users: IntArray, n_targets: IntArray, cols: dict[str, M.F64]) -> EvalResult:
    frame = pd.DataFrame({"user": users, "n_targets": n_targets, **cols})
    means = {
        k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in cols.items()
    }
    return EvalResult(metrics=means, per_user=frame, n_users=len(users))


def _nonempty(holdout: Holdout) -> None:
    if len(holdout) == 0:
        raise ValueError("the hold-out is empty: nothing to evaluate")


def _groups(users: IntArray) -> tuple[IntArray, IntArray]:
    """Distinct users (sorted) and each row's slot among them."""
    uniq, slot = np.unique(np.asarray(users, dtype=np.int64), return_inverse=True)
    return uniq.astype(np.int64), slot.astype(np.int64).reshape(-1)


def evaluate_sampled(
    scorer: Scorer, holdout: Holdout, ks: Sequence[int], batch_size: int = 8192
) -> EvalResult:
    """Rank each hold-out row's target against its own ``holdout.negatives`` row.

    A negative equal to its row's target is ignored (not counted against it, not in the AUC
    denominator): the published NCF ML-1M negatives contain the test item in 156 rows, and
    NCF's own evaluation drops such duplicates too.
    """
    _nonempty(holdout)
    cut = _ks(ks)
    if holdout.negatives is None:
        raise ValueError(
            "this hold-out has no sampled negatives (holdout.negatives is None); use the "
            "full-ranking protocol or a split that samples evaluation negatives"
        )
    negs = np.asarray(holdout.negatives, dtype=np.int64)
    users = np.asarray(holdout.users, dtype=np.int64)
    items = np.asarray(holdout.items, dtype=np.int64)
    if negs.ndim != 2 or len(negs) != len(users) or negs.shape[1] == 0:
        raise ValueError(f"holdout.negatives has shape {negs.shape}, expected ({len(users)}, N>0)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ranks = np.empty(len(users), dtype=np.int64)
    n_neg = np.empty(len(users), dtype=np.int64)
    for s in range(0, len(users), batch_size):
        e = min(s + batch_size, len(users))
        cand = np.concatenate([items[s:e, None], negs[s:e]], axis=1)
        scores = np.asarray(scorer.score_candidates(users[s:e], cand))
        if scores.shape != cand.shape:
            raise ValueError(
                f"score_candidates returned shape {scores.shape}, expected {cand.shape}"
            )
        valid = negs[s:e] != items[s:e, None]
        ranks[s:e] = M.ranks_against(scores[:, 0], scores[:, 1:], valid)
        n_neg[s:e] = valid.sum(axis=1)
    uniq, slot = _groups(users)
    g = len(uniq)
    cols: dict[str, M.F64] = {}
    for k in cut:
        cols[f"HR@{k}"] = M.group_mean(M.hit_at_k(ranks, k), slot, g)
    for k in cut:
        cols[f"NDCG@{k}"] = M.group_mean(M.ndcg_at_k(ranks, k), slot, g)
    cols["MRR"] = M.group_mean(M.reciprocal_rank(ranks), slot, g)
    cols["AUC"] = M.group_mean(M.auc_from_rank(ranks, n_neg), slot, g)
    return _result(uniq, np.bincount(slot, minlength=g), cols)


def _rows_of(csr: ItemSets, users: IntArray) -> tuple[IntArray, IntArray]:
    """(slot in ``users``, item) for every item in the given users' sets."""
    start = csr.indptr[users]
    length = csr.indptr[users + 1] - start
    slot = np.repeat(np.arange(len(users), dtype=np.int64), length)
    offs = np.arange(int(length.sum()), dtype=np.int64) - np.repeat(
        np.cumsum(length) - length, length
    )
    return slot, csr.indices[np.repeat(start, length) + offs].astype(np.int64)


def evaluate_full(
    scorer: Scorer,
    holdout: Holdout,
    exclude_csr: ItemSets,
    n_items: int,
    ks: Sequence[int],
    batch_size: int = 1024,
) -> EvalResult:
    """Rank each user's held-out items against every item not in ``exclude_csr``.

    A target's rank counts the other candidates scoring >= it, other held-out items
    included (so with distinct scores it is the item's position in the ranked list).
    Recall@K divides hits by all of the user's targets; NDCG@K uses the ideal DCG of
    ``min(K, n_targets)`` hits; HR@K is "any target in the top K"; MRR uses the best-ranked
    target; AUC compares each target with the non-target candidates only.
    """
    _nonempty(holdout)
    cut = _ks(ks)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    users = np.asarray(holdout.users, dtype=np.int64)
    items = np.asarray(holdout.items, dtype=np.int64)
    if items.min() < 0 or items.max() >= n_items:
        bad = int(items[(items < 0) | (items >= n_items)][0])
        raise ValueError(f"hold-out item {bad} is outside [0, {n_items})")
    n_csr_users = len(exclude_csr.indptr) - 1
    if users.min() < 0 or users.max() >= n_csr_users:
        raise ValueError(f"hold-out user {int(users.max())} has no row in the exclusion CSR")
    order = np.lexsort((items, users))
    users, items = users[order], items[order]
    uniq, slot = _groups(users)
    g = len(uniq)
    bounds = np.searchsorted(slot, np.arange(0, g + batch_size, batch_size).clip(max=g))
    rank_all = np.empty(len(users), dtype=np.int64)
    rank_neg = np.empty(len(users), dtype=np.int64)
    n_neg_user = np.empty(g, dtype=np.int64)
    for b in range(len(bounds) - 1):
        t0, t1 = int(bounds[b]), int(bounds[b + 1])
        if t0 == t1:
            continue
        s0 = b * batch_size
        bu = uniq[s0 : s0 + batch_size]
        scores = np.asarray(scorer.score_all(bu))
        if scores.shape != (len(bu), n_items):
            raise ValueError(
                f"score_all returned shape {scores.shape}, expected {(len(bu), n_items)}"
            )
        M.check_finite_scores(scores, "score_all")
        ex_slot, ex_item = _rows_of(exclude_csr, bu)
        if len(ex_item) and (ex_item.min() < 0 or ex_item.max() >= n_items):
            raise ValueError(f"the exclusion CSR holds item ids outside [0, {n_items})")
        is_target = np.zeros(scores.shape, dtype=bool)
        local = slot[t0:t1] - s0
        is_target[local, items[t0:t1]] = True
        excluded = np.zeros(scores.shape, dtype=bool)
        excluded[ex_slot, ex_item] = True
        clash = excluded[local, items[t0:t1]]
        if clash.any():
            j = int(np.flatnonzero(clash)[0]) + t0
            raise ValueError(
                f"user {int(users[j])}: held-out item {int(items[j])} is also in the exclusion "
                "set (train); the split leaks"
            )
        negative = ~excluded & ~is_target
        n_neg_user[s0 : s0 + len(bu)] = negative.sum(axis=1)
        chunk = max(1, _MAX_CELLS // max(1, n_items))
        for c0 in range(t0, t1, chunk):
            c1 = min(c0 + chunk, t1)
            rows = slot[c0:c1] - s0
            s_rows = scores[rows]
            ge = s_rows >= scores[rows, items[c0:c1]][:, None]
            rank_neg[c0:c1] = (ge & negative[rows]).sum(axis=1)
            rank_all[c0:c1] = rank_neg[c0:c1] + (ge & is_target[rows]).sum(axis=1) - 1
    cols: dict[str, M.F64] = {}
    for k in cut:
        cols[f"HR@{k}"] = M.hit_any_at_k(rank_all, slot, g, k)
    for k in cut:
        cols[f"Recall@{k}"] = M.recall_at_k(rank_all, slot, g, k)
    for k in cut:
        cols[f"NDCG@{k}"] = M.ndcg_multi_at_k(rank_all, slot, g, k)
    cols["MRR"] = M.reciprocal_rank(M.group_min(rank_all, slot, g))
    cols["AUC"] = M.group_mean(M.auc_from_rank(rank_neg, n_neg_user[slot]), slot, g)
    return _result(uniq, np.bincount(slot, minlength=g), cols)


def evaluate_ratings(
    predict: Callable[[IntArray, IntArray], npt.NDArray[np.floating]], holdout: Holdout
) -> EvalResult:
    """RMSE and MAE of predicted ratings; over rows overall, per user in ``per_user``."""
    _nonempty(holdout)
    users = np.asarray(holdout.users, dtype=np.int64)
    items = np.asarray(holdout.items, dtype=np.int64)
    pred = np.asarray(predict(users, items), dtype=np.float64).reshape(-1)
    truth = np.asarray(holdout.ratings, dtype=np.float64)
    metrics = {"RMSE": M.rmse(pred, truth), "MAE": M.mae(pred, truth)}
    uniq, slot = _groups(users)
    g = len(uniq)
    err = pred - truth
    per_user = pd.DataFrame(
        {
            "user": uniq,
            "n_targets": np.bincount(slot, minlength=g),
            "RMSE": np.sqrt(M.group_mean(err**2, slot, g)),
            "MAE": M.group_mean(np.abs(err), slot, g),
        }
    )
    return EvalResult(metrics=metrics, per_user=per_user, n_users=g)


def csr_from_pairs(users: IntArray, items: IntArray, n_users: int, n_items: int) -> ItemSetsCSR:
    """Distinct sorted items per user as CSR."""
    u = np.asarray(users, dtype=np.int64)
    it = np.asarray(items, dtype=np.int64)
    keys = np.sort(u * n_items + it)
    if len(keys) > 1:
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys // n_items, minlength=n_users), out=indptr[1:])
    return ItemSetsCSR(indptr=indptr, indices=keys % n_items)


def exclusion_csr(split: Split, which: Literal["valid", "test"]) -> ItemSetsCSR:
    """Items a user's ranking must skip: train items for validation, train + valid for test."""
    tr = split.train
    users, items = tr.users, tr.items
    if which == "test":
        users = np.concatenate([users, split.valid.users])
        items = np.concatenate([items, split.valid.items])
    elif which != "valid":
        raise ValueError(f"which must be 'valid' or 'test', got {which!r}")
    return csr_from_pairs(users, items, tr.n_users, tr.n_items)


def evaluate(
    scorer: Scorer,
    split: Split,
    which: Literal["valid", "test"],
    protocol: Literal["sampled", "full"],
    ks: Sequence[int],
) -> EvalResult:
    """Evaluate on ``split.valid`` or ``split.test`` under the sampled or full protocol."""
    if which not in ("valid", "test"):
        raise ValueError(f"which must be 'valid' or 'test', got {which!r}")
    holdout = split.valid if which == "valid" else split.test
    if len(holdout) == 0:
        raise ValueError(
            f"the {which} hold-out of split {split.protocol!r} is empty: nothing to evaluate"
        )
    if protocol == "sampled":
        if holdout.negatives is None:
            raise ValueError(
                f"split {split.protocol!r} has no sampled negatives for {which}; use "
                "eval.protocol = 'full'"
            )
        return evaluate_sampled(scorer, holdout, ks)
    if protocol == "full":
        return evaluate_full(scorer, holdout, exclusion_csr(split, which), split.train.n_items, ks)
    raise ValueError(f"protocol must be 'sampled' or 'full', got {protocol!r}")
