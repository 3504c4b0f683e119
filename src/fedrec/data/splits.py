"""Train / validation / test splits, their fixed evaluation negatives, and an on-disk cache.

Every split is a pure function of (data, parameters, seed): each random decision draws from
its own stream, ``default_rng([seed, crc32(purpose)])``, so changing one part (say the
number of evaluation negatives) does not reshuffle another (which rows are held out).

Rules every split keeps (their building blocks are in :mod:`fedrec.data.split_rows`; the
NCF split lives beside its files, in :mod:`fedrec.data.loaders.ncf`):

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
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedrec.config import DataConfig
from fedrec.data.fetch import cache_dir, data_file, locate
from fedrec.data.loaders.ncf import NCF_TEST_NEGATIVE, NCF_TEST_RATING, ncf_rows, ncf_split
from fedrec.data.sources import get_source
from fedrec.data.split_rows import (
    SplitRows,
    assemble_split,
    finish_rows,
    kept_rows,
    sample_eval_negatives,
    split_rng,
    user_sorted,
)
from fedrec.data.table import IntArray, Interactions, Split
from fedrec.utils.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

SPLIT_FORMAT = 1
"""Bump when any split algorithm changes: it is part of the cache key."""

__all__ = [
    "SPLIT_FORMAT",
    "interactions_digest",
    "leave_one_out_random",
    "leave_one_out_time",
    "make_split",
    "ncf_split",
    "ratio_split",
    "sample_eval_negatives",
    "split_cache_dir",
]


# --------------------------------------------------------------------------- splits


def _leave_one_out_rows(
    data: Interactions, seed: int, eval_negatives: int, by_time: bool
) -> SplitRows:
    keep, n_dup = kept_rows(data)
    srt, from_end = user_sorted(
        data, np.flatnonzero(keep), split_rng(seed, "loo-order"), by_time=by_time
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
    return finish_rows(data, keep, valid_rows, test_rows, seed, eval_negatives, protocol, info)


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
    return assemble_split(data, _leave_one_out_rows(data, seed, eval_negatives, by_time=True))


def leave_one_out_random(data: Interactions, seed: int, eval_negatives: int = 99) -> Split:
    """Per user: one random interaction is test, another validation (for data without time)."""
    return assemble_split(data, _leave_one_out_rows(data, seed, eval_negatives, by_time=False))


def _ratio_rows(
    data: Interactions, seed: int, test_ratio: float, valid_ratio: float, eval_negatives: int
) -> SplitRows:
    if not 0 < test_ratio < 1 or not 0 <= valid_ratio < 1 or test_ratio + valid_ratio >= 1:
        raise ValueError(
            f"need 0 < test_ratio < 1, 0 <= valid_ratio < 1 and a sum below 1; got "
            f"test_ratio = {test_ratio}, valid_ratio = {valid_ratio}"
        )
    keep, n_dup = kept_rows(data)
    by_time = data.timestamps is not None
    srt, from_end = user_sorted(data, np.flatnonzero(keep), split_rng(seed, "ratio-order"), by_time)
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
    return finish_rows(data, keep, valid_rows, test_rows, seed, eval_negatives, "ratio", info)


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
    return assemble_split(data, _ratio_rows(data, seed, test_ratio, valid_ratio, eval_negatives))


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


def _compute(data: Interactions, cfg: DataConfig, seed: int, ncf_dir: Path | None) -> SplitRows:
    if cfg.split == "loo-time":
        _require_timestamps(data)
        return _leave_one_out_rows(data, seed, cfg.eval_negatives, by_time=True)
    if cfg.split == "loo-random":
        return _leave_one_out_rows(data, seed, cfg.eval_negatives, by_time=False)
    if cfg.split == "ratio":
        return _ratio_rows(data, seed, cfg.test_ratio, cfg.valid_ratio, cfg.eval_negatives)
    if cfg.split == "ncf":
        assert ncf_dir is not None
        return ncf_rows(data, ncf_dir, seed)
    raise ValueError(f"unknown data.split {cfg.split!r}")


def _neg_dtype(n_items: int) -> type[np.unsignedinteger[Any]]:
    if n_items <= np.iinfo(np.uint16).max:
        return np.uint16
    if n_items <= np.iinfo(np.uint32).max:
        return np.uint32
    return np.uint64


def _save(path: Path, key: str, data: Interactions, rows: SplitRows) -> None:
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


def _load(path: Path, key: str, data: Interactions) -> SplitRows | None:
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
    return SplitRows(train_mask, valid_rows, test_rows, negs[0], negs[1], protocol, info)


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
    return assemble_split(data, rows)
