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
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash64(*keys: int | npt.NDArray[np.integer]) -> U64:
    """A 64-bit hash of the keys, broadcast elementwise over array keys."""
    with np.errstate(over="ignore"):
        h = np.zeros((), dtype=np.uint64)
        for k in keys:
            arr = np.asarray(k).astype(np.int64).view(np.uint64)
            h = _mix(h ^ (arr + _GOLDEN))
    return np.asarray(h, dtype=np.uint64)


def randint(n: int, *keys: int | npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
    """Integers uniform in [0, n) (bias below 2**-40 for n < 2**24)."""
    if n < 1:
        raise ValueError(f"randint needs n >= 1, got {n}")
    return (hash64(*keys) % np.uint64(n)).astype(np.int64)
