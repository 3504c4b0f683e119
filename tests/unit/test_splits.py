"""Implicit conversion, splits, evaluation negatives, the NCF file split and the split cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrec.config import DataConfig
from fedrec.data.errors import DataFormatError
from fedrec.data.implicit import deduplicate, to_implicit
from fedrec.data.sampling import user_item_csr
from fedrec.data.splits import (
    leave_one_out_random,
    leave_one_out_time,
    make_split,
    ncf_split,
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


# ------------------------------------------------------------------ NCF files


def ncf_fixture(tmp_path: Path) -> tuple[Interactions, Path, list[tuple[int, int]]]:
    """Raw ids with NCF numbering != internal numbering, plus matching NCF files."""
    rng = np.random.default_rng(9)
    n_users, n_items = 12, 150
    # Raw UserIDs 1..12 (NCF user = raw - 1), internal user ids reversed.
    user_ids = np.arange(n_users, 0, -1)
    item_ids = rng.permutation(np.arange(5000, 5000 + n_items))
    rows_u, rows_i = [], []
    for u in range(n_users):
        k = int(rng.integers(8, 20))
        rows_u += [u] * k
        rows_i += rng.choice(n_items, size=k, replace=False).tolist()
    perm = rng.permutation(len(rows_u))
    users = np.asarray(rows_u, dtype=np.int64)[perm]
    items = np.asarray(rows_i, dtype=np.int64)[perm]
    data = Interactions(
        "ml-1m", users, items, np.ones(len(users), np.float32), None, user_ids, item_ids
    )
    # NCF item id = order of first appearance (of the raw id) in row order.
    first: dict[int, int] = {}
    for it in items.tolist():
        first.setdefault(it, len(first))
    lines_r, lines_n, pairs = [], [], []
    for u in range(n_users):
        mine = items[users == u]
        test_item = int(mine[-1])
        ncf_u, ncf_i = int(user_ids[u]) - 1, first[test_item]
        pairs.append((u, test_item))
        lines_r.append(f"{ncf_u}\t{ncf_i}\t5\t97830{u}")
        never = [first[i] for i in first if i not in set(mine.tolist())]
        negs = rng.choice(never, size=9, replace=False).tolist()
        if u == 3:
            negs[4] = ncf_i  # like the published file: the target among its own negatives
        lines_n.append(f"({ncf_u},{ncf_i})\t" + "\t".join(map(str, negs)))
    d = tmp_path / "ncf"
    d.mkdir()
    (d / "ml-1m.test.rating").write_text("\n".join(lines_r) + "\n")
    (d / "ml-1m.test.negative").write_text("\n".join(reversed(lines_n)) + "\n")
    return data, d, pairs


def test_ncf_split_maps_ids_through_raw_ids(tmp_path: Path) -> None:
    data, d, pairs = ncf_fixture(tmp_path)
    split = ncf_split(data, d, seed=0)
    assert split.protocol == "ncf"
    assert pair_set(split.test.users, split.test.items) == set(pairs)
    assert split.test.negatives is not None and split.test.negatives.shape == (12, 9)
    assert split.valid.negatives is not None and split.valid.negatives.shape == (12, 9)
    assert len(split.valid) == 12
    assert len(split.train) == len(data) - 24
    assert split.info["ncf_test_negatives_equal_target"] == 1
    assert split.info["ncf_test_negatives_in_positives"] == 0
    assert split.info["ncf_item_ids_equal_internal"] is False
    # Only the deliberately planted target repeats a positive.
    everything = user_item_csr(data.users, data.items, data.n_users, data.n_items)
    u = np.repeat(split.test.users[:, None], 9, axis=1)
    hit = everything.contains(u, split.test.negatives)
    assert (
        hit.sum() == 1 and split.test.negatives[hit][0] == split.test.items[split.test.users == 3]
    )
    # Validation is disjoint from train and test; its negatives avoid every interaction.
    train = pair_set(split.train.users, split.train.items)
    assert not train & pair_set(split.valid.users, split.valid.items)
    uv = np.repeat(split.valid.users[:, None], 9, axis=1)
    assert not everything.contains(uv, split.valid.negatives).any()
    assert_same(split, ncf_split(data, d, seed=0))
    assert not np.array_equal(split.valid.items, ncf_split(data, d, seed=1).valid.items)


def _rewrite(path: Path, line_no: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_ncf_errors_name_file_and_line(tmp_path: Path) -> None:
    data, d, _ = ncf_fixture(tmp_path)
    rating = d / "ml-1m.test.rating"
    good = rating.read_text()
    _rewrite(rating, 3, "2\t5\t4")
    with pytest.raises(DataFormatError, match=r"ml-1m.test.rating, line 3: expected 4"):
        ncf_split(data, d, 0)
    rating.write_text(good)
    # A pair the user never rated.
    ncf_u = int(good.splitlines()[1].split("\t")[0])
    internal_u = int(np.flatnonzero(data.user_ids == ncf_u + 1)[0])
    first: dict[int, int] = {}
    for it in data.items.tolist():
        first.setdefault(it, len(first))
    owned = {first[i] for i in data.items[data.users == internal_u].tolist()}
    absent = min(set(range(len(first))) - owned)
    _rewrite(rating, 2, f"{ncf_u}\t{absent}\t5\t1")
    with pytest.raises(DataFormatError, match=r"line 2: test pair .* is not among the ratings"):
        ncf_split(data, d, 0)
    rating.write_text(good)
    negative = d / "ml-1m.test.negative"
    neg_good = negative.read_text()
    first_line = neg_good.splitlines()[0].split("\t")
    _rewrite(negative, 3, "\t".join(neg_good.splitlines()[2].split("\t")[:-1]))
    with pytest.raises(DataFormatError, match=r"line 3: 8 negatives, but line 1 has 9"):
        ncf_split(data, d, 0)
    negative.write_text(neg_good)
    _rewrite(negative, 2, "\t".join(["(x,1)", *first_line[1:]]))
    with pytest.raises(DataFormatError, match=r"line 2: first field '\(x,1\)'"):
        ncf_split(data, d, 0)
    negative.write_text(neg_good)
    line4 = neg_good.splitlines()[3].split("\t")
    _rewrite(negative, 4, "\t".join([line4[0], "99999", *line4[2:]]))
    with pytest.raises(DataFormatError, match=r"line 4: .*NCF item 99999 does not exist"):
        ncf_split(data, d, 0)
    negative.write_text(neg_good)
    _rewrite(negative, 4, "\t".join(first_line))
    with pytest.raises(DataFormatError, match=r"line 4: second line for pair .*first on line 1"):
        ncf_split(data, d, 0)
    negative.write_text("\n".join(neg_good.splitlines()[1:]) + "\n")
    with pytest.raises(DataFormatError, match=r"negative: no line for test pair"):
        ncf_split(data, d, 0)


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


def test_make_split_ncf_uses_located_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, d, _ = ncf_fixture(tmp_path)
    root = tmp_path / "data" / "ml-1m"
    root.mkdir(parents=True)
    d.rename(root / "ncf-leave-one-out")
    monkeypatch.setenv("FEDREC_SKIP_CHECKSUM", "1")  # synthetic files, not the published ones
    split = make_split(data, cfg(split="ncf"), seed=0, data_dir=tmp_path / "data")
    assert_same(split, ncf_split(data, root / "ncf-leave-one-out", 0))
    assert_same(split, make_split(data, cfg(split="ncf"), seed=0, data_dir=tmp_path / "data"))


def test_holdout_types() -> None:
    split = leave_one_out_random(make_data(seed=12), 0, eval_negatives=3)
    for h in (split.valid, split.test):
        assert isinstance(h, Holdout)
        assert h.users.dtype == np.int64 and h.items.dtype == np.int64
        assert h.ratings.dtype == np.float32
        assert h.negatives is not None and h.negatives.dtype == np.int64
