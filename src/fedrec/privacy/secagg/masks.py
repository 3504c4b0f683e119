"""Masks are AES-256-CTR keystreams read as ring elements: a cryptographic PRG (numpy's
generators are predictable from their output), at memory speed thanks to AES-NI.

Every mask key is used for exactly one keystream, so a fixed all-zero counter block is safe.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["MaskStream", "keystream", "mask_stream"]

_ZERO_COUNTER = bytes(16)
_CTR = modes.CTR(_ZERO_COUNTER)  # immutable; built once rather than once per mask


def keystream(key: bytes, nbytes: int) -> bytes:
    """The first ``nbytes`` of AES-256-CTR under ``key`` (a one-off; use MaskStream in loops)."""
    if len(key) != 32:
        raise ValueError("mask keys are 32 bytes (AES-256)")
    enc = Cipher(algorithms.AES(key), modes.CTR(_ZERO_COUNTER)).encryptor()
    return enc.update(bytes(nbytes)) + enc.finalize()


class MaskStream:
    """Reusable buffers so each mask costs one AES pass into memory already mapped, and no
    allocation (3-4x faster than ``keystream`` for 100k-word vectors)."""

    def __init__(self, count: int, dtype: type[np.unsignedinteger]) -> None:
        itemsize = np.dtype(dtype).itemsize
        self._nbytes = count * itemsize
        self._zeros = bytes(self._nbytes)
        self._out = bytearray(self._nbytes + 15)  # update_into wants a block of slack
        self.words: npt.NDArray[np.unsignedinteger] = np.frombuffer(
            self._out, dtype=dtype, count=count
        )

    def fill(self, key: bytes) -> npt.NDArray[np.unsignedinteger]:
        """Keystream of ``key`` as ring elements; valid until the next call."""
        if len(key) != 32:
            raise ValueError("mask keys are 32 bytes (AES-256)")
        enc = Cipher(algorithms.AES(key), _CTR).encryptor()
        enc.update_into(self._zeros, self._out)
        return self.words

    def add(self, acc: npt.NDArray[np.unsignedinteger], key: bytes) -> None:
        np.add(acc, self.fill(key), out=acc)

    def subtract(self, acc: npt.NDArray[np.unsignedinteger], key: bytes) -> None:
        np.subtract(acc, self.fill(key), out=acc)

    def apply(
        self,
        acc: npt.NDArray[np.unsignedinteger],
        plus: Iterable[bytes] = (),
        minus: Iterable[bytes] = (),
    ) -> None:
        """``acc += sum(PRG(k) for k in plus) - sum(PRG(k) for k in minus)``, in place."""
        for key in plus:
            np.add(acc, self.fill(key), out=acc)
        for key in minus:
            np.subtract(acc, self.fill(key), out=acc)


_local = threading.local()


def mask_stream(count: int, dtype: type[np.unsignedinteger]) -> MaskStream:
    """A per-thread MaskStream for this size, reused across calls: building one zero-fills
    two buffers, which costs as much as three masks at 100k words."""
    cache: dict[tuple[int, str], MaskStream] | None = getattr(_local, "streams", None)
    if cache is None:
        cache = _local.streams = {}
    key = (count, np.dtype(dtype).str)
    stream = cache.get(key)
    if stream is None:
        if len(cache) >= 4:  # bound memory when sizes change from round to round
            cache.clear()
        stream = cache[key] = MaskStream(count, dtype)
    return stream
