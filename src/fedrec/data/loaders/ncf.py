"""The NCF release of ML-1M (He et al., 2017): its leave-one-out test files, and the split
that trains on the rest of ML-1M and tests on them.

The split is built in three steps: reading the two files (NCF ids, one line each), mapping
NCF ids to the data's internal ids while checking every pair against the data, and drawing
the validation hold-out.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedrec.data.errors import DataFormatError
from fedrec.data.fetch import data_file, locate
from fedrec.data.loaders.parsing import (
    Layout,
    line_of_row,
    open_text,
    read_delimited,
    records,
    show,
)
from fedrec.data.sampling import UserItemCSR, raw_id
from fedrec.data.sources import get_source
from fedrec.data.split_rows import (
    BoolArray,
    SplitRows,
    all_interactions,
    assemble_split,
    kept_rows,
    sample_eval_negatives,
    split_rng,
    user_sorted,
)
from fedrec.data.table import FloatArray, IntArray, Interactions, Split

NCF_TEST_RATING = "ml-1m.test.rating"
NCF_TEST_NEGATIVE = "ml-1m.test.negative"
_NCF_PAIR = re.compile(r"^\((\d+),(\d+)\)$")
_HINT = "the ncf split needs the complete ML-1M ratings in file order (no implicit_threshold)"


# ------------------------------------------------------------------------- the files as published


@dataclass(frozen=True)
class NcfTestFiles:
    """The NCF release's ML-1M leave-one-out test: one held-out rating per user and the
    99 sampled negatives it is ranked against.

    Ids are NCF's, which equal :func:`~fedrec.data.loaders.movielens.load_ml1m`'s internal
    ids (user = UserID - 1, item = first appearance in ``ratings.dat``).
    """

    users: IntArray
    items: IntArray
    ratings: FloatArray
    timestamps: IntArray
    negatives: IntArray
    """Shape (n_users, 99)."""

    def __len__(self) -> int:
        return len(self.users)


def load_ncf_ml1m_test(data_dir: Path | None = None, download: bool = True) -> NcfTestFiles:
    """Read ``ml-1m.test.rating`` and ``ml-1m.test.negative`` and check they agree."""
    source = get_source("ml-1m-ncf")
    folder = locate(source.name, data_dir, download)
    rating_path = data_file(folder, source, NCF_TEST_RATING)
    test = read_delimited(
        rating_path,
        Layout(
            "\t",
            (("user", "int"), ("item", "int"), ("rating", "float"), ("timestamp", "int")),
        ),
    )
    neg_path = data_file(folder, source, NCF_TEST_NEGATIVE)
    with open_text(neg_path, "utf-8") as fh:
        first = next(records(fh, Layout("\t", ()), [0]), None)
    if first is None or len(first) < 2:
        raise DataFormatError(neg_path, 1, "expected '(user,item)' and negative item ids")
    neg_layout = Layout(
        "\t",
        (("(user,item)", "str"), *((f"negative {j}", "int") for j in range(1, len(first)))),
    )
    neg = read_delimited(neg_path, neg_layout)
    pairs = neg[0].str.extract(r"^\((\d+),(\d+)\)$")
    bad = pairs.isna().any(axis=1).to_numpy()
    if bad.any():
        r = int(np.argmax(bad))
        raise DataFormatError(
            neg_path, line_of_row(neg_path, neg_layout, r),
            f"first field must be '(user,item)', found {show(neg[0].iloc[r])}",
        )  # fmt: skip
    pu = pairs[0].astype(np.int64).to_numpy()
    pi = pairs[1].astype(np.int64).to_numpy()
    users = test[0].to_numpy(np.int64)
    items = test[1].to_numpy(np.int64)
    if len(pu) != len(users):
        raise DataFormatError(
            neg_path, None, f"{len(pu)} rows but {rating_path.name} has {len(users)}"
        )
    mismatch = (pu != users) | (pi != items)
    if mismatch.any():
        r = int(np.argmax(mismatch))
        raise DataFormatError(
            neg_path, line_of_row(neg_path, neg_layout, r),
            f"pair ({pu[r]},{pi[r]}) differs from {rating_path.name}'s ({users[r]},{items[r]})",
        )  # fmt: skip
    negatives = neg[list(range(1, len(first)))].to_numpy(np.int64)
    return NcfTestFiles(
        users=users,
        items=items,
        ratings=test[2].to_numpy(np.float32),
        timestamps=test[3].to_numpy(np.int64),
        negatives=negatives,
    )


# ------------------------------------------------------------------- the split: reading the files


@dataclass(frozen=True)
class _NcfFiles:
    """Both files in NCF ids, line by line (line ``j`` of a file is row ``j - 1``)."""

    rating_path: Path
    negative_path: Path
    test_users: IntArray
    test_items: IntArray
    negative_users: IntArray
    negative_items: IntArray
    negatives: IntArray


def _read_ncf_files(ncf_dir: Path) -> _NcfFiles:
    rating_path = ncf_dir / NCF_TEST_RATING
    negative_path = ncf_dir / NCF_TEST_NEGATIVE
    t_users, t_items = _read_ncf_test(rating_path)
    n_users, n_items, negs = _read_ncf_negatives(negative_path)
    return _NcfFiles(rating_path, negative_path, t_users, t_items, n_users, n_items, negs)


def _int_ids(ids: npt.NDArray[np.generic], what: str, name: str) -> IntArray:
    try:
        return np.asarray(ids).astype(np.int64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"ncf split: data set {name!r} has non-integer raw {what} ids ({exc}); it needs "
            "ML-1M as loaded from ratings.dat"
        ) from exc


def _read_ncf_test(path: Path) -> tuple[IntArray, IntArray]:
    """NCF user and item ids of ``ml-1m.test.rating``, with per-line validation."""
    if not path.is_file():
        raise FileNotFoundError(f"ncf split: {path} does not exist")
    users: list[int] = []
    items: list[int] = []
    with path.open(encoding="utf-8") as fh:
        for no, line in enumerate(fh, start=1):
            parts = line.rstrip("\r\n").split("\t")
            if parts == [""]:
                continue
            if len(parts) != 4:
                raise DataFormatError(
                    path,
                    no,
                    f"expected 4 tab-separated fields (user item rating time), got {len(parts)}",
                )
            try:
                u, i = int(parts[0]), int(parts[1])
                float(parts[2])
                int(parts[3])
            except ValueError as exc:
                raise DataFormatError(path, no, f"not a number: {exc}") from exc
            if u < 0 or i < 0:
                raise DataFormatError(path, no, f"negative id (user {u}, item {i})")
            users.append(u)
            items.append(i)
    if not users:
        raise DataFormatError(path, None, "no test rows")
    return np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)


def _read_ncf_negatives(path: Path) -> tuple[IntArray, IntArray, IntArray]:
    """Header pairs and the negatives matrix of ``ml-1m.test.negative``."""
    if not path.is_file():
        raise FileNotFoundError(f"ncf split: {path} does not exist")
    users: list[int] = []
    items: list[int] = []
    negs: list[list[int]] = []
    with path.open(encoding="utf-8") as fh:
        for no, line in enumerate(fh, start=1):
            parts = line.rstrip("\r\n").split("\t")
            if parts == [""]:
                continue
            m = _NCF_PAIR.match(parts[0])
            if m is None:
                raise DataFormatError(path, no, f"first field {parts[0]!r} is not '(user,item)'")
            try:
                row = [int(x) for x in parts[1:]]
            except ValueError as exc:
                raise DataFormatError(path, no, f"negative item is not an integer: {exc}") from exc
            if negs and len(row) != len(negs[0]):
                raise DataFormatError(
                    path, no, f"{len(row)} negatives, but line 1 has {len(negs[0])}"
                )
            if not row:
                raise DataFormatError(path, no, "no negatives")
            if min(row) < 0:
                raise DataFormatError(path, no, f"negative item id {min(row)}")
            users.append(int(m.group(1)))
            items.append(int(m.group(2)))
            negs.append(row)
    if not negs:
        raise DataFormatError(path, None, "no lines")
    return (
        np.asarray(users, dtype=np.int64),
        np.asarray(items, dtype=np.int64),
        np.asarray(negs, dtype=np.int64),
    )


# ------------------------------------------------------------ the split: NCF ids -> internal ids


class _NcfIds:
    """NCF ids to the data's internal ids, through the raw ids (user = UserID - 1, item =
    order of first appearance); an id the data lacks is an error naming file and line."""

    def __init__(self, data: Interactions) -> None:
        self.data = data
        raw_users = _int_ids(data.user_ids, "user", data.name)
        self.lookup = np.full(int(raw_users.max(initial=0)) + 2, -1, dtype=np.int64)
        self.lookup[raw_users] = np.arange(len(raw_users), dtype=np.int64)
        self.items = _ncf_item_order(data)

    def user(self, ncf_u: IntArray, path: Path, lines: IntArray) -> IntArray:
        raw = ncf_u + 1
        ok = raw < len(self.lookup)
        out = np.full(len(raw), -1, dtype=np.int64)
        out[ok] = self.lookup[raw[ok]]
        if (out < 0).any():
            j = int(np.flatnonzero(out < 0)[0])
            raise DataFormatError(
                path,
                int(lines[j]),
                f"NCF user {int(ncf_u[j])} (raw UserID {int(raw[j])}) is "
                f"not in data set {self.data.name!r}",
            )
        return out

    def item(self, ncf_i: IntArray, path: Path, lines: IntArray) -> IntArray:
        bad = ncf_i >= len(self.items)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise DataFormatError(
                path,
                int(lines[j]),
                f"NCF item {int(ncf_i[j])} does not exist: the data has "
                f"{len(self.items)} distinct items ({_HINT})",
            )
        out: IntArray = self.items[ncf_i]
        return out


def _ncf_item_order(data: Interactions) -> IntArray:
    """Internal item ids in order of first appearance in the data's row order (= NCF id)."""
    order = np.argsort(data.items, kind="stable")
    s = data.items[order]
    starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1]))) if len(s) else order[:0]
    first_row = order[starts]
    return s[starts][np.argsort(first_row)].astype(np.int64)


