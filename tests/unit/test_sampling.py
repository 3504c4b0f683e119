"""Per-user CSR, exact complement sampling and the training negative sampler."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.data import sampling
from fedrec.data.sampling import (
    TrainingNegativeSampler,
    complement_keys,
    sample_complement,
    training_csr,
    user_item_csr,
)
from fedrec.data.splits import leave_one_out_random
from fedrec.data.table import Interactions


def make_data(
    n_users: int, n_items: int, per_user: int, seed: int = 0, name: str = "synthetic"
) -> Interactions:
    """Every user gets ``per_user`` distinct random items (popularity-skewed)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1)
    p /= p.sum()
    users, items = [], []
    for u in range(n_users):
        users.append(np.full(per_user, u))
        items.append(rng.choice(n_items, size=per_user, replace=False, p=p))
    us = np.concatenate(users).astype(np.int64)
    it = np.concatenate(items).astype(np.int64)
    return Interactions(
        name=name,
        users=us,
        items=it,
        ratings=np.ones(len(us), dtype=np.float32),
        timestamps=rng.integers(0, 1000, len(us)).astype(np.int64),
        user_ids=np.arange(100, 100 + n_users),
        item_ids=np.arange(n_items),
    )


pairs = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 9)), max_size=40)


@given(pairs)
def test_csr_matches_python_sets(ps: list[tuple[int, int]]) -> None:
    u = np.array([p[0] for p in ps], dtype=np.int64)
    i = np.array([p[1] for p in ps], dtype=np.int64)
    csr = user_item_csr(u, i, 6, 10)
    for user in range(6):
        assert csr.row(user).tolist() == sorted({b for a, b in ps if a == user})
    assert csr.counts().sum() == len(set(ps))
    qu, qi = np.meshgrid(np.arange(6), np.arange(10), indexing="ij")
    expect = np.array([[(a, b) in set(ps) for b in range(10)] for a in range(6)])
    assert np.array_equal(csr.contains(qu, qi), expect)


@given(pairs)
def test_rank_mapping_enumerates_exactly_the_complement(ps: list[tuple[int, int]]) -> None:
    u = np.array([p[0] for p in ps], dtype=np.int64)
    i = np.array([p[1] for p in ps], dtype=np.int64)
    csr = user_item_csr(u, i, 6, 10)
    keys = complement_keys(csr)
    assert np.all(np.diff(keys) >= 0)
    for user in range(6):
        missing = sorted(set(range(10)) - {b for a, b in ps if a == user})
        ranks = np.arange(len(missing), dtype=np.int64)
        got = sample_complement(csr, np.full(len(ranks), user), ranks, keys)
        assert got.tolist() == missing


def test_csr_rejects_out_of_range_ids() -> None:
    with pytest.raises(ValueError, match="item id 10"):
        user_item_csr(np.array([0]), np.array([10]), 1, 10)
    with pytest.raises(ValueError, match="user id 3"):
        user_item_csr(np.array([3]), np.array([1]), 2, 10)


@pytest.mark.parametrize("bitmap", [True, False])
def test_training_negatives_never_hit_training_positives(
    bitmap: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not bitmap:
        monkeypatch.setattr(sampling, "_BITMAP_MAX_PAIRS", 0)
    data = make_data(200, 150, 60, seed=1)
    s = TrainingNegativeSampler(data, seed=3)
    assert (s._sampler._bitmap is not None) == bitmap
    negs = s.sample(data.users, 5)
    assert negs.shape == (len(data), 5)
    assert negs.dtype == np.int64
    assert negs.min() >= 0 and negs.max() < data.n_items
    csr = training_csr(data)
    assert not csr.contains(np.repeat(data.users[:, None], 5, axis=1), negs).any()


def test_sampler_is_deterministic_per_seed() -> None:
    data = make_data(50, 80, 20)
    a = TrainingNegativeSampler(data, 7).sample(data.users, 4)
    b = TrainingNegativeSampler(data, 7).sample(data.users, 4)
    c = TrainingNegativeSampler(data, 8).sample(data.users, 4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_negatives_are_uniform_over_the_complement_even_for_dense_users() -> None:
    # User 0 has 18 of 20 items: most draws collide, so the exact fallback does the work.
    n_items = 20
    users = np.array([0] * 18 + [1] * 3, dtype=np.int64)
    items = np.array([*range(18), 0, 5, 7], dtype=np.int64)
    data = Interactions(
        "dense",
        users,
        items,
        np.ones(len(users), np.float32),
        None,
        np.array(["a", "b"]),
        np.arange(n_items),
    )
    s = TrainingNegativeSampler(data, 0)
    neg0 = s.sample(np.zeros(20000, dtype=np.int64), 1).ravel()
    assert set(np.unique(neg0).tolist()) == {18, 19}
    assert abs(np.mean(neg0 == 18) - 0.5) < 0.02
    neg1 = s.sample(np.ones(34000, dtype=np.int64), 1).ravel()
    counts = np.bincount(neg1, minlength=n_items)
    assert counts[[0, 5, 7]].sum() == 0
    free = np.setdiff1d(np.arange(n_items), [0, 5, 7])
    # 17 free items, 2000 expected each; 5 sigma is ~ +-220.
    assert np.all(np.abs(counts[free] - 2000) < 250), counts


def test_user_with_every_item_is_named() -> None:
    users = np.array([0, 0, 0, 1], dtype=np.int64)
    items = np.array([0, 1, 2, 0], dtype=np.int64)
    data = Interactions(
        "full", users, items, np.ones(4, np.float32), None, np.array(["ann", "bob"]), np.arange(3)
    )
    s = TrainingNegativeSampler(data, 0)
    assert s.sample(np.array([1]), 3).shape == (1, 3)
    with pytest.raises(ValueError, match=r"user 0 \(raw id 'ann'\).*every one of the 3 items"):
        s.sample(np.array([1, 0]), 2)


def test_sampler_rejects_bad_users() -> None:
    s = TrainingNegativeSampler(make_data(5, 30, 5), 0)
    with pytest.raises(ValueError, match="user id 5"):
        s.sample(np.array([0, 5]), 2)
    assert s.sample(np.array([], dtype=np.int64), 3).shape == (0, 3)


def test_training_negatives_include_held_out_items() -> None:
    """Held-out items are NOT excluded: they come up about as often as any other free item."""
    data = make_data(300, 60, 30, seed=2)
    split = leave_one_out_random(data, seed=0, eval_negatives=5)
    s = TrainingNegativeSampler(split.train, seed=1)
    n = 200
    test_users = split.test.users
    negs = s.sample(test_users, n)
    hits = (negs == split.test.items[:, None]).sum()
    # Each test user has 60 - 28 = 32 free items, one of them the test item: p = 1/32.
    expected = len(test_users) * n / 32
    assert hits > 0.8 * expected
    assert abs(hits - expected) < 6 * np.sqrt(expected)
    vhits = (s.sample(split.valid.users, n) == split.valid.items[:, None]).sum()
    assert vhits > 0.8 * expected


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 6))
def test_sampler_property_no_positive(seed: int, n: int) -> None:
    data = make_data(20, 25, 12, seed=seed % 1000)
    s = TrainingNegativeSampler(data, seed)
    negs = s.sample(data.users, n)
    csr = training_csr(data)
    assert not csr.contains(np.repeat(data.users[:, None], n, axis=1), negs).any()
