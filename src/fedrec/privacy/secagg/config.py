"""What every party of a round agrees on before it starts: the configuration, and the public
parameters derived from it (graph, threshold, quantizer, session id)."""

from __future__ import annotations

import hashlib
import math
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from fedrec.privacy.secagg.errors import SecAggConfigError
from fedrec.privacy.secagg.graph import neighbour_graph, valid_neighbours
from fedrec.privacy.secagg.params import (
    SecAggParams,
    SecAggParamsWarning,
    analyse,
    derive,
    smallest_secure_threshold,
)
from fedrec.privacy.secagg.quantize import Quantizer
from fedrec.privacy.secagg.shamir import PRIME

__all__ = ["MAX_CLIENT_ID", "RoundParams", "SecAggConfig", "seed_bytes"]

MAX_CLIENT_ID = 2**63 - 1


@dataclass(frozen=True)
class SecAggConfig:
    """Knobs of a SecAgg+ round.

    neighbours: k, the degree of the graph; None -> derived with the threshold (``params``, Bell
        et al. 2020 sec. 4) from max_dropout, collusion, target_failure and security_bits. Odd
        k is rounded up to even, and k >= n - 1 means the complete graph (plain SecAgg).
    threshold: fraction of a client's k + 1 share holders (its neighbours and itself) that must
        survive to reconstruct its secrets: t = floor(threshold * (k + 1)) + 1, at least 2 and
        at most k + 1. None -> the smallest t the security analysis allows for this k, which
        keeps t > (k + 1) / 2 plus the colluding neighbours, so the holders can never hand over
        t shares of both of a client's secrets (self-mask seed and mask key), each answering
        once. A hand-set k or t that the analysis finds short of the target or insecure warns.
    max_dropout: the dropout rate the parameters are chosen to survive.
    collusion: fraction of the round's clients assumed to collude with the server.
    target_failure: acceptable probability that a round aborts for want of share holders.
    security_bits: sigma; the adversary learns more than the sum with probability <= 2^-sigma.
    clip: inputs are clipped to [-clip, clip] before quantization (silently, as DP clipping).
    bits: the ring Z_{2^bits}, 32 or 64.
    scale: ring units per 1.0; None -> the largest that cannot overflow with n clients.
    """

    neighbours: int | None = None
    threshold: float | None = None
    max_dropout: float = 0.1
    collusion: float = 0.01
    target_failure: float = 1e-6
    security_bits: float = 40.0
    clip: float = 1.0
    bits: int = 32
    scale: float | None = None

    def __post_init__(self) -> None:
        if self.neighbours is not None and self.neighbours < 1:
            raise SecAggConfigError(f"neighbours must be >= 1, got {self.neighbours}")
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise SecAggConfigError(f"threshold must be in (0, 1], got {self.threshold}")
        if not 0.0 <= self.max_dropout < 1.0:
            raise SecAggConfigError(f"max_dropout must be in [0, 1), got {self.max_dropout}")
        if not 0.0 <= self.collusion < 0.5:
            raise SecAggConfigError(f"collusion must be in [0, 0.5), got {self.collusion}")
        if not 0.0 < self.target_failure < 1.0:
            raise SecAggConfigError(f"target_failure must be in (0, 1), got {self.target_failure}")
        if not self.security_bits > 0:
            raise SecAggConfigError(f"security_bits must be > 0, got {self.security_bits}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise SecAggConfigError(f"clip must be positive and finite, got {self.clip}")
        if self.bits not in (32, 64):
            raise SecAggConfigError(f"bits must be 32 or 64, got {self.bits}")
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise SecAggConfigError(f"scale must be positive and finite, got {self.scale}")

    def degree(self, n: int) -> int:
        return self.analysis(n).k

    def reconstruction_threshold(self, n: int) -> int:
        return self.analysis(n).t

    def analysis(self, n: int) -> SecAggParams:
        """(k, t) for a round of n clients and what the analysis predicts for them."""
        return _analysis(self, n)


@lru_cache(maxsize=1024)
def _analysis(config: SecAggConfig, n: int) -> SecAggParams:
    """Cached, so a hand-set pair that misses the target warns once per round size."""
    c = config
    model = (c.max_dropout, c.collusion, c.target_failure, c.security_bits)
    if c.neighbours is None and c.threshold is None:
        derived = derive(n, *model)
        _warn(derived)  # only small rounds at high dropout miss the target
        return derived
    k = derive(n, *model).k if c.neighbours is None else valid_neighbours(n, c.neighbours)
    if c.threshold is not None:
        t = min(k + 1, max(2, math.floor(c.threshold * (k + 1) + 1e-9) + 1))
    else:
        t = smallest_secure_threshold(n, k, c.max_dropout, c.collusion, c.security_bits)
    result = analyse(n, k, t, *model)
    _warn(result)
    return result


def _warn(result: SecAggParams) -> None:
    for problem in result.problems():
        warnings.warn(problem, SecAggParamsWarning, stacklevel=5)


def seed_bytes(seed: bytes | int) -> bytes:
    if isinstance(seed, bytes):
        return seed
    if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0:
        return seed.to_bytes(max(8, (seed.bit_length() + 7) // 8), "big")
    raise SecAggConfigError(f"seed must be bytes or a non-negative int, got {seed!r}")


@dataclass(frozen=True)
class RoundParams:
    """Public parameters of one round, identical at the server and at every client."""

    round_: int
    client_ids: tuple[int, ...]  # sorted
    dim: int
    config: SecAggConfig
    k: int
    t: int
    quantizer: Quantizer
    session_id: bytes
    graph: npt.NDArray[np.int64] = field(repr=False, compare=False)
    index: dict[int, int] = field(repr=False, compare=False)
    neighbour_map: dict[int, tuple[int, ...]] = field(repr=False, compare=False)

    @classmethod
    def create(
        cls,
        client_ids: Sequence[int],
        dim: int,
        config: SecAggConfig,
        round_: int,
        seed: bytes | int,
    ) -> RoundParams:
        ids = sorted(int(c) for c in client_ids)
        n = len(ids)
        if n < 2:
            raise SecAggConfigError(f"secure aggregation needs at least 2 clients, got {n}")
        if len(set(ids)) != n:
            raise SecAggConfigError("client ids are not unique")
        if ids[0] < 0 or ids[-1] > MAX_CLIENT_ID:
            raise SecAggConfigError(f"client ids must be in 0..2^63-1, got {ids[0]}..{ids[-1]}")
        if n >= PRIME - 1:
            raise SecAggConfigError("too many clients for the Shamir field")
        if not 1 <= dim < 2**32:
            raise SecAggConfigError(f"dim must be in 1..2^32-1, got {dim}")
        if not 0 <= round_ <= MAX_CLIENT_ID:
            raise SecAggConfigError(f"round must be in 0..2^63-1, got {round_}")
        seed_b = seed_bytes(seed)
        k = config.degree(n)
        t = config.reconstruction_threshold(n)
        quantizer = Quantizer.for_clients(n, config.clip, config.bits, config.scale)
        h = hashlib.sha256(b"fedrec/secagg/v1/session")
        h.update(struct.pack(">QQIIIIQ", round_, n, dim, config.bits, k, t, len(seed_b)))
        h.update(seed_b)
        h.update(struct.pack(">dd", config.clip, quantizer.scale))
        h.update(np.asarray(ids, dtype=">u8").tobytes())
        graph = neighbour_graph(n, k, seed_b + struct.pack(">Q", round_))
        return cls(
            round_=round_,
            client_ids=tuple(ids),
            dim=dim,
            config=config,
            k=k,
            t=t,
            quantizer=quantizer,
            session_id=h.digest(),
            graph=graph,
            index={c: i for i, c in enumerate(ids)},
            neighbour_map={
                c: tuple(ids[j] for j in row) for c, row in zip(ids, graph.tolist(), strict=True)
            },
        )

    @property
    def n(self) -> int:
        return len(self.client_ids)

    def neighbours(self, client_id: int) -> tuple[int, ...]:
        """Sorted ids of the client's k neighbours in the public graph."""
        return self.neighbour_map[client_id]

    def x_coord(self, client_id: int) -> int:
        """Where this client's shares are evaluated: its rank + 1 (distinct and non-zero)."""
        return self.index[client_id] + 1
