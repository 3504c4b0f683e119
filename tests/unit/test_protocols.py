"""Sampled, full-ranking and rating protocols against brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.data.splits import leave_one_out_random
from fedrec.data.table import FloatArray, Holdout, IntArray, Interactions, Split
from fedrec.eval import (
    EvalResult,
    Scorer,
    csr_from_pairs,
    evaluate,
    evaluate_full,
    evaluate_ratings,
    evaluate_sampled,
    exclusion_csr,
    protocols,
)


class TableScorer:
    """Scores from a fixed (n_users, n_items) table; counts calls to check batching."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = np.asarray(table, dtype=np.float32)
        self.calls = 0

    def score_candidates(self, users: IntArray, items: IntArray) -> FloatArray:
        self.calls += 1
        return self.table[users[:, None], items]

    def score_all(self, users: IntArray) -> FloatArray:
        self.calls += 1
        return self.table[users]


def _as_scorer(s: TableScorer) -> Scorer:
    return s  # static check that TableScorer satisfies the protocol


def holdout(
    users: list[int], items: list[int], negatives: list[list[int]] | None = None
) -> Holdout:
    return Holdout(
        users=np.array(users, dtype=np.int64),
        items=np.array(items, dtype=np.int64),
        ratings=np.ones(len(users), dtype=np.float32),
        negatives=None if negatives is None else np.array(negatives, dtype=np.int64),
    )


# ------------------------------------------------------------------ sampled


