"""Train / validation / test splits, their fixed evaluation negatives, and an on-disk cache.

Every split is a pure function of (data, parameters, seed): each random decision draws from
its own stream, ``default_rng([seed, crc32(purpose)])``, so changing one part (say the
number of evaluation negatives) does not reshuffle another (which rows are held out).

Rules every split keeps:

* repeated (user, item) rows are collapsed to the latest first (``Split.info`` counts them),
  so a held-out pair never also sits in train;
* evaluation negatives are distinct within a row and drawn uniformly from the items the
  user never interacted with anywhere in the data (train, validation or test);
* hold-out rows are ordered by user.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedrec.config import DataConfig
from fedrec.data.errors import DataFormatError
from fedrec.data.fetch import cache_dir, data_file, locate
from fedrec.data.implicit import duplicate_mask
from fedrec.data.sampling import ComplementSampler, UserItemCSR, raw_id, user_item_csr
from fedrec.data.sources import get_source
from fedrec.data.table import Holdout, IntArray, Interactions, Split
from fedrec.utils.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

SPLIT_FORMAT = 1
"""Bump when any split algorithm changes: it is part of the cache key."""

BoolArray = npt.NDArray[np.bool_]


def _rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed % (1 << 64), zlib.crc32(purpose.encode())])


@dataclass(frozen=True)
class _Rows:
    """A split as row indices into the data: what the cache stores."""

    train_mask: BoolArray
    valid_rows: IntArray
    test_rows: IntArray
    valid_negatives: IntArray | None
    test_negatives: IntArray | None
    protocol: str
    info: dict[str, Any]


def _assemble(data: Interactions, rows: _Rows) -> Split:
    def holdout(idx: IntArray, neg: IntArray | None) -> Holdout:
        return Holdout(
            users=data.users[idx].astype(np.int64),
            items=data.items[idx].astype(np.int64),
            ratings=data.ratings[idx].astype(np.float32),
            negatives=None if neg is None else neg.astype(np.int64),
        )

    return Split(
        train=data.subset(rows.train_mask),
        valid=holdout(rows.valid_rows, rows.valid_negatives),
        test=holdout(rows.test_rows, rows.test_negatives),
        protocol=rows.protocol,
        info=dict(rows.info),
    )


# --------------------------------------------------------------------------- negatives


def sample_eval_negatives(
    interacted: UserItemCSR,
    users: IntArray,
    k: int,
    rng: np.random.Generator,
    user_ids: npt.NDArray[np.generic] | None = None,
) -> IntArray:
    """``(len(users), k)`` distinct items per row, uniform among items the user never touched.

    ``interacted`` must hold ALL of each user's interactions. Rows come back sorted. A user
    with fewer than ``k`` such items is an error (sampling with replacement would give that
    user an easier, different test).
    """
    if k < 1:
        raise ValueError(f"eval_negatives must be >= 1, got {k}")
    sampler = ComplementSampler(interacted, rng, user_ids)
    try:
        return sampler.sample_distinct(users, k)
    except ValueError as exc:
        raise ValueError(
            f"{exc}; lower data.eval_negatives or use the full-ranking protocol"
        ) from exc


def _all_interactions(data: Interactions) -> UserItemCSR:
    return user_item_csr(data.users, data.items, data.n_users, data.n_items)


# --------------------------------------------------------------------------- ordering


def _user_sorted(
    data: Interactions, rows: IntArray, rng: np.random.Generator, by_time: bool
) -> tuple[IntArray, IntArray]:
    """``rows`` ordered by (user, time or nothing, seeded tiebreak); plus each row's position
    from its user's end (0 = the user's last row)."""
    # Shuffle, then stable sorts: equal keys keep the seeded shuffled order. (Two stable
    # argsorts are ~4x faster than one np.lexsort on 1M rows.)
    srt = rows[rng.permutation(len(rows))]
    if by_time:
        assert data.timestamps is not None
        srt = srt[np.argsort(data.timestamps[srt], kind="stable")]
    srt = srt[np.argsort(data.users[srt], kind="stable")]
    su = data.users[srt].astype(np.int64)
    indptr = np.zeros(data.n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(su, minlength=data.n_users), out=indptr[1:])
    from_end = indptr[su + 1] - 1 - np.arange(len(srt), dtype=np.int64)
    return srt, from_end


def _kept_rows(data: Interactions) -> tuple[BoolArray, int]:
    keep = duplicate_mask(data)
    return keep, int(len(keep) - keep.sum())


def _finish(
    data: Interactions,
    keep: BoolArray,
    valid_rows: IntArray,
    test_rows: IntArray,
    seed: int,
    eval_negatives: int,
    protocol: str,
    info: dict[str, Any],
) -> _Rows:
    train_mask = keep.copy()
    train_mask[valid_rows] = False
    train_mask[test_rows] = False
    interacted = _all_interactions(data)
    vneg = sample_eval_negatives(
        interacted,
        data.users[valid_rows],
        eval_negatives,
        _rng(seed, "valid-negatives"),
        data.user_ids,
    )
    tneg = sample_eval_negatives(
        interacted,
        data.users[test_rows],
        eval_negatives,
        _rng(seed, "test-negatives"),
        data.user_ids,
    )
    info = {"seed": seed, "eval_negatives": eval_negatives, **info}
    return _Rows(train_mask, valid_rows, test_rows, vneg, tneg, protocol, info)


# --------------------------------------------------------------------------- splits


def _leave_one_out_rows(data: Interactions, seed: int, eval_negatives: int, by_time: bool) -> _Rows:
    keep, n_dup = _kept_rows(data)
    srt, from_end = _user_sorted(
        data, np.flatnonzero(keep), _rng(seed, "loo-order"), by_time=by_time
    )
    counts = np.bincount(data.users[srt], minlength=data.n_users)
    eligible = counts[data.users[srt]] >= 3
    test_rows = srt[eligible & (from_end == 0)]
    valid_rows = srt[eligible & (from_end == 1)]
    active = int((counts > 0).sum())
    info = {
        "duplicate_rows_dropped": n_dup,
        "users_without_holdout": active - len(test_rows),
        "users_without_interactions": int(data.n_users - active),
    }
    protocol = "loo-time" if by_time else "loo-random"
    return _finish(data, keep, valid_rows, test_rows, seed, eval_negatives, protocol, info)


def _require_timestamps(data: Interactions) -> None:
    if data.timestamps is None:
        raise ValueError(
            f"data set {data.name!r} has no timestamps, so 'loo-time' cannot order it; use "
            "data.split = 'loo-random' (or 'ncf' for ml-1m)"
        )


def leave_one_out_time(data: Interactions, seed: int, eval_negatives: int = 99) -> Split:
    """Per user: the latest interaction is test, the second latest validation.

    Timestamp ties are broken by the seed. Users with fewer than 3 interactions keep them
    all in train (``info["users_without_holdout"]``).
    """
    _require_timestamps(data)
    return _assemble(data, _leave_one_out_rows(data, seed, eval_negatives, by_time=True))


def leave_one_out_random(data: Interactions, seed: int, eval_negatives: int = 99) -> Split:
    """Per user: one random interaction is test, another validation (for data without time)."""
    return _assemble(data, _leave_one_out_rows(data, seed, eval_negatives, by_time=False))


def _ratio_rows(
    data: Interactions, seed: int, test_ratio: float, valid_ratio: float, eval_negatives: int
) -> _Rows:
    if not 0 < test_ratio < 1 or not 0 <= valid_ratio < 1 or test_ratio + valid_ratio >= 1:
        raise ValueError(
            f"need 0 < test_ratio < 1, 0 <= valid_ratio < 1 and a sum below 1; got "
            f"test_ratio = {test_ratio}, valid_ratio = {valid_ratio}"
        )
    keep, n_dup = _kept_rows(data)
    by_time = data.timestamps is not None
    srt, from_end = _user_sorted(data, np.flatnonzero(keep), _rng(seed, "ratio-order"), by_time)
    n_u = np.bincount(data.users[srt], minlength=data.n_users).astype(np.int64)
    # Round half up; a user always keeps at least one training row, losing validation first.
    n_test = np.floor(test_ratio * n_u + 0.5 + 1e-9).astype(np.int64)
    n_valid = np.floor(valid_ratio * n_u + 0.5 + 1e-9).astype(np.int64)
    n_test = np.clip(n_test, 0, np.maximum(n_u - 1, 0))
    n_valid = np.clip(n_valid, 0, np.maximum(n_u - 1 - n_test, 0))
    su = data.users[srt]
    test_rows = srt[from_end < n_test[su]]
    valid_rows = srt[(from_end >= n_test[su]) & (from_end < n_test[su] + n_valid[su])]
    active = n_u > 0
    info = {
        "duplicate_rows_dropped": n_dup,
        "order": "time" if by_time else "random",
        "test_ratio": test_ratio,
        "valid_ratio": valid_ratio,
        "users_without_test": int((active & (n_test == 0)).sum()),
        "users_without_valid": int((active & (n_valid == 0)).sum()),
    }
    return _finish(data, keep, valid_rows, test_rows, seed, eval_negatives, "ratio", info)


def ratio_split(
    data: Interactions,
    seed: int,
    test_ratio: float = 0.2,
    valid_ratio: float = 0.1,
    eval_negatives: int = 99,
) -> Split:
    """Per user, the last ``test_ratio`` of interactions are test and the ``valid_ratio``
    before them validation (time order when there are timestamps, else a seeded shuffle).

    Counts are ``round(ratio * n)`` (half up); every user keeps at least one training row.
    """
    return _assemble(data, _ratio_rows(data, seed, test_ratio, valid_ratio, eval_negatives))


# --------------------------------------------------------------------------- NCF (He et al.)

NCF_TEST_RATING = "ml-1m.test.rating"
NCF_TEST_NEGATIVE = "ml-1m.test.negative"
_NCF_PAIR = re.compile(r"^\((\d+),(\d+)\)$")


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


def _ncf_item_order(data: Interactions) -> IntArray:
    """Internal item ids in order of first appearance in the data's row order (= NCF id)."""
    order = np.argsort(data.items, kind="stable")
    s = data.items[order]
    starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1]))) if len(s) else order[:0]
    first_row = order[starts]
    return s[starts][np.argsort(first_row)].astype(np.int64)


