"""The NCF (He et al. 2017) ML-1M split on the real files: sizes, id mapping, no leakage."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrec.config import DataConfig
from fedrec.data.fetch import locate
from fedrec.data.implicit import to_implicit
from fedrec.data.loaders import load_dataset
from fedrec.data.sampling import TrainingNegativeSampler, user_item_csr
from fedrec.data.splits import make_split, ncf_split
from fedrec.data.table import FloatArray, IntArray
from fedrec.eval import evaluate

pytestmark = pytest.mark.realdata

N_RATINGS = 1_000_209
N_USERS = 6_040


def test_ncf_split_on_ml1m(data_dir: Path) -> None:
    data = to_implicit(load_dataset("ml-1m", data_dir), None)
    assert len(data) == N_RATINGS
    ncf_dir = locate("ml-1m-ncf", data_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # negatives hitting OTHER positives would warn
        split = ncf_split(data, ncf_dir, seed=0)

    assert len(split.test) == N_USERS and len(split.valid) == N_USERS
    assert split.test.negatives is not None and split.test.negatives.shape == (N_USERS, 99)
    assert split.valid.negatives is not None and split.valid.negatives.shape == (N_USERS, 99)
    # Test removed from the ratings gives NCF's train (1,000,209 - 6,040); our validation
    # row per user comes out of it, so train itself is 6,040 rows smaller again.
    assert len(split.train) + len(split.valid) == N_RATINGS - N_USERS
    assert len(split.train) == N_RATINGS - 2 * N_USERS
    assert np.array_equal(np.sort(split.test.users), np.arange(N_USERS))

    # The file's first line is "0\t25\t5\t978824351": UserID 1, NCF item 25.
    first = (ncf_dir / "ml-1m.test.rating").read_text().splitlines()[0].split("\t")
    u0 = int(np.flatnonzero(data.user_ids == int(first[0]) + 1)[0])
    first_seen = pd.unique(pd.Series(data.items)).astype(np.int64)  # order of appearance
    assert split.test.items[split.test.users == u0][0] == first_seen[int(first[1])]

    # No leakage: train, valid and test pairs are disjoint; all pairs are accounted for.
    def keys(users: IntArray, items: IntArray) -> IntArray:
        out: IntArray = users.astype(np.int64) * data.n_items + items
        return out

    k_train = keys(split.train.users, split.train.items)
    k_valid = keys(split.valid.users, split.valid.items)
    k_test = keys(split.test.users, split.test.items)
    assert len(np.unique(np.concatenate([k_train, k_valid, k_test]))) == N_RATINGS

    # Negatives never hold a positive, except the 156 published lines whose own test item
    # is among its negatives (which the sampled evaluation ignores).
    everything = user_item_csr(data.users, data.items, data.n_users, data.n_items)
    u_rep = np.repeat(split.test.users[:, None], 99, axis=1)
    hit = everything.contains(u_rep, split.test.negatives)
    assert np.array_equal(hit, split.test.negatives == split.test.items[:, None])
    assert int(hit.sum()) == split.info["ncf_test_negatives_equal_target"] == 156
    assert split.info["ncf_test_negatives_in_positives"] == 0
    v_rep = np.repeat(split.valid.users[:, None], 99, axis=1)
    assert not everything.contains(v_rep, split.valid.negatives).any()

    # Training negatives may be held-out items (they are unknown to training).
    sampler = TrainingNegativeSampler(split.train, seed=0)
    negs = sampler.sample(split.train.users, 4)
    train_csr = user_item_csr(split.train.users, split.train.items, data.n_users, data.n_items)
    assert not train_csr.contains(np.repeat(split.train.users[:, None], 4, axis=1), negs).any()

    # Popularity reproduces the NCF paper's ItemPop HR@10 (0.454) on this test set.
    pop = np.bincount(split.train.items, minlength=data.n_items).astype(np.float32)

    class Popularity:
        def score_candidates(self, users: IntArray, items: IntArray) -> FloatArray:
            out: FloatArray = pop[items]
            return out

        def score_all(self, users: IntArray) -> FloatArray:
            return np.tile(pop, (len(users), 1))

    result = evaluate(Popularity(), split, "test", "sampled", [10])
    assert result.n_users == N_USERS
    assert result.metrics["HR@10"] == pytest.approx(0.453, abs=0.01)


def test_make_split_ncf_is_cached_and_identical(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDREC_CACHE_DIR", str(tmp_path))  # cold cache for this test
    data = to_implicit(load_dataset("ml-1m", data_dir), None)
    cfg = DataConfig(name="ml-1m", split="ncf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = ncf_split(data, locate("ml-1m-ncf", data_dir), seed=0)
    cold = make_split(data, cfg, seed=0, data_dir=data_dir)
    assert len(list((tmp_path / "splits").glob("ml-1m-ncf-*.npz"))) == 1
    warm = make_split(data, cfg, seed=0, data_dir=data_dir)
    for s in (cold, warm):
        assert s.info == direct.info and s.protocol == "ncf"
        assert np.array_equal(s.train.users, direct.train.users)
        assert np.array_equal(s.train.items, direct.train.items)
        for a, b in ((s.valid, direct.valid), (s.test, direct.test)):
            assert np.array_equal(a.users, b.users) and np.array_equal(a.items, b.items)
            assert a.negatives is not None and b.negatives is not None
            assert np.array_equal(a.negatives, b.negatives)
