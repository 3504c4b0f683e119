"""Counter-based randomness: a client's draws depend only on (seed, round, client, counter).

Written by hand (splitmix64) because we need two things no numpy generator gives together:
one vectorized call that draws for thousands of clients at once, and draws for each client
that do not depend on which other clients are in the call. That is what lets the batched
simulator, the one-client reference and a networked client produce the same numbers.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

# Stream tags keep independent uses of the same counters apart.
NEGATIVES = 1
SHUFFLE = 2
PSEUDO_ITEMS = 3
PSEUDO_LABELS = 4


def _mix(z: U64) -> U64:
    """splitmix64's finaliser; updates ``z`` in place (callers pass a fresh array)."""
    t = np.empty_like(z)
    np.right_shift(z, np.uint64(30), out=t)
    z ^= t
    z *= _M1
    np.right_shift(z, np.uint64(27), out=t)
    z ^= t
    z *= _M2
    np.right_shift(z, np.uint64(31), out=t)
    z ^= t
    return z


def hash64(*keys: int | npt.NDArray[np.integer]) -> U64:
    """A 64-bit hash of the keys, broadcast elementwise over array keys."""
    return extend(np.zeros((), dtype=np.uint64), *keys)


def extend(h: U64, *keys: int | npt.NDArray[np.integer]) -> U64:
    """The hash of a prefix whose hash is ``h`` followed by ``keys``:
    ``extend(hash64(*a), *b) == hash64(*a, *b)``.

    Draws that share a prefix (seed, round, stream, client) hash it once per client and
    gather it, rather than rehashing it for each of the client's draws.
    """
    out = np.asarray(h, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in keys:
            z = np.asarray(k).astype(np.int64).view(np.uint64)  # a copy: mixed in place
            z += _GOLDEN
            if z.shape == np.broadcast_shapes(z.shape, out.shape):
                z ^= out
            else:
                z = z ^ out
            out = _mix(np.asarray(z))
    return out


def randint(n: int, *keys: int | npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
    """Integers uniform in [0, n) (bias below 2**-40 for n < 2**24)."""
    return below(n, hash64(*keys))


def below(n: int, h: U64) -> npt.NDArray[np.int64]:
    """Hashes ``h`` mapped to integers uniform in [0, n), as :func:`randint` does."""
    if n < 1:
        raise ValueError(f"randint needs n >= 1, got {n}")
    out: npt.NDArray[np.int64] = (h % np.uint64(n)).view(np.int64)  # < n: same bits
    return out
