"""Metric formulas on hand-computed cases, tie handling and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedrec.eval import metrics as M


def test_ties_count_against_the_target() -> None:
    target = np.array([0.5, 0.5, 0.5])
    others = np.array([[0.5, 0.7, 0.1], [0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    assert M.ranks_against(target, others).tolist() == [2, 0, 3]
    valid = np.array([[False, True, True], [True, True, True], [True, False, True]])
    assert M.ranks_against(target, others, valid).tolist() == [1, 0, 2]


def test_constant_model_gets_the_worst_rank_not_the_best() -> None:
    ranks = M.ranks_against(np.zeros(4), np.zeros((4, 99)))
    assert ranks.tolist() == [99] * 4
    assert M.hit_at_k(ranks, 10).sum() == 0
    assert np.all(M.auc_from_rank(ranks, 99) == 0.0)


def test_nan_scores_are_an_error_naming_the_row() -> None:
    others = np.zeros((3, 2))
    others[2, 1] = np.nan
    with pytest.raises(ValueError, match="candidate scores: row 2 contains NaN"):
        M.ranks_against(np.zeros(3), others)
    with pytest.raises(ValueError, match="target scores: row 1"):
        M.ranks_against(np.array([0.0, np.nan, 0.0]), np.zeros((3, 2)))


def test_single_target_metrics_by_hand() -> None:
    ranks = np.array([0, 1, 4, 10])
    assert M.hit_at_k(ranks, 5).tolist() == [1, 1, 1, 0]
    assert M.hit_at_k(ranks, 1).tolist() == [1, 0, 0, 0]
    expect = [1.0, 1 / math.log2(3), 1 / math.log2(6), 0.0]
    assert np.allclose(M.ndcg_at_k(ranks, 5), expect)
    assert np.allclose(M.reciprocal_rank(ranks), [1, 1 / 2, 1 / 5, 1 / 11])
    # 99 negatives; rank r means r of them score >= target, 99 - r strictly below.
    assert np.allclose(M.auc_from_rank(ranks, 99), [1, 98 / 99, 95 / 99, 89 / 99])
    assert np.isnan(M.auc_from_rank(np.array([0]), 0)[0])
    with pytest.raises(ValueError, match="k must be >= 1"):
        M.hit_at_k(ranks, 0)


def test_multi_target_metrics_by_hand() -> None:
    # user 0: targets at ranks 0 and 3; user 1: one target at rank 1; user 2: ranks 5, 6, 7.
    ranks = np.array([0, 3, 1, 5, 6, 7])
    groups = np.array([0, 0, 1, 2, 2, 2])
    assert np.allclose(M.recall_at_k(ranks, groups, 3, 2), [0.5, 1.0, 0.0])
    assert np.allclose(M.recall_at_k(ranks, groups, 3, 4), [1.0, 1.0, 0.0])
    assert np.allclose(M.hit_any_at_k(ranks, groups, 3, 2), [1, 1, 0])
    idcg2 = 1 + 1 / math.log2(3)
    assert np.allclose(
        M.ndcg_multi_at_k(ranks, groups, 3, 2), [1 / idcg2, (1 / math.log2(3)) / 1.0, 0.0]
    )
    idcg4_two = 1 + 1 / math.log2(3)
    assert np.allclose(
        M.ndcg_multi_at_k(ranks, groups, 3, 4)[0], (1 + 1 / math.log2(5)) / idcg4_two
    )
    assert M.group_min(ranks, groups, 3).tolist() == [0, 1, 5]
    assert np.allclose(M.ideal_dcg(np.array([0, 1, 5]), 3), [0, 1, 1 + 1 / math.log2(3) + 0.5])


def test_rating_errors_by_hand() -> None:
    assert M.rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(math.sqrt(4 / 3))
    assert M.mae([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 predictions for 3 targets"):
        M.rmse([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        M.mae([np.nan], [1])


scores_2d = arrays(
    np.float32,
    st.tuples(st.integers(1, 6), st.integers(1, 12)),
    elements=st.sampled_from([-1.0, 0.0, 0.25, 0.5, 1.0, 2.0]),  # few values: many ties
)


@given(scores_2d, st.data())
def test_rank_is_invariant_to_candidate_order(others: np.ndarray, data: st.DataObject) -> None:
    target = others[:, 0].copy() + np.float32(data.draw(st.sampled_from([0.0, 0.25])))
    perm = data.draw(st.permutations(list(range(others.shape[1]))))
    a = M.ranks_against(target, others)
    b = M.ranks_against(target, others[:, perm])
    assert np.array_equal(a, b)
    brute = [sum(o >= t for o in row) for t, row in zip(target, others, strict=True)]
    assert a.tolist() == brute


@given(st.lists(st.integers(0, 50), min_size=1, max_size=30), st.integers(1, 20))
def test_hit_and_ndcg_monotone_in_k(ranks_list: list[int], k: int) -> None:
    ranks = np.array(ranks_list)
    assert np.all(M.hit_at_k(ranks, k) <= M.hit_at_k(ranks, k + 1))
    assert np.all(M.ndcg_at_k(ranks, k) <= M.ndcg_at_k(ranks, k + 1))
    assert np.all(M.ndcg_at_k(ranks, k) <= M.hit_at_k(ranks, k))
    assert np.all(M.reciprocal_rank(ranks) <= 1)


@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 30)), min_size=1, max_size=30),
    st.integers(1, 15),
)
def test_grouped_metrics_bounded_and_monotone(pairs: list[tuple[int, int]], k: int) -> None:
    # Real ranks have the j-th best target of a user at rank >= j - 1; distinct ranks do.
    pairs = sorted(set(pairs))
    groups = np.array([p[0] for p in pairs])
    ranks = np.array([p[1] for p in pairs])
    present = np.bincount(groups, minlength=4) > 0
    for fn in (M.recall_at_k, M.hit_any_at_k):
        lo, hi = fn(ranks, groups, 4, k)[present], fn(ranks, groups, 4, k + 1)[present]
        assert np.all(lo <= hi) and np.all((lo >= 0) & (hi <= 1))
    nd = M.ndcg_multi_at_k(ranks, groups, 4, k)[present]
    assert np.all((nd >= 0) & (nd <= 1 + 1e-12))
