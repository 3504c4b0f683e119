"""How an update is encoded for upload, and what that costs in bytes.

The encoding is applied to the update itself (not just counted), so a run with float16 or
int8 uploads trains with exactly the precision it reports.
"""

from __future__ import annotations

import torch
from torch import Tensor

ENCODINGS = ("float32", "float16", "int8")
INDEX_BYTES = 4
"""An item id travels as int32 beside its row in a sparse upload."""


def encode_decode(x: Tensor, encoding: str) -> Tensor:
    """The value the server receives for ``x`` (quantised along the last dimension for int8)."""
    if encoding == "float32":
        return x
    if encoding == "float16":
        return x.to(torch.float16).to(x.dtype)
    if encoding == "int8":
        if x.dim() == 0:
            x1 = x.reshape(1)
            return encode_decode(x1, encoding).reshape(())
        scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30) / 127.0
        return torch.round(x / scale).clamp(-127, 127) * scale
    raise ValueError(f"unknown update encoding {encoding!r}; choose one of {ENCODINGS}")


def value_bytes(encoding: str) -> int:
    return {"float32": 4, "float16": 2, "int8": 1}[encoding]


def tensor_bytes(shape: tuple[int, ...], encoding: str) -> int:
    """Bytes of one encoded tensor: values, plus a float32 scale per last-dim row for int8."""
    n = 1
    for s in shape:
        n *= s
    extra = 0
    if encoding == "int8":
        rows = n // shape[-1] if shape else 1
        extra = 4 * rows
    return n * value_bytes(encoding) + extra
