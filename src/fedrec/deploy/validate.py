"""Checks on everything a client sends before it can touch the server's sums.

A client may be broken or hostile. An upload is accepted only if it answers this round's
request (round number and the request's nonce, so a replayed message from an old round is
refused), fits the size limit, and has exactly the names, dtypes and shapes of the model's
shared parameters with finite values and item ids inside the catalogue. Anything else raises
:class:`RejectedUploadError` with the reason; the server logs it and goes on without that client.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedrec.deploy.payload import Params, Payload
from fedrec.federated.layout import ParamLayout


class RejectedUploadError(ValueError):
    """An upload the server refuses; the message names the problem."""


def check_reply(p: Payload, *, round_: int, nonce: str, max_bytes: int) -> None:
    """The reply answers this round's request and is not oversize."""
    got_round, got_nonce = p.meta.get("round"), p.meta.get("nonce")
    if got_round != round_ or got_nonce != nonce:
        raise RejectedUploadError(
            f"reply is for round {got_round} (nonce {str(got_nonce)[:8]}), not round {round_} "
            "(a replayed or stale message)"
        )
    if p.nbytes > max_bytes:
        raise RejectedUploadError(f"upload of {p.nbytes} bytes exceeds the limit of {max_bytes}")


def _float_array(p: Payload, key: str, shape: tuple[int, ...]) -> Tensor:
    a = p.arrays.get(key)
    if a is None:
        raise RejectedUploadError(f"missing {key!r}")
    if a.dtype != np.float32:
        raise RejectedUploadError(f"{key!r} has dtype {a.dtype}, expected float32")
    if tuple(a.shape) != shape:
        raise RejectedUploadError(f"{key!r} has shape {tuple(a.shape)}, expected {shape}")
    if not np.isfinite(a).all():
        raise RejectedUploadError(f"{key!r} holds NaN or infinite values")
    return torch.from_numpy(np.array(a))


def _count(p: Payload, key: str) -> int:
    v = p.meta.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise RejectedUploadError(f"{key!r} must be a non-negative integer, got {v!r}")
    return v


def _loss(p: Payload) -> float:
    v = p.meta.get("loss")
    if not isinstance(v, float | int) or isinstance(v, bool):
        raise RejectedUploadError(f"'loss' must be a number, got {v!r}")
    f = float(v)
    if not (math.isnan(f) or (math.isfinite(f) and f >= 0)):
        raise RejectedUploadError(
            f"'loss' must be >= 0 and finite (or NaN: no local step), got {f}"
        )
    return f


def sparse_update(
    p: Payload, layout: ParamLayout, shared: Params, n_items: int
) -> tuple[Tensor, Params, Params, int, float]:
    """(item ids, item row deltas, dense deltas, examples, loss) of a plain upload."""
    ids = p.arrays.get("item_ids")
    if ids is None:
        raise RejectedUploadError("missing 'item_ids'")
    if ids.dtype != np.int64 or ids.ndim != 1:
        raise RejectedUploadError(f"'item_ids' must be 1-D int64, got {ids.ndim}-D {ids.dtype}")
    if len(ids) and (ids.min() < 0 or ids.max() >= n_items):
        raise RejectedUploadError(f"'item_ids' outside the catalogue [0, {n_items})")
    if len(np.unique(ids)) != len(ids):
        raise RejectedUploadError("'item_ids' repeats an item")
    rows = {
        n: _float_array(p, f"item_deltas/{n}", (len(ids), *shared[n].shape[1:]))
        for n in layout.item_rows
    }
    dense = {n: _float_array(p, f"dense/{n}", tuple(shared[n].shape)) for n in layout.dense}
    extra = {
        k for k in p.arrays if k != "item_ids" and not k.startswith(("item_deltas/", "dense/"))
    }
    known = {f"item_deltas/{n}" for n in layout.item_rows} | {f"dense/{n}" for n in layout.dense}
    unknown = extra | ({k for k in p.arrays if k.startswith(("item_deltas/", "dense/"))} - known)
    if unknown:
        raise RejectedUploadError(f"unexpected arrays {sorted(unknown)[:4]}")
    return torch.from_numpy(np.array(ids)), rows, dense, _count(p, "n_examples"), _loss(p)


def plain_vector(p: Payload, dim: int) -> tuple[Tensor, int, float]:
    """(vector, examples, loss) of a protected upload sent in the clear (local DP)."""
    vec = _float_array(p, "vector", (dim,))
    return vec, _count(p, "n_examples"), _loss(p)


def blob(p: Payload, key: str = "message") -> bytes:
    v: Any = p.meta.get(key)
    if not isinstance(v, bytes):
        raise RejectedUploadError(f"{key!r} must be bytes, got {type(v).__name__}")
    return v