# --------------------------------------------------------------- the split: checking the pairs


@dataclass(frozen=True)
class _NcfTest:
    """The test hold-out in internal ids, in the rating file's order."""

    users: IntArray
    items: IntArray
    rows: IntArray
    """Row of each test pair in the data (among the deduplicated rows)."""
    negatives: IntArray
    """Shape (n_test, k): each pair's published negatives, internal ids."""


def _ncf_test(data: Interactions, ids: _NcfIds, files: _NcfFiles, keep: BoolArray) -> _NcfTest:
    """Map the test pairs and their negatives; one test pair per user, each among the
    ratings, and one negatives line per test pair."""
    rating_path, negative_path = files.rating_path, files.negative_path
    t_users, t_items = files.test_users, files.test_items
    t_lines = np.arange(1, len(t_users) + 1)
    test_u = ids.user(t_users, rating_path, t_lines)
    test_i = ids.item(t_items, rating_path, t_lines)
    seen = np.zeros(data.n_users, dtype=np.int64)
    np.add.at(seen, test_u, 1)
    if (seen > 1).any():
        bad_u = int(np.flatnonzero(seen > 1)[0])
        line = int(np.flatnonzero(test_u == bad_u)[1]) + 1
        raise DataFormatError(rating_path, line, f"second test row for NCF user {bad_u}")

    # Locate each test pair among the (deduplicated) rows.
    kept = np.flatnonzero(keep)
    keys = data.users[kept].astype(np.int64) * data.n_items + data.items[kept]
    order = np.argsort(keys)
    skeys = keys[order]
    q = test_u * data.n_items + test_i
    pos = np.minimum(np.searchsorted(skeys, q), max(len(skeys) - 1, 0))
    found = skeys[pos] == q if len(skeys) else np.zeros(len(q), dtype=bool)
    if not found.all():
        j = int(np.flatnonzero(~found)[0])
        raw_u, raw_i = raw_id(data.user_ids, int(test_u[j])), raw_id(data.item_ids, int(test_i[j]))
        raise DataFormatError(
            rating_path,
            j + 1,
            f"test pair (NCF user {int(t_users[j])}, item {int(t_items[j])}) "
            f"= (UserID {raw_u!r}, item {raw_i!r}) is not "
            f"among the ratings of {data.name!r} ({_HINT})",
        )
    test_rows = kept[order[pos]]

    # Negatives: one line per test pair, matched by user.
    n_users_ncf, n_items_ncf, negs = files.negative_users, files.negative_items, files.negatives
    n_lines = np.arange(1, len(n_users_ncf) + 1)
    neg_u = ids.user(n_users_ncf, negative_path, n_lines)
    neg_header_i = ids.item(n_items_ncf, negative_path, n_lines)
    row_of_user = np.full(data.n_users, -1, dtype=np.int64)
    row_of_user[test_u] = np.arange(len(test_u))
    mismatch = (row_of_user[neg_u] < 0) | (
        test_i[np.maximum(row_of_user[neg_u], 0)] != neg_header_i
    )
    if mismatch.any():
        j = int(np.flatnonzero(mismatch)[0])
        raise DataFormatError(
            negative_path,
            j + 1,
            f"pair ({int(n_users_ncf[j])},{int(n_items_ncf[j])}) is not a "
            f"test pair of {rating_path.name}",
        )
    first_line = np.full(data.n_users, -1, dtype=np.int64)
    for j in range(len(neg_u)):  # one line per user; 6,040 lines, so a plain loop is fine
        u = int(neg_u[j])
        if first_line[u] >= 0:
            raise DataFormatError(
                negative_path,
                j + 1,
                f"second line for pair ({int(n_users_ncf[j])},"
                f"{int(n_items_ncf[j])}) (first on line {int(first_line[u]) + 1})",
            )
        first_line[u] = j
    if (first_line[test_u] < 0).any():
        j = int(np.flatnonzero(first_line[test_u] < 0)[0])
        raise DataFormatError(
            negative_path,
            None,
            f"no line for test pair ({int(t_users[j])},{int(t_items[j])}) of {rating_path.name}",
        )
    flat = negs.reshape(-1)
    neg_lines = np.repeat(n_lines, negs.shape[1])
    test_neg = np.empty_like(negs)
    test_neg[row_of_user[neg_u]] = ids.item(flat, negative_path, neg_lines).reshape(negs.shape)
    return _NcfTest(test_u, test_i, test_rows, test_neg)