def _ncf_rows(data: Interactions, ncf_dir: Path, seed: int) -> _Rows:
    rating_path = ncf_dir / NCF_TEST_RATING
    negative_path = ncf_dir / NCF_TEST_NEGATIVE
    t_users, t_items = _read_ncf_test(rating_path)
    n_users_ncf, n_items_ncf, negs = _read_ncf_negatives(negative_path)
    hint = "the ncf split needs the complete ML-1M ratings in file order (no implicit_threshold)"

    # NCF ids -> internal ids, through the raw ids.
    raw_users = _int_ids(data.user_ids, "user", data.name)
    lookup = np.full(int(raw_users.max(initial=0)) + 2, -1, dtype=np.int64)
    lookup[raw_users] = np.arange(len(raw_users), dtype=np.int64)
    ncf_items = _ncf_item_order(data)

    def user_of(ncf_u: IntArray, path: Path, lines: IntArray) -> IntArray:
        raw = ncf_u + 1
        ok = raw < len(lookup)
        out = np.full(len(raw), -1, dtype=np.int64)
        out[ok] = lookup[raw[ok]]
        if (out < 0).any():
            j = int(np.flatnonzero(out < 0)[0])
            raise DataFormatError(
                path,
                int(lines[j]),
                f"NCF user {int(ncf_u[j])} (raw UserID {int(raw[j])}) is "
                f"not in data set {data.name!r}",
            )
        return out

    def item_of(ncf_i: IntArray, path: Path, lines: IntArray) -> IntArray:
        bad = ncf_i >= len(ncf_items)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise DataFormatError(
                path,
                int(lines[j]),
                f"NCF item {int(ncf_i[j])} does not exist: the data has "
                f"{len(ncf_items)} distinct items ({hint})",
            )
        return ncf_items[ncf_i]

    t_lines = np.arange(1, len(t_users) + 1)
    test_u = user_of(t_users, rating_path, t_lines)
    test_i = item_of(t_items, rating_path, t_lines)
    seen = np.zeros(data.n_users, dtype=np.int64)
    np.add.at(seen, test_u, 1)
    if (seen > 1).any():
        bad_u = int(np.flatnonzero(seen > 1)[0])
        line = int(np.flatnonzero(test_u == bad_u)[1]) + 1
        raise DataFormatError(rating_path, line, f"second test row for NCF user {bad_u}")

    # Locate each test pair among the (deduplicated) rows.
    keep, n_dup = _kept_rows(data)
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
            f"among the ratings of {data.name!r} ({hint})",
        )
    test_rows = kept[order[pos]]

    # Negatives: one line per test pair, matched by user.
    n_lines = np.arange(1, len(n_users_ncf) + 1)
    neg_u = user_of(n_users_ncf, negative_path, n_lines)
    neg_header_i = item_of(n_items_ncf, negative_path, n_lines)
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
    test_neg[row_of_user[neg_u]] = item_of(flat, negative_path, neg_lines).reshape(negs.shape)

    interacted = _all_interactions(data)
    k = negs.shape[1]
    in_pos = interacted.contains(np.repeat(test_u[:, None], k, axis=1), test_neg)
    is_target = test_neg == test_i[:, None]
    n_target = int(is_target.sum())
    n_bad = int((in_pos & ~is_target).sum())
    srt_neg = np.sort(test_neg, axis=1)
    n_rep = int((srt_neg[:, 1:] == srt_neg[:, :-1]).sum())
    if n_bad:
        warnings.warn(
            f"{negative_path}: {n_bad} test negatives are items the user interacted with",
            stacklevel=3,
        )

    # Validation: one random training interaction per user with at least two of them.
    is_test = np.zeros(len(data), dtype=bool)
    is_test[test_rows] = True
    train_rows = np.flatnonzero(keep & ~is_test)
    srt, from_end = _user_sorted(data, train_rows, _rng(seed, "ncf-valid"), by_time=False)
    n_train = np.bincount(data.users[srt], minlength=data.n_users)
    pick = (from_end == 0) & (n_train[data.users[srt]] >= 2)
    valid_rows = srt[pick]
    # Hold-outs in user order, like the other splits.
    t_order = np.argsort(test_u, kind="stable")
    test_rows, test_neg = test_rows[t_order], test_neg[t_order]
    vneg = sample_eval_negatives(
        interacted, data.users[valid_rows], k, _rng(seed, "valid-negatives"), data.user_ids
    )
    train_mask = keep & ~is_test
    train_mask[valid_rows] = False
    active = int((np.bincount(data.users, minlength=data.n_users) > 0).sum())
    info: dict[str, Any] = {
        "seed": seed,
        "eval_negatives": k,
        "duplicate_rows_dropped": n_dup,
        "ncf_test_negatives_equal_target": n_target,
        "ncf_test_negatives_in_positives": n_bad,
        "ncf_test_negatives_repeated": n_rep,
        "ncf_item_ids_equal_internal": bool(np.array_equal(ncf_items, np.arange(len(ncf_items)))),
        "users_without_test": active - len(test_rows),
        "users_without_valid": active - len(valid_rows),
    }
    return _Rows(train_mask, valid_rows, test_rows, vneg, test_neg, "ncf", info)


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
    return _assemble(data, _ncf_rows(data, Path(ncf_dir), seed))


