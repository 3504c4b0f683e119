"""Fixed-point encoding of floats into the ring Z_{2^bits} with stochastic rounding.

Values are clipped to [-clip, clip], scaled to integers in [-levels, levels] and stored in two's
complement, so the wrapped sum of at most ``max_summands`` inputs decodes exactly as a signed
integer. The scale is the largest for which n clipped values cannot wrap (and integers stay
exact in float64), unless the caller fixes it, in which case an overflowing choice is refused.
Rounding is stochastic, hence unbiased, with randomness from an AES-CTR keystream under a fresh
client key rather than numpy's generator.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedrec.privacy.secagg.errors import SecAggConfigError, SecAggInputError
from fedrec.privacy.secagg.masks import mask_stream

__all__ = ["Quantizer"]

_FLOAT_EXACT = 2**52  # beyond this, float64 cannot hold the fractional part to round
_local = threading.local()


def _scratch(count: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Two float64 work buffers of ``count`` entries, kept per thread for the last size."""
    bufs: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = getattr(
        _local, "bufs", None
    )
    if bufs is None or bufs[0].size != count:
        bufs = _local.bufs = (np.empty(count), np.empty(count))
    return bufs


@dataclass(frozen=True)
class Quantizer:
    bits: int
    clip: float
    scale: float  # ring units per 1.0
    levels: int  # largest |quantized value|
    max_summands: int

    @classmethod
    def for_clients(cls, n: int, clip: float, bits: int, scale: float | None = None) -> Quantizer:
        """The quantizer for a sum of at most ``n`` inputs; raises SecAggConfigError when the
        ring cannot hold that sum."""
        if bits not in (32, 64):
            raise SecAggConfigError(f"bits must be 32 or 64, got {bits}")
        if not (math.isfinite(clip) and clip > 0):
            raise SecAggConfigError(f"clip must be positive and finite, got {clip}")
        if n < 1:
            raise SecAggConfigError("at least one summand is needed")
        half = 2 ** (bits - 1) - 1
        if scale is None:
            levels = min(half // n, _FLOAT_EXACT)
            if levels < 1:
                raise SecAggConfigError(
                    f"{n} clients cannot be summed in Z_2^{bits}: use bits=64 or fewer clients"
                )
            return cls(bits, clip, levels / clip, levels, n)
        if not (math.isfinite(scale) and scale > 0):
            raise SecAggConfigError(f"scale must be positive and finite, got {scale}")
        levels = math.ceil(clip * scale)
        if levels > _FLOAT_EXACT:
            raise SecAggConfigError(
                f"scale {scale:g} x clip {clip:g} = {levels} levels exceeds 2^52, where float64 "
                "loses the fraction stochastic rounding needs"
            )
        if n * levels > half:
            raise SecAggConfigError(
                f"overflow: {n} clients x {levels} levels (clip {clip:g} x scale {scale:g}) "
                f"exceeds 2^{bits - 1} - 1, so the sum would wrap in Z_2^{bits}; use scale <= "
                f"{half // n / clip:g}, bits=64, or a smaller clip"
            )
        return cls(bits, clip, scale, levels, n)

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        return np.uint32 if self.bits == 32 else np.uint64

    @property
    def step(self) -> float:
        """Size of one quantization level (the worst-case rounding error per value)."""
        return 1.0 / self.scale

    def quantize(self, x: npt.ArrayLike, key: bytes) -> npt.NDArray[np.unsignedinteger]:
        """Clip, scale and stochastically round; ``key`` (32 random bytes) drives the rounding.

        E[result] = clip(x) * scale up to 2^-32 of a level (the uniforms have 32 bits), or up to
        half an ulp of ``levels`` when levels > 2^21 and y + u is itself rounded.
        """
        v = np.asarray(x, dtype=np.float64)
        if v.ndim != 1:
            raise SecAggInputError(f"expected a 1-D vector, got shape {v.shape}")
        if not np.isfinite(v).all():
            raise SecAggInputError("input has NaN or infinite values")
        y, u = _scratch(v.size)  # per-thread buffers: no page faults for fresh 1 MB arrays
        np.clip(v, -self.clip, self.clip, out=y)
        y *= self.scale
        # floor(y + u), u ~ U[0, 1): rounds up with probability frac(y), hence unbiased.
        np.multiply(mask_stream(v.size, np.uint32).fill(key), 2.0**-32, out=u)
        y += u
        np.floor(y, out=y)
        return y.astype(np.int32 if self.bits == 32 else np.int64).view(self.dtype)

    def dequantize(self, total: npt.NDArray[np.unsignedinteger]) -> npt.NDArray[np.float64]:
        """Signed reading of a ring sum, back in input units."""
        signed = total.view(np.int32 if self.bits == 32 else np.int64)
        return signed.astype(np.float64) / self.scale
