"""Implicit conversion, splits, evaluation negatives, the NCF file split and the split cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrec.config import DataConfig
from fedrec.data.implicit import deduplicate, to_implicit
from fedrec.data.sampling import user_item_csr
from fedrec.data.splits import (
    leave_one_out_random,
    leave_one_out_time,
    make_split,
    ratio_split,
    sample_eval_negatives,
    split_cache_dir,
)
from fedrec.data.table import Holdout, Interactions, Split


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh cache per test, so counting cache files is meaningful."""
    monkeypatch.setenv("FEDREC_CACHE_DIR", str(tmp_path / "cache"))


def make_data(
    n_users: int = 60,
    n_items: int = 200,
    seed: int = 0,
    timestamps: bool = True,
    min_len: int = 1,
    max_len: int = 40,
) -> Interactions:
    """Distinct items per user, coarse timestamps (so ties happen), ratings 1..5."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(min_len, max_len + 1, n_users)
    users = np.repeat(np.arange(n_users), lens).astype(np.int64)
    items = np.concatenate([rng.choice(n_items, size=n, replace=False) for n in lens])
    perm = rng.permutation(len(users))  # file order is not user order
    users, items = users[perm], items[perm].astype(np.int64)
    return Interactions(
        name="synthetic",
        users=users,
        items=items,
        ratings=rng.integers(1, 6, len(users)).astype(np.float32),
        timestamps=rng.integers(0, 20, len(users)).astype(np.int64) if timestamps else None,
        user_ids=np.array([f"u{i}" for i in range(n_users)]),
        item_ids=np.arange(1000, 1000 + n_items),
    )


def pair_set(users: np.ndarray, items: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(users.tolist(), items.tolist(), strict=True))


def assert_no_leakage(data: Interactions, split: Split) -> None:
    """Train, valid and test are disjoint and eval negatives avoid all interactions."""
    train = pair_set(split.train.users, split.train.items)
    valid = pair_set(split.valid.users, split.valid.items)
    test = pair_set(split.test.users, split.test.items)
    assert not train & valid
    assert not train & test
    assert not valid & test
    assert train | valid | test == pair_set(data.users, data.items)
    everything = user_item_csr(data.users, data.items, data.n_users, data.n_items)
    for h in (split.valid, split.test):
        assert h.negatives is not None
        u = np.repeat(h.users[:, None], h.negatives.shape[1], axis=1)
        assert not everything.contains(u, h.negatives).any()
        srt = np.sort(h.negatives, axis=1)
        assert (srt[:, 1:] != srt[:, :-1]).all(), "negatives repeat within a row"


def assert_same(a: Split, b: Split) -> None:
    for name in ("users", "items", "ratings"):
        assert np.array_equal(getattr(a.train, name), getattr(b.train, name))
    for ha, hb in ((a.valid, b.valid), (a.test, b.test)):
        for name in ("users", "items", "ratings", "negatives"):
            assert np.array_equal(getattr(ha, name), getattr(hb, name))
    assert a.protocol == b.protocol
    assert a.info == b.info


# ------------------------------------------------------------------ implicit


def test_to_implicit_threshold_keeps_id_space() -> None:
    data = make_data()
    imp = to_implicit(data, 4.0)
    assert len(imp) == int((data.ratings >= 4).sum())
    assert np.all(imp.ratings == 1.0)
    assert imp.n_users == data.n_users and imp.n_items == data.n_items
    assert np.array_equal(imp.item_ids, data.item_ids)
    keep = data.ratings >= 4
    assert np.array_equal(imp.users, data.users[keep])
    assert np.array_equal(imp.items, data.items[keep])
    assert len(to_implicit(data, None)) == len(data)
    with pytest.raises(ValueError, match="finite"):
        to_implicit(data, float("nan"))


def test_duplicates_collapse_to_the_latest_row() -> None:
    data = Interactions(
        "dups",
        users=np.array([0, 0, 1, 0, 1], dtype=np.int64),
        items=np.array([3, 3, 2, 1, 2], dtype=np.int64),
        ratings=np.array([1, 5, 2, 3, 4], dtype=np.float32),
        timestamps=np.array([50, 10, 7, 1, 7], dtype=np.int64),
        user_ids=np.array([0, 1]),
        item_ids=np.arange(4),
    )
    d = deduplicate(data)
    # (0,3): t=50 beats t=10; (1,2): equal times, the later row wins.
    assert d.ratings.tolist() == [1.0, 3.0, 4.0]
    assert d.timestamps is not None and d.timestamps.tolist() == [50, 1, 7]
    assert len(to_implicit(data, None)) == 3


# ------------------------------------------------------------------ leave-one-out


def test_loo_time_holds_out_latest_and_second_latest() -> None:
    data = make_data(seed=1)
    split = leave_one_out_time(data, seed=0, eval_negatives=20)
    assert split.protocol == "loo-time"
    assert data.timestamps is not None
    frame = pd.DataFrame({"u": data.users, "i": data.items, "t": data.timestamps})
    counts = frame.groupby("u").size()
    eligible = set(counts[counts >= 3].index.tolist())
    assert set(split.test.users.tolist()) == eligible
    assert set(split.valid.users.tolist()) == eligible
    assert split.info["users_without_holdout"] == data.n_users - len(eligible)
    assert np.all(np.diff(split.test.users) > 0), "hold-out must be in user order"
    ts = dict(zip(zip(frame.u, frame.i, strict=True), frame.t, strict=True))
    for u, i_test, i_valid in zip(
        split.test.users, split.test.items, split.valid.items, strict=True
    ):
        t_test, t_valid = ts[(u, i_test)], ts[(u, i_valid)]
        rest = frame[(frame.u == u) & ~frame.i.isin([i_test, i_valid])].t
        assert t_test == frame[frame.u == u].t.max()
        assert t_valid <= t_test
        assert (rest <= t_valid).all()
    assert_no_leakage(data, split)


def test_loo_time_ties_are_broken_by_the_seed() -> None:
    n = 30
    data = Interactions(
        "ties",
        users=np.zeros(n, dtype=np.int64),
        items=np.arange(n, dtype=np.int64),
        ratings=np.ones(n, dtype=np.float32),
        timestamps=np.array([0] * (n - 10) + [5] * 10, dtype=np.int64),
        user_ids=np.array([7]),
        item_ids=np.arange(n + 120),
    )
    picks = set()
    for seed in range(12):
        a = leave_one_out_time(data, seed, eval_negatives=5)
        b = leave_one_out_time(data, seed, eval_negatives=5)
        assert_same(a, b)
        assert a.test.items[0] >= n - 10 and a.valid.items[0] >= n - 10
        picks.add(int(a.test.items[0]))
    assert len(picks) > 3, "tie-breaking ignores the seed"


def test_loo_time_needs_timestamps() -> None:
    with pytest.raises(ValueError, match=r"no timestamps.*loo-random"):
        leave_one_out_time(make_data(timestamps=False), 0)


def test_loo_random_determinism_and_seed_dependence() -> None:
    data = make_data(timestamps=False, seed=3)
    a = leave_one_out_random(data, seed=5, eval_negatives=10)
    b = leave_one_out_random(data, seed=5, eval_negatives=10)
    c = leave_one_out_random(data, seed=6, eval_negatives=10)
    assert_same(a, b)
    assert not np.array_equal(a.test.items, c.test.items)
    assert c.valid.negatives is not None and a.valid.negatives is not None
    assert not np.array_equal(a.valid.negatives, c.valid.negatives)
    assert_no_leakage(data, a)
    assert a.protocol == "loo-random"


def test_small_users_stay_in_train() -> None:
    data = make_data(min_len=1, max_len=4, seed=4)
    split = leave_one_out_random(data, 0, eval_negatives=10)
    counts = np.bincount(data.users, minlength=data.n_users)
    small = np.flatnonzero(counts < 3)
    assert len(small) > 0
    assert not set(small.tolist()) & set(split.test.users.tolist())
    assert split.info["users_without_holdout"] == len(small)
    assert np.array_equal(
        np.bincount(split.train.users, minlength=data.n_users)[small], counts[small]
    )


# ------------------------------------------------------------------ evaluation negatives


def test_eval_negatives_uniform_and_disjoint_from_interactions() -> None:
    n_items = 30
    users = np.array([0] * 10 + [1] * 2, dtype=np.int64)
    items = np.array([*range(10), 0, 1], dtype=np.int64)
    csr = user_item_csr(users, items, 2, n_items)
    rng = np.random.default_rng(0)
    negs = sample_eval_negatives(csr, np.zeros(4000, dtype=np.int64), 10, rng)
    assert negs.min() >= 10
    assert (np.diff(negs, axis=1) > 0).all()
    counts = np.bincount(negs.ravel(), minlength=n_items)[10:]
    # 20 free items, each chosen with p = 10/20 per row: 2000 expected, sd ~ 32.
    assert np.all(np.abs(counts - 2000) < 170), counts
    hard = sample_eval_negatives(csr, np.ones(500, dtype=np.int64), 27, rng)  # pool 28
    assert (np.diff(hard, axis=1) > 0).all() and hard.min() >= 2


def test_eval_negatives_by_rejection_are_uniform_subsets() -> None:
    # Pool of 20 free items, 4 per row: filled by redrawing repeats (the fast path).
    csr = user_item_csr(np.zeros(10, dtype=np.int64), np.arange(10), 1, 30)
    negs = sample_eval_negatives(csr, np.zeros(6000, dtype=np.int64), 4, np.random.default_rng(1))
    assert negs.min() >= 10 and (np.diff(negs, axis=1) > 0).all()
    counts = np.bincount(negs.ravel(), minlength=30)[10:]
    # p = 4/20 per row: 1200 expected per item, sd ~ 31.
    assert np.all(np.abs(counts - 1200) < 160), counts
    # Pairs too: each of the 190 pairs appears in 6000 * (4*3)/(20*19) ~ 189.5 rows.
    a, b = np.triu_indices(4, 1)
    pair_ids = (negs[:, a] - 10) * 20 + (negs[:, b] - 10)
    pc = np.bincount(pair_ids.ravel(), minlength=400)
    pc = pc[pc > 0]
    assert len(pc) == 190 and np.all(np.abs(pc - 189.5) < 75), pc


def test_too_few_candidate_negatives_names_the_user() -> None:
    users = np.array([0] * 8, dtype=np.int64)
    csr = user_item_csr(users, np.arange(8), 1, 10)
    with pytest.raises(
        ValueError,
        match=r"user 0 \(raw id 'zoe'\) has only 2 items without a recorded interaction, "
        r"fewer than the 3 .*eval_negatives",
    ):
        sample_eval_negatives(csr, np.array([0]), 3, np.random.default_rng(0), np.array(["zoe"]))


# ------------------------------------------------------------------ ratio


def test_ratio_split_counts_and_time_order() -> None:
    data = make_data(seed=5, min_len=1, max_len=30)
    split = ratio_split(data, seed=1, test_ratio=0.2, valid_ratio=0.1, eval_negatives=15)
    assert split.protocol == "ratio" and split.info["order"] == "time"
    n = np.bincount(data.users, minlength=data.n_users)
    n_test = np.bincount(split.test.users, minlength=data.n_users)
    n_valid = np.bincount(split.valid.users, minlength=data.n_users)
    n_train = np.bincount(split.train.users, minlength=data.n_users)
    exp_test = np.minimum(np.floor(0.2 * n + 0.5), np.maximum(n - 1, 0))
    assert np.array_equal(n_test, exp_test)
    assert np.all(n_train >= 1)
    assert np.array_equal(n_train + n_valid + n_test, n)
    assert data.timestamps is not None
    ts = {
        p: t for p, t in zip(zip(data.users, data.items, strict=True), data.timestamps, strict=True)
    }
    train_t = (
        pd.Series([ts[p] for p in zip(split.train.users, split.train.items, strict=True)])
        .groupby(split.train.users)
        .max()
    )
    for u, i in zip(split.test.users, split.test.items, strict=True):
        assert ts[(u, i)] >= train_t[u]
    assert_no_leakage(data, split)


def test_ratio_split_without_timestamps_is_random_and_seeded() -> None:
    data = make_data(timestamps=False, seed=6)
    a = ratio_split(data, 3, eval_negatives=5)
    assert a.info["order"] == "random"
    assert_same(a, ratio_split(data, 3, eval_negatives=5))
    assert not np.array_equal(a.test.items, ratio_split(data, 4, eval_negatives=5).test.items)
    with pytest.raises(ValueError, match="test_ratio"):
        ratio_split(data, 0, test_ratio=0.7, valid_ratio=0.4)


# ------------------------------------------------------------------ make_split + cache


def cfg(**kw: object) -> DataConfig:
    return DataConfig.model_validate({"name": "ml-100k", **kw})


def test_make_split_dispatches_and_caches(tmp_path: Path) -> None:
    data = make_data(seed=7)
    c = cfg(split="loo-time", eval_negatives=12)
    first = make_split(data, c, seed=2)
    files = list(split_cache_dir().glob("synthetic-loo-time-*.npz"))
    assert len(files) == 1
    assert str(split_cache_dir()).startswith(os.environ["FEDREC_CACHE_DIR"])
    mtime = files[0].stat().st_mtime_ns
    second = make_split(data, c, seed=2)
    assert files[0].stat().st_mtime_ns == mtime, "a valid cache file was rewritten"
    assert_same(first, second)
    assert_same(first, leave_one_out_time(data, 2, eval_negatives=12))
    # Another seed is another cache entry and another split.
    other = make_split(data, c, seed=3)
    assert len(list(split_cache_dir().glob("synthetic-loo-time-*.npz"))) == 2
    assert not np.array_equal(first.valid.negatives, other.valid.negatives)  # type: ignore[arg-type]
    assert_same(
        make_split(data, cfg(split="ratio", test_ratio=0.3, valid_ratio=0.2, eval_negatives=4), 1),
        ratio_split(data, 1, 0.3, 0.2, 4),
    )
    assert_same(make_split(data, cfg(split="loo-random"), 1), leave_one_out_random(data, 1))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong-key"])
def test_corrupt_cache_is_ignored_and_rewritten(damage: str) -> None:
    data = make_data(seed=8)
    c = cfg(split="loo-random", eval_negatives=7)
    fresh = make_split(data, c, seed=11)
    (path,) = split_cache_dir().glob("synthetic-loo-random-*.npz")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file at all")
    else:
        # A well-formed file for a different split under this name.
        other = make_split(data, c, seed=12)
        (p2,) = [p for p in split_cache_dir().glob("synthetic-loo-random-*.npz") if p != path]
        path.write_bytes(p2.read_bytes())
        assert not np.array_equal(other.test.items, fresh.test.items)
    again = make_split(data, c, seed=11)
    assert_same(fresh, again)
    assert_same(fresh, make_split(data, c, seed=11))  # the rewritten file loads


def test_make_split_cache_key_covers_data_content() -> None:
    data = make_data(seed=8)
    c = cfg(split="loo-random", eval_negatives=7)
    a = make_split(data, c, seed=0)
    changed = Interactions(
        data.name,
        data.users,
        data.items,
        data.ratings * 0 + 1,
        data.timestamps,
        data.user_ids,
        data.item_ids,
    )
    b = make_split(changed, c, seed=0)
    assert np.all(b.test.ratings == 1.0) and not np.all(a.test.ratings == 1.0)


def test_holdout_types() -> None:
    split = leave_one_out_random(make_data(seed=12), 0, eval_negatives=3)
    for h in (split.valid, split.test):
        assert isinstance(h, Holdout)
        assert h.users.dtype == np.int64 and h.items.dtype == np.int64
        assert h.ratings.dtype == np.float32
        assert h.negatives is not None and h.negatives.dtype == np.int64
