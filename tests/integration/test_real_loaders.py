"""The real data sets load with exactly the counts in SOURCES.md and pass SHA-256 checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrec.data.fetch import verify
from fedrec.data.info import describe
from fedrec.data.loaders import (
    load_dataset,
    load_filmtrust_trust,
    load_lastfm_friends,
    load_ncf_ml1m_test,
)
from fedrec.data.table import Interactions

pytestmark = pytest.mark.realdata


@pytest.fixture(autouse=True)
def _checksums_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDREC_SKIP_CHECKSUM", raising=False)


def _histogram(data: Interactions) -> dict[float, int]:
    values, counts = np.unique(data.ratings, return_counts=True)
    return {float(v): int(c) for v, c in zip(values, counts, strict=True)}


def _counts(data: Interactions) -> tuple[int, int, int]:
    assert len(np.unique(data.users)) == data.n_users  # every id is used
    assert len(np.unique(data.items)) == data.n_items
    return len(data), data.n_users, data.n_items


@pytest.mark.parametrize(
    "name", ["ml-100k", "ml-1m", "ml-latest-small", "lastfm-2k", "filmtrust", "ml-1m-ncf"]
)
def test_sha256_of_every_known_file(data_dir: Path, name: str) -> None:
    report = verify(name, data_dir, download=False)
    assert "ok" in report.values()
    assert set(report.values()) <= {"ok", "no hash", "missing"}


def test_ml100k(data_dir: Path) -> None:
    data = load_dataset("ml-100k", data_dir, download=False)
    assert _counts(data) == (100_000, 943, 1_682)
    assert _histogram(data) == {1: 6_110, 2: 11_370, 3: 27_145, 4: 34_174, 5: 21_201}
    assert data.timestamps is not None and data.timestamps.min() > 8e8
    uf, itf = data.user_features, data.item_features
    assert uf is not None and len(uf) == 943 and not uf.isna().any().any()
    assert itf is not None and len(itf) == 1_682 and itf["title"].notna().all()
    star_wars = itf.index[itf["title"] == "Star Wars (1977)"][0]
    assert itf.loc[star_wars, "year"] == 1977 and itf.loc[star_wars, "genre:Sci-Fi"]
    assert any("é" in t for t in itf["title"])  # Latin-1 decoded, not mojibake


def test_ml1m(data_dir: Path) -> None:
    data = load_dataset("ml-1m", data_dir, download=False)
    assert _counts(data) == (1_000_209, 6_040, 3_706)
    assert _histogram(data) == {1: 56_174, 2: 107_557, 3: 261_197, 4: 348_971, 5: 226_310}
    has_dat = (data_dir / "ml-1m" / "ratings.dat").is_file()
    assert (data.timestamps is not None) == has_dat
    # File order is kept: first rows of ratings.dat, users sorted 1..6040.
    assert data.user_ids[data.users[:2]].tolist() == [1, 1]
    assert data.item_ids[data.items[:2]].tolist() == [1193, 661]
    assert data.user_ids.tolist() == list(range(1, 6_041))
    uf, itf = data.user_features, data.item_features
    assert uf is not None and len(uf) == 6_040 and not uf.isna().any().any()
    assert set(uf["age"]) == {1, 18, 25, 35, 45, 50, 56}
    assert itf is not None and len(itf) == 3_706 and itf["title"].notna().all()
    assert itf["year"].notna().all()
    assert describe(data)["per_user"]["min"] == 20


def test_ncf_files_agree_with_ml1m(data_dir: Path) -> None:
    """NCF ids are our internal ML-1M ids; held-out ratings match; negatives are unrated."""
    data = load_dataset("ml-1m", data_dir, download=False)
    ncf = load_ncf_ml1m_test(data_dir, download=False)
    assert len(ncf) == 6_040 and ncf.negatives.shape == (6_040, 99)
    assert ncf.users.tolist() == list(range(6_040))
    assert ncf.negatives.max() < data.n_items and ncf.items.max() < data.n_items
    keys = data.users * data.n_items + data.items
    order = np.argsort(keys)
    test_keys = ncf.users * data.n_items + ncf.items
    pos = np.searchsorted(keys[order], test_keys)
    assert (keys[order][pos] == test_keys).all()
    assert (data.ratings[order][pos] == ncf.ratings).all()
    # Negatives are never items the user rated, except a known quirk of the published
    # file: in 156 rows the held-out item itself is among its own 99 "negatives".
    neg_keys = ncf.users[:, None] * data.n_items + ncf.negatives
    is_self = ncf.negatives == ncf.items[:, None]
    assert not np.isin(neg_keys[~is_self], keys).any()
    assert int(is_self.any(axis=1).sum()) == 156 and int(is_self.sum()) == 156


def test_ml_latest_small(data_dir: Path) -> None:
    data = load_dataset("ml-latest-small", data_dir, download=False)
    assert _counts(data) == (100_836, 610, 9_724)
    assert float(data.ratings.min()) == 0.5 and float(data.ratings.max()) == 5.0
    assert len(_histogram(data)) == 10
    assert data.timestamps is not None
    assert (int(data.timestamps.min()), int(data.timestamps.max())) == (828124615, 1537799250)
    itf = data.item_features
    assert itf is not None and len(itf) == 9_724 and itf["title"].notna().all()


def test_lastfm(data_dir: Path) -> None:
    data = load_dataset("lastfm-2k", data_dir, download=False)
    assert _counts(data) == (92_834, 1_892, 17_632)
    assert int(data.ratings.astype(np.int64).sum()) == 69_183_975
    assert (float(data.ratings.min()), float(data.ratings.max())) == (1.0, 352_698.0)
    assert data.timestamps is None
    itf = data.item_features
    assert itf is not None and itf["title"].notna().all()
    friends = load_lastfm_friends(data_dir, download=False, data=data)
    assert len(friends) == 25_434 and friends.max().max() < 1_892


def test_filmtrust(data_dir: Path) -> None:
    data = load_dataset("filmtrust", data_dir, download=False)
    assert _counts(data) == (35_497, 1_508, 2_071)
    assert _histogram(data) == {
        0.5: 1_060, 1.0: 1_141, 1.5: 1_601, 2.0: 3_113,
        2.5: 4_392, 3.0: 7_877, 3.5: 7_142, 4.0: 9_171,
    }  # fmt: skip
    trust = load_filmtrust_trust(data_dir, download=False)
    assert len(trust) == 1_853 and (trust["value"] == 1).all()
