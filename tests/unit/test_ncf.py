"""The NCF release of ML-1M: its test files as published, and the split built on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrec.config import DataConfig
from fedrec.data.errors import DataFormatError
from fedrec.data.loaders import load_ncf_ml1m_test
from fedrec.data.sampling import user_item_csr
from fedrec.data.splits import make_split, ncf_split
from fedrec.data.table import Interactions
from tests.unit.test_loaders import _write
from tests.unit.test_splits import assert_same, pair_set


@pytest.fixture(autouse=True)
def _no_checksums(monkeypatch: pytest.MonkeyPatch) -> None:
    """Synthetic files cannot match the published hashes."""
    monkeypatch.setenv("FEDREC_SKIP_CHECKSUM", "1")
    monkeypatch.delenv("FEDREC_DATA_DIR", raising=False)


# ------------------------------------------------------------------------- NCF files


def _ncf(tmp_path: Path, negative_lines: str) -> Path:
    d = tmp_path / "ml-1m" / "ncf-leave-one-out"
    _write(d / "ml-1m.test.rating", "0\t25\t5\t978824351\n1\t133\t3\t978300174\n")
    _write(d / "ml-1m.test.negative", negative_lines)
    return tmp_path


def test_ncf_test_files(tmp_path: Path) -> None:
    root = _ncf(tmp_path, "(0,25)\t1\t2\t3\n(1,133)\t4\t5\t6\n")
    ncf = load_ncf_ml1m_test(root)
    assert len(ncf) == 2 and ncf.items.tolist() == [25, 133]
    assert ncf.negatives.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert ncf.timestamps.tolist() == [978824351, 978300174]


@pytest.mark.parametrize(
    ("lines", "words"),
    [
        ("(0,25)\t1\t2\t3\n(1,134)\t4\t5\t6\n", "line 2: pair (1,134) differs"),
        ("(0,25)\t1\t2\t3\n1,133\t4\t5\t6\n", "line 2: first field must be '(user,item)'"),
        ("(0,25)\t1\t2\t3\n(1,133)\t4\t5\n", "line 2: expected 4 tab-separated fields"),
    ],
)
def test_ncf_inconsistent_files(tmp_path: Path, lines: str, words: str) -> None:
    with pytest.raises(DataFormatError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_ncf_ml1m_test(_ncf(tmp_path, lines))


# ------------------------------------------------------------------ the NCF split


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


def test_make_split_ncf_uses_located_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, d, _ = ncf_fixture(tmp_path)
    root = tmp_path / "data" / "ml-1m"
    root.mkdir(parents=True)
    d.rename(root / "ncf-leave-one-out")
    monkeypatch.setenv("FEDREC_SKIP_CHECKSUM", "1")  # synthetic files, not the published ones
    cfg = DataConfig.model_validate({"name": "ml-100k", "split": "ncf"})
    split = make_split(data, cfg, seed=0, data_dir=tmp_path / "data")
    assert_same(split, ncf_split(data, root / "ncf-leave-one-out", 0))
    assert_same(split, make_split(data, cfg, seed=0, data_dir=tmp_path / "data"))