def test_sampled_by_hand_with_ties() -> None:
    table = np.array(
        [
            [0.9, 0.1, 0.2, 0.9, 0.3],  # user 0: target 0 ties with item 3
            [0.1, 0.5, 0.4, 0.6, 0.7],  # user 1: target 1 beats 2, loses to 3 and 4
        ]
    )
    h = holdout([0, 1], [0, 1], [[1, 2, 3], [2, 3, 4]])
    r = evaluate_sampled(_as_scorer(TableScorer(table)), h, ks=[1, 2])
    # ranks: user 0 -> 1 (the tie), user 1 -> 2.
    assert r.n_users == 2
    assert r.per_user["user"].tolist() == [0, 1]
    assert r.per_user["HR@1"].tolist() == [0.0, 0.0]
    assert r.per_user["HR@2"].tolist() == [1.0, 0.0]
    assert r.metrics["HR@2"] == pytest.approx(0.5)
    assert r.metrics["NDCG@2"] == pytest.approx((1 / math.log2(3)) / 2)
    assert r.metrics["MRR"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert r.metrics["AUC"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert set(r.metrics) == {"HR@1", "HR@2", "NDCG@1", "NDCG@2", "MRR", "AUC"}


def test_sampled_ignores_a_negative_equal_to_its_target() -> None:
    table = np.array([[0.5, 0.1, 0.9, 0.2]])
    with_dup = evaluate_sampled(TableScorer(table), holdout([0], [0], [[1, 0, 2]]), ks=[1, 2])
    without = evaluate_sampled(TableScorer(table), holdout([0], [0], [[1, 2]]), ks=[1, 2])
    assert with_dup.metrics == without.metrics
    assert with_dup.metrics["HR@2"] == 1.0 and with_dup.metrics["AUC"] == pytest.approx(0.5)


def test_sampled_averages_users_not_rows() -> None:
    table = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # user 0 has three rows (all hits), user 1 one row (a miss: tie with every negative).
    h = holdout([0, 0, 0, 1], [0, 0, 0, 0], [[1, 2]] * 4)
    r = evaluate_sampled(TableScorer(table), h, ks=[1])
    assert r.metrics["HR@1"] == pytest.approx(0.5)
    assert r.per_user["n_targets"].tolist() == [3, 1]


def test_sampled_batches_agree() -> None:
    rng = np.random.default_rng(0)
    table = rng.random((30, 40))
    negs = [rng.choice(np.arange(1, 40), 9, replace=False).tolist() for _ in range(30)]
    h = holdout(list(range(30)), [0] * 30, negs)
    big = TableScorer(table)
    a = evaluate_sampled(big, h, [5], batch_size=1000)
    small = TableScorer(table)
    b = evaluate_sampled(small, h, [5], batch_size=7)
    assert small.calls == 5 and big.calls == 1
    assert a.metrics == b.metrics


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.data())
def test_sampled_metrics_invariant_to_negative_order(seed: int, data: st.DataObject) -> None:
    rng = np.random.default_rng(seed)
    table = rng.integers(0, 4, (5, 12)).astype(np.float32)  # many ties
    negs = np.stack([rng.choice(np.arange(1, 12), 6, replace=False) for _ in range(5)])
    perm = data.draw(st.permutations(list(range(6))))
    a = evaluate_sampled(
        TableScorer(table),
        Holdout(np.arange(5), np.zeros(5, np.int64), np.ones(5, np.float32), negs),
        [1, 3],
    )
    b = evaluate_sampled(
        TableScorer(table),
        Holdout(np.arange(5), np.zeros(5, np.int64), np.ones(5, np.float32), negs[:, perm]),
        [1, 3],
    )
    assert a.metrics == b.metrics
    assert a.metrics["HR@1"] <= a.metrics["HR@3"]


def test_sampled_errors() -> None:
    t = TableScorer(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="no sampled negatives"):
        evaluate_sampled(t, holdout([0], [1]), [10])
    with pytest.raises(ValueError, match="empty"):
        evaluate_sampled(t, holdout([], [], []), [10])
    with pytest.raises(ValueError, match="ks must be"):
        evaluate_sampled(t, holdout([0], [1], [[2]]), [0])

    class Bad(TableScorer):
        def score_candidates(self, users: IntArray, items: IntArray) -> FloatArray:
            return np.zeros((len(users), 1), dtype=np.float32)

    with pytest.raises(ValueError, match=r"score_candidates returned shape \(1, 1\)"):
        evaluate_sampled(Bad(np.zeros((2, 4))), holdout([0], [1], [[2, 3]]), [1])
    nan = np.zeros((2, 4))
    nan[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_sampled(TableScorer(nan), holdout([0], [1], [[2, 3]]), [1])


# ------------------------------------------------------------------ full ranking


def brute_full(
    table: np.ndarray, users: IntArray, items: IntArray, exclude: dict[int, set[int]], ks: list[int]
) -> dict[int, dict[str, float]]:
    """Reference by sorting each user's candidate list (scores must be distinct)."""
    out: dict[int, dict[str, float]] = {}
    for u in sorted(set(users.tolist())):
        targets = {int(i) for uu, i in zip(users, items, strict=True) if uu == u}
        cands = [i for i in range(table.shape[1]) if i not in exclude.get(u, set())]
        ranked = sorted(cands, key=lambda i: -table[u, i])
        pos = {i: p for p, i in enumerate(ranked)}
        res: dict[str, float] = {}
        for k in ks:
            top = set(ranked[:k])
            hits = len(top & targets)
            res[f"HR@{k}"] = float(hits > 0)
            res[f"Recall@{k}"] = hits / len(targets)
            dcg = sum(1 / math.log2(pos[t] + 2) for t in targets if pos[t] < k)
            idcg = sum(1 / math.log2(j + 2) for j in range(min(k, len(targets))))
            res[f"NDCG@{k}"] = dcg / idcg
        res["MRR"] = 1 / (min(pos[t] for t in targets) + 1)
        negs = [i for i in cands if i not in targets]
        res["AUC"] = float(
            np.mean([np.mean([table[u, t] > table[u, n] for n in negs]) for t in targets])
        )
        out[u] = res
    return out


@pytest.mark.parametrize("batch_size,max_cells", [(1024, 1 << 24), (3, 50)])
def test_full_matches_brute_force(
    batch_size: int, max_cells: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protocols, "_MAX_CELLS", max_cells)
    rng = np.random.default_rng(1)
    n_users, n_items = 11, 25
    table = rng.permutation(n_users * n_items).reshape(n_users, n_items).astype(np.float32)
    exclude: dict[int, set[int]] = {}
    hu: list[int] = []
    hi: list[int] = []
    for u in range(n_users):
        if u == 4:
            continue  # a user without hold-out rows
        items = rng.permutation(n_items)
        exclude[u] = set(items[: rng.integers(0, 8)].tolist())
        n_t = int(rng.integers(1, 5))
        for i in items[10 : 10 + n_t]:
            hu.append(u)
            hi.append(int(i))
    ex_u = np.array([u for u, s in exclude.items() for _ in s], dtype=np.int64)
    ex_i = np.array([i for s in exclude.values() for i in s], dtype=np.int64)
    csr = csr_from_pairs(ex_u, ex_i, n_users, n_items)
    perm = rng.permutation(len(hu))  # hold-out rows in no particular order
    users, items = np.array(hu)[perm], np.array(hi)[perm]
    h = Holdout(users, items, np.ones(len(users), np.float32))
    ks = [1, 3, 10]
    r = evaluate_full(TableScorer(table), h, csr, n_items, ks, batch_size=batch_size)
    ref = brute_full(table, users, items, exclude, ks)
    assert r.n_users == n_users - 1
    assert r.per_user["user"].tolist() == sorted(ref)
    for _, row in r.per_user.iterrows():
        for key, value in ref[int(row["user"])].items():
            assert row[key] == pytest.approx(value), (row["user"], key)
    for key in ref[0]:
        assert r.metrics[key] == pytest.approx(np.mean([v[key] for v in ref.values()]))


def test_full_ties_count_against_and_agree_with_sampled() -> None:
    table = np.array([[0.3, 0.3, 0.3, 0.1, 0.9]])
    h = holdout([0], [0], [[1, 2, 3]])  # item 4 excluded (train)
    csr = csr_from_pairs(np.array([0]), np.array([4]), 1, 5)
    full = evaluate_full(TableScorer(table), h, csr, 5, [1, 2, 3])
    sampled = evaluate_sampled(TableScorer(table), h, [1, 2, 3])
    assert full.metrics["HR@2"] == 0.0 and full.metrics["HR@3"] == 1.0
    for key in ("HR@1", "HR@2", "HR@3", "NDCG@3", "MRR", "AUC"):
        assert full.metrics[key] == pytest.approx(sampled.metrics[key]), key


def test_full_rejects_leaks_and_bad_scores() -> None:
    table = np.zeros((2, 5), dtype=np.float32)
    csr = csr_from_pairs(np.array([1]), np.array([3]), 2, 5)
    with pytest.raises(ValueError, match="user 1: held-out item 3 is also in the exclusion"):
        evaluate_full(TableScorer(table), holdout([0, 1], [3, 3]), csr, 5, [1])
    table[1, 2] = np.nan
    with pytest.raises(ValueError, match="score_all: row 1 contains NaN"):
        evaluate_full(TableScorer(table), holdout([0, 1], [1, 1]), csr, 5, [1])
    with pytest.raises(ValueError, match="hold-out item 7 is outside"):
        evaluate_full(TableScorer(table), holdout([0], [7]), csr, 5, [1])


# ------------------------------------------------------------------ ratings and wrapper


def test_evaluate_ratings() -> None:
    h = Holdout(
        np.array([0, 0, 1]), np.array([1, 2, 1]), np.array([4.0, 2.0, 5.0], dtype=np.float32)
    )

    def predict(users: IntArray, items: IntArray) -> FloatArray:
        return np.array([3.0, 2.0, 5.0], dtype=np.float32)

    r = evaluate_ratings(predict, h)
    assert r.metrics["RMSE"] == pytest.approx(math.sqrt(1 / 3))
    assert r.metrics["MAE"] == pytest.approx(1 / 3)
    assert r.per_user["RMSE"].tolist() == pytest.approx([math.sqrt(0.5), 0.0])
    assert r.n_users == 2


def _split() -> tuple[Interactions, Split]:
    rng = np.random.default_rng(3)
    n_users, n_items = 20, 50
    users = np.repeat(np.arange(n_users), 10).astype(np.int64)
    items = np.concatenate([rng.choice(n_items, 10, replace=False) for _ in range(n_users)])
    data = Interactions(
        "s",
        users,
        items.astype(np.int64),
        np.ones(len(users), np.float32),
        None,
        np.arange(n_users),
        np.arange(n_items),
    )
    return data, leave_one_out_random(data, 0, eval_negatives=20)


def test_exclusion_csr_and_evaluate_wrapper() -> None:
    data, split = _split()
    ev = exclusion_csr(split, "valid")
    et = exclusion_csr(split, "test")
    for u in range(data.n_users):
        tr = set(split.train.items[split.train.users == u].tolist())
        va = set(split.valid.items[split.valid.users == u].tolist())
        assert set(ev.indices[ev.indptr[u] : ev.indptr[u + 1]].tolist()) == tr
        assert set(et.indices[et.indptr[u] : et.indptr[u + 1]].tolist()) == tr | va
    scorer = TableScorer(np.random.default_rng(0).random((data.n_users, data.n_items)))
    r = evaluate(scorer, split, "test", "full", [5])
    assert isinstance(r, EvalResult) and "Recall@5" in r.metrics
    direct = evaluate_full(scorer, split.test, et, data.n_items, [5])
    assert r.metrics == direct.metrics
    s = evaluate(scorer, split, "valid", "sampled", [5])
    assert s.metrics == evaluate_sampled(scorer, split.valid, [5]).metrics
    with pytest.raises(ValueError, match="which must be"):
        evaluate(scorer, split, "train", "full", [5])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="protocol must be"):
        evaluate(scorer, split, "test", "other", [5])  # type: ignore[arg-type]


def test_random_scores_give_chance_level() -> None:
    """A random model's sampled HR@10 with 99 negatives is ~10 %, its AUC ~0.5."""
    rng = np.random.default_rng(5)
    n_users, n_items = 2000, 300
    table = rng.random((n_users, n_items))
    negs = np.stack([rng.choice(np.arange(1, n_items), 99, replace=False) for _ in range(n_users)])
    h = Holdout(np.arange(n_users), np.zeros(n_users, np.int64), np.ones(n_users, np.float32), negs)
    r = evaluate_sampled(TableScorer(table), h, [10])
    assert abs(r.metrics["HR@10"] - 0.1) < 0.025
    assert abs(r.metrics["AUC"] - 0.5) < 0.03
