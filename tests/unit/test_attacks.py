"""Leakage audits on simulated FedMF uploads: what the server infers, and what hides it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.privacy.attacks import (
    InferenceResult,
    aggregate_inference_scores,
    evaluate_inference,
    item_inference_scores,
    membership_inference_auc,
    roc_auc,
    sample_membership_pairs,
    summarize,
)

N_ITEMS, DIM, N_POS, NEG_PER_POS, LR = 400, 16, 8, 4, 0.1


@dataclass
class Upload:
    items: np.ndarray  # uploaded rows, shuffled (the server learns nothing from order)
    rows: np.ndarray
    bias: np.ndarray
    positives: np.ndarray

    def dense(self, n_items: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.zeros((n_items, self.rows.shape[1]))
        bias = np.zeros(n_items)
        rows[self.items] = self.rows
        bias[self.items] = self.bias
        return rows, bias


def sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return out


def fedmf_upload(
    rng: np.random.Generator,
    V: np.ndarray,
    b: np.ndarray,
    n_pos: int = N_POS,
    neg_per_pos: int = NEG_PER_POS,
    epochs: int = 2,
) -> Upload:
    """One client's round of FedMF: full-batch gradient steps of BCE on its positives and
    sampled negatives (distinct from them), updating u, v_i, b_i; uploads Δv_i and Δb_i."""
    n_items, d = V.shape
    u = rng.normal(0.0, 0.5, size=d)
    user_bias = rng.normal(0.0, 0.1)
    items = rng.permutation(n_items)[: n_pos * (1 + neg_per_pos)]
    y = np.r_[np.ones(n_pos), np.zeros(n_pos * neg_per_pos)]
    v, bb = V[items].copy(), b[items].copy()
    for _ in range(epochs):
        g = y - sigmoid(v @ u + bb + user_bias)  # d log-likelihood / d score
        gu = g @ v
        v += LR * g[:, None] * u
        bb += LR * g
        u = u + LR * gu
    order = rng.permutation(items.size)
    return Upload(
        items=items[order],
        rows=(v - V[items])[order],
        bias=(bb - b[items])[order],
        positives=items[:n_pos],
    )


def global_model(rng: np.random.Generator, n_items: int = N_ITEMS) -> tuple[np.ndarray, ...]:
    return rng.normal(0.0, 0.1, size=(n_items, DIM)), rng.normal(0.0, 0.1, size=n_items)


def per_client(uploads: list[Upload], n_items: int, *, bias: bool) -> list[InferenceResult]:
    return [
        evaluate_inference(
            item_inference_scores(n_items, up.items, up.rows, up.bias if bias else None),
            up.positives,
            n_items,
        )
        for up in uploads
    ]


# ------------------------------------------------------------------ item inference


def test_sparse_upload_with_bias_is_near_perfect() -> None:
    rng = np.random.default_rng(0)
    V, b = global_model(rng)
    s = summarize(per_client([fedmf_upload(rng, V, b) for _ in range(40)], N_ITEMS, bias=True))
    assert s["auc_mean"] > 0.95
    assert s["precision_mean"] > 0.95 and s["recall_mean"] > 0.95
    assert s["k_mean"] == pytest.approx(N_POS, abs=0.5)  # the heuristic predicts ~ |truth|
    assert s["baseline_precision_mean"] == pytest.approx(N_POS / N_ITEMS)
    assert s["n_clients"] == 40


def test_sparse_upload_without_bias_via_principal_direction() -> None:
    rng = np.random.default_rng(1)
    V, b = global_model(rng)
    s = summarize(per_client([fedmf_upload(rng, V, b) for _ in range(40)], N_ITEMS, bias=False))
    assert s["auc_mean"] > 0.95
    assert s["f1_mean"] > 0.9


def test_minority_sign_decides_orientation() -> None:
    # Rows ±u exactly: the minority (2 rows along +u here) must be the predicted positives,
    # whichever sign the SVD returns; flipping every row must not change the decision.
    u = np.array([1.0, -2.0, 0.5])
    coef = np.array([0.4, -0.5, -0.5, 0.3, -0.5, -0.5, -0.5])
    for sign in (1.0, -1.0):
        scores = item_inference_scores(10, np.arange(7), sign * coef[:, None] * u)
        assert set(np.flatnonzero(scores > 0)) == {0, 3}
        assert np.isneginf(scores[7:]).all()


def test_dense_upload_scores_like_the_sparse_one() -> None:
    rng = np.random.default_rng(2)
    V, b = global_model(rng)
    up = fedmf_upload(rng, V, b)
    rows, bias = up.dense(N_ITEMS)
    for with_bias in (True, False):
        sparse = item_inference_scores(N_ITEMS, up.items, up.rows, up.bias if with_bias else None)
        dense = item_inference_scores(N_ITEMS, None, rows, bias if with_bias else None)
        np.testing.assert_array_equal(np.isneginf(dense), np.isneginf(sparse))
        finite = np.isfinite(sparse)
        assert finite.sum() == up.items.size
        np.testing.assert_allclose(dense[finite], sparse[finite], rtol=1e-9, atol=1e-12)
    # Bias only, no rows, also works.
    only_bias = item_inference_scores(N_ITEMS, None, None, bias)
    assert evaluate_inference(only_bias, up.positives, N_ITEMS).auc > 0.99


def _aggregate_round(
    rng: np.random.Generator, n_clients: int, n_items: int
) -> tuple[np.ndarray, np.ndarray, list[Upload]]:
    V, b = global_model(rng, n_items)
    uploads = [fedmf_upload(rng, V, b, n_pos=4) for _ in range(n_clients)]
    rows, bias = np.zeros((n_items, DIM)), np.zeros(n_items)
    for up in uploads:
        r, bb = up.dense(n_items)
        rows += r
        bias += bb
    return rows, bias, uploads


def test_aggregate_of_many_clients_is_chance() -> None:
    # Items drawn uniformly, so the sum carries no popularity; each item's sum has ~400 terms
    # and a client's own share is too small to find its items again (its own +-delta shifts
    # its items by ~1/sqrt(400) of the spread: expected AUC ~0.51, measured 0.50-0.52).
    n_items = 50
    rows, bias, uploads = _aggregate_round(np.random.default_rng(3), 1000, n_items)
    for b in (bias, None):
        guess = aggregate_inference_scores(rows, b)
        s = summarize([evaluate_inference(guess, up.positives, n_items) for up in uploads])
        assert 0.45 < s["auc_mean"] < 0.55, s["auc_mean"]
    # The very same uploads, seen one by one, give every client away.
    assert summarize(per_client(uploads[:50], n_items, bias=True))["auc_mean"] > 0.95


def test_aggregate_of_few_clients_still_leaks_own_contribution() -> None:
    # With ~2 terms per item a client's own deltas dominate its items' sums: SecAgg over a
    # tiny cohort is not chance, which is why cohort size matters.
    n_items = 400
    rows, bias, uploads = _aggregate_round(np.random.default_rng(4), 40, n_items)
    guess = aggregate_inference_scores(rows, bias)
    s = summarize([evaluate_inference(guess, up.positives, n_items) for up in uploads])
    assert s["auc_mean"] > 0.6


def _noisy_dense_auc(sigma: float, seed: int, n_clients: int = 150) -> float:
    rng = np.random.default_rng(seed)
    V, b = global_model(rng)
    results = []
    for _ in range(n_clients):
        up = fedmf_upload(rng, V, b)
        rows, bias = up.dense(N_ITEMS)
        rows = rows + rng.normal(0.0, sigma, size=rows.shape)
        bias = bias + rng.normal(0.0, sigma, size=bias.shape)
        scores = item_inference_scores(N_ITEMS, None, rows, bias)
        results.append(evaluate_inference(scores, up.positives, N_ITEMS))
    return summarize(results)["auc_mean"]


def test_heavy_noise_on_dense_uploads_drives_auc_to_chance() -> None:
    # |Δb| is ~0.05 here; noise of 0.01 barely hides it, 5.0 (100x) drowns it.
    light, medium, heavy = (_noisy_dense_auc(s, seed=5) for s in (0.01, 0.05, 5.0))
    assert light > 0.95
    assert heavy < medium < light
    assert 0.45 < heavy < 0.55, heavy


def test_noise_on_sparse_uploads_leaves_the_index_set_leaking() -> None:
    # Noise on the values cannot hide which rows were uploaded, and positives are among them.
    rng = np.random.default_rng(6)
    V, b = global_model(rng)
    results = []
    for _ in range(50):
        up = fedmf_upload(rng, V, b)
        rows = up.rows + rng.normal(0.0, 5.0, size=up.rows.shape)
        bias = up.bias + rng.normal(0.0, 5.0, size=up.bias.shape)
        results.append(
            evaluate_inference(
                item_inference_scores(N_ITEMS, up.items, rows, bias), up.positives, N_ITEMS
            )
        )
    uploaded = N_POS * (1 + NEG_PER_POS)
    floor = (N_ITEMS - uploaded + 0.4 * (uploaded - N_POS)) / (N_ITEMS - N_POS)
    assert summarize(results)["auc_mean"] > floor  # ~0.92: chance within the upload only


# ------------------------------------------------------------------ metrics


def brute_force_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


score_values = st.sampled_from([-np.inf, -2.0, -1.0, 0.0, 0.5, 1.0, 3.0, np.inf])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(score_values, min_size=1, max_size=12), st.lists(score_values, min_size=1, max_size=12)
)
def test_roc_auc_matches_pairwise_count_with_ties(pos: list[float], neg: list[float]) -> None:
    assert roc_auc(pos, neg) == pytest.approx(brute_force_auc(np.array(pos), np.array(neg)))


def test_roc_auc_known_values() -> None:
    assert roc_auc([1.0, 2.0], [0.0, 0.5]) == 1.0
    assert roc_auc([0.0], [1.0]) == 0.0
    assert roc_auc([1.0, 1.0], [1.0]) == 0.5
    assert roc_auc([3.0, 1.0], [2.0, 1.0]) == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([np.nan], [1.0])


def test_precision_recall_f1_by_hand() -> None:
    scores = np.array([0.9, -0.5, 0.3, -np.inf, 0.1, -0.2])
    truth = np.array([0, 4, 5, 5])  # duplicates merge
    # Heuristic cut (> 0): {0, 2, 4}, 2 of 3 true.
    r = evaluate_inference(scores, truth, 6)
    assert (r.k, r.n_truth, r.n_items) == (3, 3, 6)
    assert (r.precision, r.recall, r.f1) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    # Pairs (true vs other): 0 beats all 3; 4 beats 1, 3, loses to 2; 5 beats 1, 3, loses to 2.
    assert r.auc == pytest.approx(brute_force_auc(scores[[0, 4, 5]], scores[[1, 2, 3]]))
    assert r.auc == pytest.approx(7 / 9)
    assert r.baseline_precision == pytest.approx(0.5) and r.baseline_auc == 0.5
    assert r.baseline_recall == pytest.approx(0.5)
    # Top 2 = {0, 2}: 1 of 2 true, 1 of 3 found.
    r2 = evaluate_inference(scores, truth, 6, k=2)
    assert (r2.k, r2.precision) == (2, 0.5)
    assert r2.recall == pytest.approx(1 / 3)
    assert r2.f1 == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert r2.baseline_recall == pytest.approx(2 / 6)
    # Nothing predicted positive: the top |truth| = 3 items {0, 2, 4} are used.
    r3 = evaluate_inference(scores - 10.0, truth, 6)
    assert r3.k == 3
    assert r3.precision == pytest.approx(2 / 3)
    # No true item in the prediction.
    r4 = evaluate_inference(scores, [1], 6, k=1)
    assert (r4.precision, r4.recall, r4.f1) == (0.0, 0.0, 0.0)


def test_summarize_means_and_stds() -> None:
    scores = np.array([0.9, -0.5, 0.3, -np.inf, 0.1, -0.2])
    a = evaluate_inference(scores, [0], 6, k=1)  # precision 1
    b = evaluate_inference(scores, [1], 6, k=1)  # precision 0
    s = summarize([a, b])
    assert s["precision_mean"] == 0.5 and s["precision_std"] == 0.5
    assert s["n_clients"] == 2
    with pytest.raises(ValueError, match="at least one"):
        summarize([])


def test_bad_inputs_are_named() -> None:
    rows = np.ones((2, 3))
    with pytest.raises(ValueError, match="duplicate"):
        item_inference_scores(5, [1, 1], rows)
    with pytest.raises(ValueError, match="outside"):
        item_inference_scores(5, [1, 5], rows)
    with pytest.raises(ValueError, match=r"row_deltas must be \(len\(item_ids\)=3"):
        item_inference_scores(5, [0, 1, 2], rows)
    with pytest.raises(ValueError, match=r"bias_deltas must be \(n_items=5"):
        item_inference_scores(5, None, np.ones((5, 3)), np.ones(4))
    with pytest.raises(ValueError, match="non-finite"):
        item_inference_scores(5, [0, 1], np.array([[1.0, np.nan, 0], [0, 0, 1]]))
    with pytest.raises(ValueError, match="need row_deltas"):
        item_inference_scores(5, [0], None, None)
    with pytest.raises(ValueError, match="integer"):
        item_inference_scores(5, np.array([0.5, 1.0]), rows)
    with pytest.raises(ValueError, match="need aggregate"):
        aggregate_inference_scores(None, None)
    scores = np.zeros(5)
    with pytest.raises(ValueError, match="truth is empty"):
        evaluate_inference(scores, np.array([], dtype=np.int64), 5)
    with pytest.raises(ValueError, match="every item"):
        evaluate_inference(scores, np.arange(5), 5)
    with pytest.raises(ValueError, match="k must be"):
        evaluate_inference(scores, [0], 5, k=0)
    with pytest.raises(ValueError, match="shape"):
        evaluate_inference(np.zeros(4), [0], 5)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_inference(np.full(5, np.nan), [0], 5)


# ------------------------------------------------------------------ membership inference


def test_membership_auc() -> None:
    assert membership_inference_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert membership_inference_auc([0.5, 0.1], [0.5, 0.3]) == pytest.approx(
        brute_force_auc(np.array([0.5, 0.1]), np.array([0.5, 0.3]))
    )
    with pytest.raises(ValueError, match="member_scores"):
        membership_inference_auc([np.inf], [0.0])


def test_membership_pairs_are_balanced_and_never_interacted() -> None:
    n_items = 30
    train_u = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])  # user 0 repeats item 3
    train_i = np.array([3, 5, 7, 1, 2, 0, 1, 2, 3, 3])
    excl_u, excl_i = np.array([0, 1]), np.array([9, 4])  # held-out items: not "never seen"
    s = sample_membership_pairs(
        train_u,
        train_i,
        n_items,
        np.random.default_rng(0),
        exclude_users=excl_u,
        exclude_items=excl_i,
    )
    train = set(zip(train_u.tolist(), train_i.tolist(), strict=True))
    excl = set(zip(excl_u.tolist(), excl_i.tolist(), strict=True))
    for user, n_members in [(0, 3), (1, 2), (2, 4)]:
        mine = s.users == user
        members = s.items[mine & s.is_member]
        non = s.items[mine & ~s.is_member]
        assert members.size == non.size == n_members
        assert {(user, i) for i in members.tolist()} <= train
        assert not {(user, i) for i in non.tolist()} & (train | excl)
        assert np.unique(non).size == non.size
    again = sample_membership_pairs(
        train_u,
        train_i,
        n_items,
        np.random.default_rng(0),
        exclude_users=excl_u,
        exclude_items=excl_i,
    )
    np.testing.assert_array_equal(again.items, s.items)


def test_membership_pairs_equalise_when_few_items_are_left() -> None:
    # User 0 interacted with 4 of 5 items: 1 never-seen item, so only 1 member is kept.
    s = sample_membership_pairs([0, 0, 0, 0, 1], [0, 1, 2, 3, 0], 5, np.random.default_rng(1))
    assert (s.is_member[s.users == 0].sum(), (~s.is_member[s.users == 0]).sum()) == (1, 1)
    assert s.items[(s.users == 0) & ~s.is_member].tolist() == [4]
    with pytest.raises(ValueError, match="no user has"):
        sample_membership_pairs([0, 0], [0, 1], 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="differ in shape"):
        sample_membership_pairs([0, 1], [0], 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="both exclude_users and exclude_items"):
        sample_membership_pairs([0], [0], 5, np.random.default_rng(0), exclude_users=[0])


def test_membership_attack_on_an_overfit_and_a_random_model() -> None:
    rng = np.random.default_rng(7)
    n_users, n_items = 200, 300
    users = np.repeat(np.arange(n_users), 10)
    items = np.concatenate([rng.choice(n_items, 10, replace=False) for _ in range(n_users)])
    s = sample_membership_pairs(users, items, n_items, rng)
    memorised = np.zeros((n_users, n_items))
    memorised[users, items] = 1.0
    overfit = memorised + rng.normal(0.0, 0.3, size=memorised.shape)
    scores = overfit[s.users, s.items]
    assert membership_inference_auc(scores[s.is_member], scores[~s.is_member]) > 0.95
    rand = rng.normal(size=(n_users, n_items))[s.users, s.items]
    auc = membership_inference_auc(rand[s.is_member], rand[~s.is_member])
    assert 0.45 < auc < 0.55