# --------------------------------------------------------------------------- cache + dispatch


def split_cache_dir() -> Path:
    """``splits/`` under the fedrec cache ($FEDREC_CACHE_DIR, $XDG_CACHE_HOME/fedrec, ~/.cache)."""
    return cache_dir() / "splits"


def interactions_digest(data: Interactions) -> str:
    """SHA-256 of the interaction content and id maps (not the name or side features)."""
    h = hashlib.sha256()
    h.update(f"{data.n_users}:{data.n_items}:{len(data)}".encode())
    for arr in (data.users, data.items):
        h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(data.ratings, dtype=np.float32).tobytes())
    if data.timestamps is None:
        h.update(b"no-timestamps")
    else:
        h.update(np.ascontiguousarray(data.timestamps, dtype=np.int64).tobytes())
    for ids in (data.user_ids, data.item_ids):
        h.update("\x1f".join(map(str, ids.tolist())).encode())
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def _compute(data: Interactions, cfg: DataConfig, seed: int, ncf_dir: Path | None) -> _Rows:
    if cfg.split == "loo-time":
        _require_timestamps(data)
        return _leave_one_out_rows(data, seed, cfg.eval_negatives, by_time=True)
    if cfg.split == "loo-random":
        return _leave_one_out_rows(data, seed, cfg.eval_negatives, by_time=False)
    if cfg.split == "ratio":
        return _ratio_rows(data, seed, cfg.test_ratio, cfg.valid_ratio, cfg.eval_negatives)
    if cfg.split == "ncf":
        assert ncf_dir is not None
        return _ncf_rows(data, ncf_dir, seed)
    raise ValueError(f"unknown data.split {cfg.split!r}")


