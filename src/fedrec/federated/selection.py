"""Which clients take part in a round, and which of them drop out before answering."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]

SAMPLINGS = ("all", "fraction", "count", "poisson")


@dataclass(frozen=True)
class Selection:
    """Client sampling.

    ``poisson`` includes each client independently with probability ``rate`` (the sampling
    DP accounting assumes for amplification); ``fraction`` and ``count`` draw a fixed-size
    sample without replacement, uniformly or proportional to ``weights``.
    """

    sampling: str = "all"
    fraction: float = 0.1
    count: int = 100
    rate: float = 0.1
    weighted: bool = False
    dropout: float = 0.0
    """Fraction of selected clients that fail to answer (simulated faults)."""

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ValueError(
                f"unknown client sampling {self.sampling!r}; choose one of {SAMPLINGS}"
            )
        if not 0 < self.fraction <= 1:
            raise ValueError(f"sampling fraction must be in (0, 1], got {self.fraction}")
        if not 0 < self.rate <= 1:
            raise ValueError(f"poisson rate must be in (0, 1], got {self.rate}")
        if self.count < 1:
            raise ValueError(f"sampling count must be >= 1, got {self.count}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def select(
        self,
        n_clients: int,
        rng: np.random.Generator,
        weights: npt.NDArray[np.float64] | None = None,
    ) -> IntArray:
        """Sorted ids of the selected clients."""
        ids = np.arange(n_clients, dtype=np.int64)
        if self.sampling == "all":
            return ids
        if self.sampling == "poisson":
            return ids[rng.random(n_clients) < self.rate]
        size = (
            max(1, round(self.fraction * n_clients))
            if self.sampling == "fraction"
            else min(self.count, n_clients)
        )
        p = None
        if self.weighted:
            if weights is None:
                raise ValueError("weighted sampling needs client weights")
            p = weights / weights.sum()
        return np.sort(rng.choice(n_clients, size=size, replace=False, p=p)).astype(np.int64)

    def drop(self, selected: IntArray, rng: np.random.Generator) -> tuple[IntArray, IntArray]:
        """(survivors, dropped) among the selected clients."""
        if self.dropout == 0 or len(selected) == 0:
            return selected, selected[:0]
        gone = rng.random(len(selected)) < self.dropout
        return selected[~gone], selected[gone]