def _negative_counts(
    test: _NcfTest, interacted: UserItemCSR, negative_path: Path
) -> dict[str, int]:
    """How the published negatives relate to the user's positives (warned when any OTHER
    positive is among them)."""
    k = test.negatives.shape[1]
    in_pos = interacted.contains(np.repeat(test.users[:, None], k, axis=1), test.negatives)
    is_target = test.negatives == test.items[:, None]
    n_bad = int((in_pos & ~is_target).sum())
    srt_neg = np.sort(test.negatives, axis=1)
    if n_bad:
        warnings.warn(
            f"{negative_path}: {n_bad} test negatives are items the user interacted with",
            stacklevel=4,
        )
    return {
        "ncf_test_negatives_equal_target": int(is_target.sum()),
        "ncf_test_negatives_in_positives": n_bad,
        "ncf_test_negatives_repeated": int((srt_neg[:, 1:] == srt_neg[:, :-1]).sum()),
    }


# ------------------------------------------------------------------ the split: drawing the rest


def ncf_rows(data: Interactions, ncf_dir: Path, seed: int) -> SplitRows:
    """The NCF split as rows (see :func:`ncf_split`)."""
    files = _read_ncf_files(ncf_dir)
    ids = _NcfIds(data)
    keep, n_dup = kept_rows(data)
    test = _ncf_test(data, ids, files, keep)
    interacted = all_interactions(data)
    counts = _negative_counts(test, interacted, files.negative_path)

    # Validation: one random training interaction per user with at least two of them.
    is_test = np.zeros(len(data), dtype=bool)
    is_test[test.rows] = True
    train_rows = np.flatnonzero(keep & ~is_test)
    srt, from_end = user_sorted(data, train_rows, split_rng(seed, "ncf-valid"), by_time=False)
    n_train = np.bincount(data.users[srt], minlength=data.n_users)
    pick = (from_end == 0) & (n_train[data.users[srt]] >= 2)
    valid_rows = srt[pick]
    # Hold-outs in user order, like the other splits.
    t_order = np.argsort(test.users, kind="stable")
    test_rows, test_neg = test.rows[t_order], test.negatives[t_order]
    k = test.negatives.shape[1]
    vneg = sample_eval_negatives(
        interacted, data.users[valid_rows], k, split_rng(seed, "valid-negatives"), data.user_ids
    )
    train_mask = keep & ~is_test
    train_mask[valid_rows] = False
    active = int((np.bincount(data.users, minlength=data.n_users) > 0).sum())
    info: dict[str, Any] = {
        "seed": seed,
        "eval_negatives": k,
        "duplicate_rows_dropped": n_dup,
        **counts,
        "ncf_item_ids_equal_internal": bool(np.array_equal(ids.items, np.arange(len(ids.items)))),
        "users_without_test": active - len(test_rows),
        "users_without_valid": active - len(valid_rows),
    }
    return SplitRows(train_mask, valid_rows, test_rows, vneg, test_neg, "ncf", info)


def ncf_split(data: Interactions, ncf_dir: Path, seed: int) -> Split:
    """The ML-1M leave-one-out test of He et al. (2017), with its published 99 negatives.

    Test: the pair in ``ml-1m.test.rating`` (NCF user = UserID - 1, NCF item = the MovieID's
    order of first appearance in ``ratings.dat``) ranked against its line of
    ``ml-1m.test.negative``. Validation: one random remaining interaction per user, with
    as many seeded negatives as the test has. Train: everything else.

    The published negatives are kept verbatim. In 156 of the 6,040 lines the test item
    itself is among its 99 negatives (NCF excluded only training items when sampling);
    ``info["ncf_test_negatives_equal_target"]`` counts them, and the sampled evaluation
    ignores a negative equal to its target, exactly as NCF's own evaluation (a dict keyed
    by item) does. Negatives that are any OTHER positive of the user are counted in
    ``info["ncf_test_negatives_in_positives"]`` and warned about (0 for the published files).
    """
    return assemble_split(data, ncf_rows(data, Path(ncf_dir), seed))
