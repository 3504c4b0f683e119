"""Shamir t-of-n secret sharing over the prime field GF(2^31 - 1), vectorised with numpy.

Hand-written because `cryptography` has no secret sharing and no maintained Python package
shares over a prime field in batch (pycryptodome's works on one 16-byte block at a time in
GF(2^128) in pure Python). p = 2^31 - 1 keeps every product below 2^62, so uint64 numpy
arithmetic is exact. A byte secret is cut into 30-bit limbs (each < p) and every limb is shared
with its own random polynomial, so any t - 1 shares are independent of the secret.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

__all__ = [
    "LIMB_BITS",
    "PRIME",
    "combine",
    "decode_secrets",
    "encode_secrets",
    "lagrange_at_zero",
    "limbs_for",
    "share_bytes",
    "share_from_bytes",
    "shares_from_bytes",
    "split",
]

PRIME = 2**31 - 1
LIMB_BITS = 30
_P = np.uint64(PRIME)

U64 = npt.NDArray[np.uint64]


def limbs_for(nbytes: int) -> int:
    return math.ceil(8 * nbytes / LIMB_BITS)


def encode_secrets(secrets: npt.NDArray[np.uint8]) -> U64:
    """(m, nbytes) bytes -> (m, limbs) field elements, little-endian 30-bit limbs."""
    m, nbytes = secrets.shape
    n_limbs = limbs_for(nbytes)
    bits = np.zeros((m, n_limbs * 32), dtype=np.uint8).reshape(m, n_limbs, 32)
    flat = np.unpackbits(secrets, axis=1, bitorder="little")
    padded = np.zeros((m, n_limbs * LIMB_BITS), dtype=np.uint8)
    padded[:, : 8 * nbytes] = flat
    bits[:, :, :LIMB_BITS] = padded.reshape(m, n_limbs, LIMB_BITS)
    words = np.packbits(bits.reshape(m, -1), axis=1, bitorder="little")
    return words.view("<u4").astype(np.uint64).reshape(m, n_limbs)


def decode_secrets(limbs: U64, nbytes: int) -> npt.NDArray[np.uint8]:
    """Inverse of ``encode_secrets``; raises ValueError when limbs cannot come from a secret
    (a cheap check that catches most reconstructions from wrong shares)."""
    m, n_limbs = limbs.shape
    if n_limbs != limbs_for(nbytes):
        raise ValueError(f"{n_limbs} limbs cannot hold a {nbytes}-byte secret")
    if np.any(limbs >= np.uint64(1 << LIMB_BITS)):
        raise ValueError("a limb exceeds 30 bits: the shares are inconsistent")
    words = limbs.astype("<u4").view(np.uint8).reshape(m, n_limbs * 4)
    bits = np.unpackbits(words, axis=1, bitorder="little").reshape(m, n_limbs, 32)
    flat = bits[:, :, :LIMB_BITS].reshape(m, n_limbs * LIMB_BITS)
    if np.any(flat[:, 8 * nbytes :]):
        raise ValueError("padding bits are set: the shares are inconsistent")
    return np.packbits(flat[:, : 8 * nbytes], axis=1, bitorder="little")


def _uniform(shape: tuple[int, ...], randbytes: Callable[[int], bytes]) -> U64:
    """Exactly uniform elements of GF(p) by rejection (only 2^31 - 1 itself is rejected)."""
    count = math.prod(shape)
    out = np.frombuffer(randbytes(4 * count), dtype="<u4").astype(np.uint64) & np.uint64(PRIME)
    bad = np.flatnonzero(out == _P)
    while bad.size:
        fresh = np.frombuffer(randbytes(4 * bad.size), dtype="<u4").astype(np.uint64)
        out[bad] = fresh & np.uint64(PRIME)
        bad = bad[out[bad] == _P]
    return out.reshape(shape)


def split(
    limbs: U64,
    xs: npt.ArrayLike,
    t: int,
    randbytes: Callable[[int], bytes] = os.urandom,
) -> U64:
    """Shares of m secrets for holders at x-coordinates ``xs``: (m, L) -> (m, len(xs), L).

    Any ``t`` of them reconstruct; the polynomial coefficients come from ``randbytes`` (the OS
    CSPRNG by default), since the privacy of t - 1 shares rests on them being uniform.
    """
    x = np.asarray(xs, dtype=np.uint64)
    if t < 1 or t > x.size:
        raise ValueError(f"threshold {t} is outside 1..{x.size}")
    if x.size != np.unique(x).size or np.any(x == 0) or np.any(x >= _P):
        raise ValueError("x-coordinates must be distinct and in 1..p-1")
    m, n_limbs = limbs.shape
    coeffs = _uniform((t - 1, m, 1, n_limbs), randbytes)
    xb = x.reshape(1, -1, 1)
    acc = np.zeros((m, x.size, n_limbs), dtype=np.uint64)
    for c in coeffs[::-1]:  # Horner, highest degree first
        acc = (acc * xb + c) % _P
    return (acc * xb + limbs[:, None, :]) % _P


def _inverse(a: U64) -> U64:
    """a^(p-2) mod p, vectorised square-and-multiply (Fermat)."""
    result = np.ones_like(a)
    base = a % _P
    e = PRIME - 2
    while e:
        if e & 1:
            result = (result * base) % _P
        base = (base * base) % _P
        e >>= 1
    return result


def lagrange_at_zero(xs: U64) -> U64:
    """Lagrange weights at x = 0 for each row of x-coordinates: (m, t) -> (m, t)."""
    m, t = xs.shape
    num = np.ones((m, t), dtype=np.uint64)
    den = np.ones((m, t), dtype=np.uint64)
    for j in range(t):
        xj = xs[:, j : j + 1]
        other = np.arange(t) != j
        num = np.where(other, (num * xj) % _P, num)
        den = np.where(other, (den * ((xj + _P - xs) % _P)) % _P, den)
    if np.any(den == 0):
        raise ValueError("repeated x-coordinates")
    return (num * _inverse(den)) % _P


def combine(xs: npt.ArrayLike, shares: U64) -> U64:
    """Secrets from t shares each: xs (m, t), shares (m, t, L) -> (m, L)."""
    x = np.asarray(xs, dtype=np.uint64)
    if x.ndim == 1:
        x = x[None, :]
        shares = shares[None, ...]
    weights = lagrange_at_zero(x)
    acc = np.zeros((shares.shape[0], shares.shape[2]), dtype=np.uint64)
    for i in range(x.shape[1]):
        acc = (acc + weights[:, i : i + 1] * shares[:, i, :]) % _P
    return acc


def share_bytes(share: U64) -> bytes:
    """One holder's share of one secret, as 4-byte little-endian limbs."""
    return share.astype("<u4").tobytes()


def shares_from_bytes(data: bytes, n_limbs: int) -> U64:
    """Many concatenated shares at once: (count, n_limbs); ValueError on a bad limb."""
    if len(data) % (4 * n_limbs):
        raise ValueError(f"{len(data)} bytes is not a whole number of {4 * n_limbs}-byte shares")
    limbs = np.frombuffer(data, dtype="<u4").reshape(-1, n_limbs)
    if np.any(limbs >= PRIME):
        raise ValueError("share limb is not an element of GF(2^31 - 1)")
    return limbs.astype(np.uint64)


def share_from_bytes(data: bytes) -> U64:
    """Parse ``share_bytes``; raises ValueError on a limb that is not a field element."""
    if len(data) % 4:
        raise ValueError(f"share length {len(data)} is not a multiple of 4")
    limbs = np.frombuffer(data, dtype="<u4").astype(np.uint64)
    if np.any(limbs >= _P):
        raise ValueError("share limb is not an element of GF(2^31 - 1)")
    return limbs
