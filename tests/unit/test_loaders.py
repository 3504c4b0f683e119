"""Loaders on tiny synthetic files: parsing, id maps, features and precise error messages."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedrec.data.errors import ChecksumError, DataError, DataFormatError
from fedrec.data.info import describe
from fedrec.data.loaders import (
    load_dataset,
    load_filmtrust,
    load_filmtrust_trust,
    load_lastfm_2k,
    load_lastfm_friends,
    load_ml1m,
    load_ml100k,
    load_ml_latest_small,
    load_table,
)


@pytest.fixture(autouse=True)
def _no_checksums(monkeypatch: pytest.MonkeyPatch) -> None:
    """Synthetic files cannot match the published hashes; one test re-enables them."""
    monkeypatch.setenv("FEDREC_SKIP_CHECKSUM", "1")
    monkeypatch.delenv("FEDREC_DATA_DIR", raising=False)


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def _flags(*on: int, n: int = 19) -> str:
    return "|".join("1" if j in on else "0" for j in range(n))


@pytest.fixture
def ml100k(tmp_path: Path) -> Path:
    d = tmp_path / "ml-100k"
    _write(d / "u.data", "7\t50\t5\t881250949\n3\t20\t3\t891717742\n7\t20\t4\t878887116\n")
    _write(d / "u.user", "3|24|M|technician|85711\n7|53|F|other|T8H1N\n99|30|M|writer|1\n")
    genres = "unknown|0\nAction|1\nAdventure|2\nAnimation|3\nChildren's|4\nComedy|5\n"
    genres += "Crime|6\nDocumentary|7\nDrama|8\nFantasy|9\nFilm-Noir|10\nHorror|11\n"
    genres += "Musical|12\nMystery|13\nRomance|14\nSci-Fi|15\nThriller|16\nWar|17\nWestern|18\n\n"
    _write(d / "u.genre", genres)
    _write(
        d / "u.item",
        f"20|Café (1995)|01-Jan-1995||http://x|{_flags(1, 5)}\n"
        f"50|unknown||||{_flags(0)}\n"
        f"60|Other (1990)|01-Jan-1990||http://y|{_flags(8)}\n",
        encoding="latin-1",
    )
    return tmp_path


def test_ml100k_ids_rows_and_features(ml100k: Path) -> None:
    data = load_ml100k(ml100k)
    assert data.name == "ml-100k"
    assert data.users.tolist() == [0, 1, 0]  # first appearance: 7 -> 0, 3 -> 1
    assert data.items.tolist() == [0, 1, 1]
    assert data.user_ids.tolist() == [7, 3]
    assert data.item_ids.tolist() == [50, 20]
    assert data.ratings.dtype == np.float32 and data.ratings.tolist() == [5, 3, 4]
    assert data.timestamps is not None and data.timestamps.tolist()[0] == 881250949
    uf = data.user_features
    assert uf is not None and list(uf.index) == [0, 1]  # user 99 has no rating: excluded
    assert list(uf.columns) == ["age", "gender", "occupation", "zip"]
    assert uf.loc[0, "zip"] == "T8H1N" and uf.loc[1, "occupation"] == "technician"
    itf = data.item_features
    assert itf is not None and list(itf.index) == [0, 1]
    assert itf.loc[1, "title"] == "Café (1995)"  # Latin-1 decoded
    assert itf.loc[1, "year"] == 1995 and bool(itf["year"].isna().iloc[0])
    assert "genre:unknown" not in itf.columns and len(itf.columns) == 2 + 18
    assert itf.loc[1, "genre:Action"] and itf.loc[1, "genre:Comedy"]
    assert not itf.loc[0, [c for c in itf.columns if c.startswith("genre:")]].any()


def test_ml100k_without_side_files_has_no_features(tmp_path: Path) -> None:
    _write(tmp_path / "ml-100k" / "u.data", "1\t2\t3\t4\n")
    data = load_ml100k(tmp_path)
    assert data.user_features is None and data.item_features is None
    assert len(data) == 1


def test_item_missing_from_catalogue_gets_nan_title_and_no_genres(ml100k: Path) -> None:
    _write(ml100k / "ml-100k" / "u.data", "7\t999\t5\t1\n")
    itf = load_ml100k(ml100k).item_features
    assert itf is not None and bool(itf["title"].isna().iloc[0])
    assert itf["genre:Action"].dtype == bool and not bool(itf["genre:Action"].iloc[0])


@pytest.mark.parametrize(
    ("content", "line", "words"),
    [
        ("1\t2\t3\t4\n1\t2\t3\n", 2, "expected 4 tab-separated fields, found 3"),
        ("1\t2\t3\t4\n1\t2\t3\t4\t5\n", 2, "found 5"),
        ("1\t2\t3\t4\n\n5\tx\t3\t4\n", 3, "item id: expected an integer, found 'x'"),
        ("1\t2\tgood\t4\n", 1, "rating: expected a number"),
        ("1\t2\t3\t4.5\n", 1, "timestamp: expected an integer"),
        ("1\t2\t\t4\n", 1, "rating"),
        ("", 1, "no data rows"),
        ("\n\n", 3, "no data rows"),
    ],
)
def test_malformed_ratings_name_file_and_line(
    tmp_path: Path, content: str, line: int, words: str
) -> None:
    path = _write(tmp_path / "ml-100k" / "u.data", content)
    with pytest.raises(DataFormatError) as info:
        load_ml100k(tmp_path)
    assert info.value.path == path and info.value.line == line
    assert words in str(info.value)
    assert f"{path}, line {line}" in str(info.value)


def test_duplicate_profile_row_is_an_error(ml100k: Path) -> None:
    _write(ml100k / "ml-100k" / "u.user", "3|24|M|a|1\n7|53|F|b|2\n3|30|M|c|3\n")
    with pytest.raises(DataFormatError, match=r"line 3: user id 3 is listed twice"):
        load_ml100k(ml100k)


def test_bad_genre_flag_names_line(ml100k: Path) -> None:
    _write(ml100k / "ml-100k" / "u.item", f"20|A (1995)|||x|{_flags(1)}\n50|B|||x|{'2|' * 18}0\n")
    with pytest.raises(DataFormatError, match=r"u.item, line 2: genre flags must be 0 or 1"):
        load_ml100k(ml100k)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(min_value=1, max_value=400),
    bad_at=st.integers(min_value=0, max_value=399),
    bad=st.sampled_from(["1\t2\t3", "a\t2\t3\t4", "1\t2\t3\t4\t5", "1\t2\tnan\t4", "1\t\t3\t4"]),
)
def test_fast_parser_always_reports_the_bad_line(
    tmp_path_factory: pytest.TempPathFactory, n: int, bad_at: int, bad: str
) -> None:
    """Whatever row is malformed, the C-parser path and the line scan agree on where."""
    root = tmp_path_factory.mktemp("fuzz")
    rows = [f"{i % 7 + 1}\t{i % 11 + 1}\t{i % 5 + 1}\t{1000 + i}" for i in range(n)]
    k = bad_at % n
    rows[k] = bad
    _write(root / "ml-100k" / "u.data", "\n".join(rows) + "\n")
    with pytest.raises(DataFormatError) as info:
        load_ml100k(root)
    assert info.value.line == k + 1


# --------------------------------------------------------------------------- ML-1M


@pytest.fixture
def ml1m(tmp_path: Path) -> Path:
    d = tmp_path / "ml-1m"
    _write(
        d / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
    )
    _write(d / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    _write(
        d / "movies.dat",
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "1193::Star Wars: Episode IV - A New Hope (1977)::Action|Sci-Fi\n",
        encoding="latin-1",
    )
    return tmp_path


def test_ml1m_with_timestamps_and_features(ml1m: Path) -> None:
    data = load_ml1m(ml1m)
    assert data.users.tolist() == [0, 0, 1] and data.items.tolist() == [0, 1, 0]
    assert data.item_ids.tolist() == [1193, 661]
    assert data.timestamps is not None and data.timestamps.tolist()[2] == 978298413
    uf = data.user_features
    assert uf is not None
    assert uf.loc[0, "occupation"] == "K-12 student" and uf.loc[1, "age"] == 56
    itf = data.item_features
    assert itf is not None
    assert itf.loc[0, "title"] == "Star Wars: Episode IV - A New Hope (1977)"
    assert itf.loc[0, "year"] == 1977 and itf.loc[0, "genre:Sci-Fi"]
    assert not itf.loc[0, "genre:Musical"] and itf.loc[1, "genre:Musical"]


def test_ml1m_falls_back_to_gzip_without_timestamps(ml1m: Path) -> None:
    d = ml1m / "ml-1m"
    (d / "ratings.dat").unlink()
    with gzip.open(d / "ratings.no-timestamp.dat.gz", "wt") as fh:
        fh.write("1::1193::5\n1::661::3\n")
    data = load_ml1m(ml1m)
    assert data.timestamps is None and data.ratings.tolist() == [5, 3]


def test_ml1m_prefers_ratings_dat_over_gzip(ml1m: Path) -> None:
    with gzip.open(ml1m / "ml-1m" / "ratings.no-timestamp.dat.gz", "wt") as fh:
        fh.write("9::9::1\n")
    assert load_ml1m(ml1m).timestamps is not None


def test_ml1m_truncated_gzip_names_the_line(tmp_path: Path) -> None:
    d = tmp_path / "ml-1m"
    d.mkdir()
    body = "".join(f"{u}::{u * 3}::{u % 5 + 1}\n" for u in range(1, 20001)).encode()
    blob = gzip.compress(body)
    (d / "ratings.no-timestamp.dat.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataFormatError, match="truncated or corrupt") as info:
        load_ml1m(tmp_path)
    assert info.value.line is not None and 1 < info.value.line < 20001


@pytest.mark.parametrize(
    ("line2", "words"),
    [
        ("1:661::3::978302109", "expected 4 '::'-separated fields, found 3"),
        ("1::661::3::97830:2109", "expected 4 '::'-separated fields, found 4"),
        ("1::661::x::978302109", "Rating: expected a number"),
    ],
)
def test_ml1m_separator_errors(ml1m: Path, line2: str, words: str) -> None:
    _write(ml1m / "ml-1m" / "ratings.dat", f"1::1193::5::978300760\n{line2}\n")
    with pytest.raises(DataFormatError) as info:
        load_ml1m(ml1m)
    assert info.value.line == 2
    if "found 4" in words:  # single ':' inside a field: the scan sees a bad Timestamp
        assert "Timestamp" in str(info.value)
    else:
        assert words in str(info.value)


def test_ml1m_unknown_occupation(ml1m: Path) -> None:
    _write(ml1m / "ml-1m" / "users.dat", "1::F::1::10::48067\n2::M::56::25::70072\n")
    with pytest.raises(DataFormatError, match=r"users.dat, line 2: Occupation code 25"):
        load_ml1m(ml1m)


# ------------------------------------------------------------------ ml-latest-small


@pytest.fixture
def mls(tmp_path: Path) -> Path:
    d = tmp_path / "ml-latest-small"
    _write(
        d / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,10,4.0,964982703\n2,20,0.5,964981247\n",
    )
    _write(
        d / "movies.csv",
        'movieId,title,genres\n10,"American President, The (1995)",Comedy|Drama|Romance\n'
        "20,Babylon 5,(no genres listed)\n",
    )
    return tmp_path


def test_ml_latest_small(mls: Path) -> None:
    data = load_ml_latest_small(mls)
    assert data.ratings.tolist() == [4.0, 0.5] and data.user_features is None
    itf = data.item_features
    assert itf is not None
    assert itf.loc[0, "title"] == "American President, The (1995)" and itf.loc[0, "year"] == 1995
    assert bool(itf["year"].isna().iloc[1])
    assert "genre:(no genres listed)" not in itf.columns
    assert not itf.loc[1, ["genre:Comedy", "genre:Drama", "genre:Romance"]].any()


def test_ml_latest_small_wrong_header(mls: Path) -> None:
    _write(mls / "ml-latest-small" / "ratings.csv", "user,movie,rating,ts\n1,10,4.0,1\n")
    with pytest.raises(DataFormatError, match=r"ratings.csv, line 1: expected header"):
        load_ml_latest_small(mls)


def test_ml_latest_small_header_only(mls: Path) -> None:
    _write(mls / "ml-latest-small" / "ratings.csv", "userId,movieId,rating,timestamp\n")
    with pytest.raises(DataFormatError, match="line 2: no data rows after the header"):
        load_ml_latest_small(mls)


# ------------------------------------------------------------------ Last.fm, FilmTrust


@pytest.fixture
def lastfm(tmp_path: Path) -> Path:
    d = tmp_path / "hetrec2011-lastfm-2k"
    # CRLF, header, no newline after the last line: as published.
    (d).mkdir()
    (d / "user_artists.dat").write_bytes(
        b"userID\tartistID\tweight\r\n2\t51\t13883\r\n2\t52\t11690\r\n4\t51\t352698"
    )
    _write(
        d / "artists.dat",
        'id\tname\turl\tpictureURL\n51\t"Weird Al" Yankovic\thttp://a\t\n52\tBjörk\thttp://b\thttp://c\n',
    )
    _write(d / "user_friends.dat", "userID\tfriendID\n2\t4\n4\t2\n2\t9\n")
    return tmp_path


def test_lastfm(lastfm: Path) -> None:
    data = load_lastfm_2k(lastfm)
    assert len(data) == 3 and data.timestamps is None
    assert data.ratings.tolist() == [13883, 11690, 352698]
    assert data.user_ids.tolist() == [2, 4] and data.item_ids.tolist() == [51, 52]
    itf = data.item_features
    assert itf is not None and itf["title"].tolist() == ['"Weird Al" Yankovic', "Björk"]


def test_lastfm_friends_raw_and_mapped(lastfm: Path) -> None:
    raw = load_lastfm_friends(lastfm)
    assert raw.values.tolist() == [[2, 4], [4, 2], [2, 9]]
    mapped = load_lastfm_friends(lastfm, data=load_lastfm_2k(lastfm))
    assert mapped.values.tolist() == [[0, 1], [1, 0]]  # user 9 has no plays: dropped


@pytest.fixture
def filmtrust(tmp_path: Path) -> Path:
    d = tmp_path / "filmtrust"
    _write(d / "ratings.txt", "1 1 2\n1 2 4\n5 1 3.5\n")
    _write(d / "trust.txt", "1 5 1\n5 77 1\n")
    return tmp_path


def test_filmtrust_and_trust(filmtrust: Path) -> None:
    data = load_filmtrust(filmtrust)
    assert data.ratings.tolist() == [2.0, 4.0, 3.5] and data.user_ids.tolist() == [1, 5]
    assert data.user_features is None and data.item_features is None
    trust = load_filmtrust_trust(filmtrust)
    assert list(trust.columns) == ["truster", "trustee", "value"] and len(trust) == 2
    mapped = load_filmtrust_trust(filmtrust, data=data)
    assert mapped[["truster", "trustee"]].values.tolist() == [[0, 1]]


def test_filmtrust_bad_line(filmtrust: Path) -> None:
    _write(filmtrust / "filmtrust" / "ratings.txt", "1 1 2\n1 2 4 9\n")
    with pytest.raises(DataFormatError, match="line 2: expected 3 whitespace-separated"):
        load_filmtrust(filmtrust)


# --------------------------------------------------------------------- registry, hashes


def test_load_dataset_dispatches_and_rejects_unknown(filmtrust: Path) -> None:
    assert load_dataset("filmtrust", filmtrust).name == "filmtrust"
    with pytest.raises(DataError, match=r"unknown data set 'ml-20m'.*ml-100k.*filmtrust"):
        load_dataset("ml-20m", filmtrust)
    with pytest.raises(DataError, match="resource"):
        load_dataset("ml-1m-ncf", filmtrust)


def test_altered_file_fails_checksum_unless_skipped(
    filmtrust: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEDREC_SKIP_CHECKSUM")
    with pytest.raises(ChecksumError, match=r"ratings\.txt: SHA-256 is .* expected 24116742"):
        load_filmtrust(filmtrust)
    monkeypatch.setenv("FEDREC_SKIP_CHECKSUM", "1")
    assert len(load_filmtrust(filmtrust)) == 3


def test_describe(ml100k: Path) -> None:
    info = describe(load_ml100k(ml100k))
    assert (info["users"], info["items"], info["interactions"]) == (2, 2, 3)
    assert info["density"] == pytest.approx(0.75)
    assert (info["rating_min"], info["rating_max"], info["rating_values"]) == (3.0, 5.0, 3)
    assert info["has_timestamps"] and info["time_min"] == 878887116
    assert info["per_user"]["min"] == 1 and info["per_user"]["max"] == 2
    assert info["per_user"]["mean"] == pytest.approx(1.5)
    assert info["duplicates"] == 0 and "age" in info["user_features"]


def test_describe_counts_duplicates_and_empty_users(filmtrust: Path) -> None:
    _write(filmtrust / "filmtrust" / "ratings.txt", "1 1 2\n1 1 4\n2 3 1\n")
    data = load_filmtrust(filmtrust)
    info = describe(data.subset(np.array([True, True, False])))
    assert info["duplicates"] == 1 and info["per_user"]["min"] == 0
    assert info["has_timestamps"] is False and info["time_min"] is None


# ------------------------------------------------------------------------ load_table


def test_load_table_csv_with_features(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "log.csv",
        "uid,iid,score,when,city,price\n"
        "alice,7,4.5,1000,Paris,9.5\nbob,007,3,1001,Oslo,2\nalice,8,1,1002,Paris,3\n",
    )
    data = load_table(
        path,
        user_col="uid",
        item_col="iid",
        rating_col="score",
        timestamp_col="when",
        user_features=["city"],
        item_features=["price"],
        name="mine",
    )
    assert data.name == "mine" and data.users.tolist() == [0, 1, 0]
    assert data.user_ids.tolist() == ["alice", "bob"]
    assert data.item_ids.tolist() == ["7", "007", "8"]  # '007' is not 7: ids stay text
    assert data.ratings.tolist() == [4.5, 3.0, 1.0]
    assert data.timestamps is not None and data.timestamps.tolist() == [1000, 1001, 1002]
    assert data.user_features is not None and data.user_features["city"].tolist() == [
        "Paris",
        "Oslo",
    ]
    assert data.item_features is not None and data.item_features["price"].tolist() == [9.5, 2, 3]


def test_load_table_integer_ids_implicit_and_tsv(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.tsv", "u\ti\n10\t5\n\n20\t5\n")
    data = load_table(path, user_col="u", item_col="i")
    assert data.user_ids.dtype == np.int64 and data.user_ids.tolist() == [10, 20]
    assert data.ratings.tolist() == [1.0, 1.0] and data.timestamps is None
    assert data.user_features is None


def test_load_table_conflicting_feature_names_user_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "u,i,age\n1,1,30\n2,1,40\n\n1,2,31\n")
    with pytest.raises(DataFormatError) as info:
        load_table(path, user_col="u", item_col="i", user_features=["age"])
    assert info.value.line == 5
    assert "user 1 has conflicting values for feature 'age'" in str(info.value)


@pytest.mark.parametrize(
    ("text", "kwargs", "line", "words"),
    [
        ("u,i\n1,2\n", {"rating_col": "r"}, 1, "missing column(s) ['r']; the header has"),
        ("u,i,r\n1,2,3\n1,2,x\n", {"rating_col": "r"}, 3, "'r' value 'x' is not a finite number"),
        ("u,i\n1,2\n1,2,3\n", {}, 3, "expected 2 fields, found 3"),
        ("u,i\n1,2,3\n1,2,3\n", {}, 2, "expected 2 fields, found 3"),
        ("u,i,r\n1,2,5\n1,2\n", {"rating_col": "r"}, 3, "missing value in rating column 'r'"),
        ("u,i\n1,2\n,2\n", {}, 3, "missing value in id column 'u'"),
        ("u,i,t\n1,2,2020-01-01T00:00:00Z\n1,3,yesterday\n", {"timestamp_col": "t"}, 3, "ISO"),
        ("", {}, 1, "file is empty"),
        ("u,i\n", {}, 2, "no data rows"),
    ],
)
def test_load_table_errors(
    tmp_path: Path, text: str, kwargs: dict[str, str], line: int, words: str
) -> None:
    path = _write(tmp_path / "t.csv", text)
    with pytest.raises(DataFormatError) as info:
        load_table(path, user_col="u", item_col="i", **kwargs)  # type: ignore[arg-type]
    assert info.value.line == line and words in str(info.value)


def test_load_table_iso_timestamps(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "u,i,t\n1,2,2020-01-01T00:00:00Z\n1,3,1970-01-01T00:01:00\n")
    data = load_table(path, user_col="u", item_col="i", timestamp_col="t")
    assert data.timestamps is not None and data.timestamps.tolist() == [1577836800, 60]


def test_load_table_parquet(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "user": [5, 6, 5],
            "item": ["a", "b", "c"],
            "stars": [1.0, 2.0, 3.0],
            "ts": pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-03"]),
            "genre": ["x", "y", "z"],
        }
    )
    path = tmp_path / "t.parquet"
    frame.to_parquet(path)
    data = load_table(
        path,
        user_col="user",
        item_col="item",
        rating_col="stars",
        timestamp_col="ts",
        item_features=["genre"],
    )
    assert data.user_ids.tolist() == [5, 6] and data.item_ids.tolist() == ["a", "b", "c"]
    assert data.timestamps is not None and data.timestamps[0] == 1577836800
    assert data.item_features is not None and data.item_features["genre"].tolist() == [
        "x",
        "y",
        "z",
    ]
    with pytest.raises(DataFormatError, match=r"missing column\(s\) \['nope'\]"):
        load_table(path, user_col="nope", item_col="item")
    with pytest.raises(DataFormatError, match="row 3: user 5 has conflicting"):
        load_table(path, user_col="user", item_col="item", user_features=["genre"])


def test_load_table_compressed(tmp_path: Path) -> None:
    import bz2
    import lzma

    (tmp_path / "a.csv.bz2").write_bytes(bz2.compress(b"u,i\n1,2\n3,4\n"))
    (tmp_path / "b.tsv.xz").write_bytes(lzma.compress(b"u\ti\n1\t2\n"))
    assert len(load_table(tmp_path / "a.csv.bz2", user_col="u", item_col="i")) == 2
    assert len(load_table(tmp_path / "b.tsv.xz", user_col="u", item_col="i")) == 1
    (tmp_path / "c.csv.gz").write_bytes(gzip.compress(b"u,i\n1,2\n1,2,3\n"))
    with pytest.raises(DataFormatError, match="line 3: expected 2 fields"):
        load_table(tmp_path / "c.csv.gz", user_col="u", item_col="i")


def test_load_table_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_table(tmp_path / "nope.csv", user_col="u", item_col="i")
    path = _write(tmp_path / "data.xlsx", "u,i\n1,2\n")
    with pytest.raises(DataError, match="format='csv'"):
        load_table(path, user_col="u", item_col="i")
    assert len(load_table(path, user_col="u", item_col="i", format="csv")) == 1