def _neg_dtype(n_items: int) -> type[np.unsignedinteger[Any]]:
    if n_items <= np.iinfo(np.uint16).max:
        return np.uint16
    if n_items <= np.iinfo(np.uint32).max:
        return np.uint32
    return np.uint64


def _save(path: Path, key: str, data: Interactions, rows: _Rows) -> None:
    dt = _neg_dtype(data.n_items)
    arrays: dict[str, npt.NDArray[Any]] = {
        "key": np.array(key),
        "n_rows": np.array(len(data), dtype=np.int64),
        "train_bits": np.packbits(rows.train_mask),
        "valid_rows": rows.valid_rows.astype(np.int64),
        "test_rows": rows.test_rows.astype(np.int64),
        "protocol": np.array(rows.protocol),
        "info": np.array(json.dumps(rows.info, sort_keys=True)),
    }
    for nm, neg in (
        ("valid_negatives", rows.valid_negatives),
        ("test_negatives", rows.test_negatives),
    ):
        if neg is not None:
            arrays[nm] = neg.astype(dt)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(path, buf.getvalue())


def _load(path: Path, key: str, data: Interactions) -> _Rows | None:
    """The cached split, or None when missing, stale or damaged in any way."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key or int(z["n_rows"]) != len(data):
                return None
            n = len(data)
            train_mask = np.unpackbits(z["train_bits"], count=n).astype(bool)
            valid_rows = z["valid_rows"].astype(np.int64)
            test_rows = z["test_rows"].astype(np.int64)
            negs: list[IntArray | None] = []
            for nm, idx in (("valid_negatives", valid_rows), ("test_negatives", test_rows)):
                if nm in z.files:
                    neg = z[nm].astype(np.int64)
                    if neg.ndim != 2 or len(neg) != len(idx) or (neg >= data.n_items).any():
                        return None
                    negs.append(neg)
                else:
                    negs.append(None)
            for idx in (valid_rows, test_rows):
                if idx.ndim != 1 or (len(idx) and (idx.min() < 0 or idx.max() >= n)):
                    return None
                if train_mask[idx].any():
                    return None
            info = json.loads(str(z["info"]))
            protocol = str(z["protocol"])
    except Exception as exc:  # any damage means "recompute", never "fail" or "trust"
        log.warning("ignoring unreadable split cache %s: %s", path, exc)
        return None
    if not isinstance(info, dict):
        return None
    return _Rows(train_mask, valid_rows, test_rows, negs[0], negs[1], protocol, info)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] or "data"


def make_split(
    data: Interactions, cfg: DataConfig, seed: int, data_dir: Path | None = None
) -> Split:
    """The split ``cfg.split`` asks for, cached on disk (see :func:`split_cache_dir`).

    The cache key covers the data content, the split parameters, the seed, the split
    format version and (for ``ncf``) the NCF files' bytes; a missing, stale or damaged cache
    file is recomputed and rewritten, so the cache never changes a result.
    """
    ncf_dir: Path | None = None
    params: dict[str, Any] = {"split": cfg.split, "seed": seed, "format": SPLIT_FORMAT}
    if cfg.split == "ncf":
        ncf_dir = Path(locate("ml-1m-ncf", data_dir))
        source = get_source("ml-1m-ncf")
        for name in (NCF_TEST_RATING, NCF_TEST_NEGATIVE):
            data_file(ncf_dir, source, name)  # the published bytes, unless checks are off
        params["ncf_files"] = [
            _file_digest(ncf_dir / NCF_TEST_RATING),
            _file_digest(ncf_dir / NCF_TEST_NEGATIVE),
        ]
    else:
        params["eval_negatives"] = cfg.eval_negatives
    if cfg.split == "ratio":
        params["test_ratio"] = cfg.test_ratio
        params["valid_ratio"] = cfg.valid_ratio
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    h.update(interactions_digest(data).encode())
    key = h.hexdigest()
    path = split_cache_dir() / f"{_safe(data.name)}-{cfg.split}-{key[:24]}.npz"
    rows = _load(path, key, data)
    if rows is None:
        rows = _compute(data, cfg, seed, ncf_dir)
        try:
            _save(path, key, data, rows)
        except OSError as exc:  # a read-only cache must not stop a run
            log.warning("could not write split cache %s: %s", path, exc)
    return _assemble(data, rows)
