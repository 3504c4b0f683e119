"""The SecAgg+ communication graph: a random k-regular Harary graph (Bell et al. 2020, sec. 3).

Hand-written because no library builds this graph from a seed (networkx's Harary graph is not
randomised and would be a heavy dependency for twenty lines of numpy). Nodes are placed on a
ring in an order drawn from the public seed, and each is joined to its k/2 nearest ring
positions on either side. The graph is public: anyone with the seed recomputes it; its
security comes from being fixed before the adversary chooses whom to corrupt.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

__all__ = ["neighbour_graph", "valid_neighbours"]


def valid_neighbours(n: int, k: int) -> int:
    """Round ``k`` up to even (a Harary ring needs it) and cap it at n - 1 (complete graph)."""
    if n < 2:
        raise ValueError("a graph for secure aggregation needs at least two clients")
    if k < 1:
        raise ValueError(f"neighbours must be at least 1, got {k}")
    if k >= n - 1:
        return n - 1
    return min(k + (k % 2), n - 1)


def neighbour_graph(n: int, k: int, seed: bytes) -> npt.NDArray[np.int64]:
    """(n, k) array: row i holds the sorted indices of node i's neighbours."""
    k = valid_neighbours(n, k)
    if k == n - 1:
        full = np.broadcast_to(np.arange(n), (n, n))
        return np.ascontiguousarray(full[~np.eye(n, dtype=bool)].reshape(n, n - 1))
    digest = hashlib.sha256(b"fedrec/secagg/v1/graph" + seed).digest()
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(digest, "little")))
    order = rng.permutation(n)  # order[position] = node
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    half = k // 2
    offsets = np.concatenate([np.arange(1, half + 1), -np.arange(1, half + 1)])
    rows = order[(position[:, None] + offsets[None, :]) % n]
    return np.sort(rows, axis=1).astype(np.int64)
