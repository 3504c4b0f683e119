"""The round logic, written once for every way of reaching clients.

A round: select clients, drop the ones that fail, let the runner (simulator or network) get
their aggregated updates, apply the strategy. The server state is plain tensors plus the
numpy generator state, so it checkpoints and resumes bit-identically.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from fedrec.federated.aggregate import Accumulator
from fedrec.federated.selection import Selection
from fedrec.federated.strategies import Strategy

Params = dict[str, Tensor]
IntArray = npt.NDArray[np.int64]


@dataclass
class ServerState:
    round: int
    shared: Params
    strategy_state: dict[str, Tensor]
    rng_state: dict[str, Any]

    @staticmethod
    def initial(shared: Params, strategy: Strategy, seed: int) -> ServerState:
        gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x5E])))
        return ServerState(
            round=0,
            shared={k: v.detach().clone() for k, v in shared.items()},
            strategy_state=strategy.init_state(shared),
            rng_state=dict(gen.bit_generator.state),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "shared": self.shared,
            "strategy_state": self.strategy_state,
            "rng_state": self.rng_state,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ServerState:
        return ServerState(
            round=int(d["round"]),
            shared=dict(d["shared"]),
            strategy_state=dict(d["strategy_state"]),
            rng_state=dict(d["rng_state"]),
        )


@dataclass
class RoundOutcome:
    """What the runner reports back: the sums, and traffic as encoded."""

    accumulator: Accumulator
    bytes_up: IntArray
    """Bytes each participating client uploaded."""
    bytes_down: IntArray
    lost: IntArray | None = None
    """Clients that were sent the round but never answered (a deployment's real dropouts, found
    by timeouts); None: every surviving client answered."""


class ClientRunner(Protocol):
    """Executes the selected clients' updates and returns only their sums.

    ``dropped``: selected clients that fail before uploading (a protocol such as secure
    aggregation set them up and must recover from their absence).
    """

    def run(
        self, clients: IntArray, shared: Params, round_: int, dropped: IntArray | None = None
    ) -> RoundOutcome: ...


SECAGG_ABORTED = "secure aggregation aborted"
"""How a round aborted by SecAgg+ (too few surviving share holders, a corrupted share) starts
its reason, so a run can count them."""


class RoundAbortedError(RuntimeError):
    """The round applies no update (e.g. too few survivors for secure aggregation or for the
    distributed DP noise); the shared model stays as it was. ``released``: whether anything
    derived from the round's inputs reached the server first (then the round is accounted)."""

    def __init__(self, message: str, *, released: bool = False) -> None:
        super().__init__(message)
        self.released = released


class Finalizer(Protocol):
    """Server-side privacy between the sums and the update (noise, counts, accounting)."""

    @property
    def releases_empty_rounds(self) -> bool:
        """Whether a round without participants still releases (and accounts) a noised sum."""
        ...

    def finalize(self, acc: Accumulator, round_: int, participants: IntArray) -> Accumulator: ...


@dataclass
class RoundReport:
    round: int
    selected: int
    dropped: int
    participants: int
    loss: float
    examples: int
    bytes_up: int
    bytes_down: int
    bytes_up_per_client: float
    bytes_down_per_client: float
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.update(d.pop("extra"))
        return d


def run_round(
    state: ServerState,
    *,
    strategy: Strategy,
    selection: Selection,
    runner: ClientRunner,
    n_clients: int,
    per_row_items: bool,
    client_weights: npt.NDArray[np.float64] | None = None,
    finalizer: Finalizer | None = None,
) -> tuple[ServerState, RoundReport]:
    """One federated round; returns the next server state and what happened."""
    start = time.perf_counter()
    gen = np.random.Generator(np.random.PCG64())
    gen.bit_generator.state = state.rng_state
    selected = selection.select(n_clients, gen, client_weights)
    survivors, dropped = selection.drop(selected, gen)
    new_shared, new_strategy_state = state.shared, state.strategy_state
    loss, examples, up, down = float("nan"), 0, 0, 0
    aborted, released = "", False
    if len(survivors) or (finalizer is not None and finalizer.releases_empty_rounds):
        try:
            outcome = runner.run(survivors, state.shared, state.round, dropped=dropped)
            acc = outcome.accumulator
            if outcome.lost is not None and len(outcome.lost):
                survivors = np.setdiff1d(survivors, outcome.lost)
                dropped = np.union1d(dropped, outcome.lost)
            up, down = int(outcome.bytes_up.sum()), int(outcome.bytes_down.sum())
            loss, examples = acc.mean_loss, acc.examples
            if finalizer is not None:
                acc = finalizer.finalize(acc, state.round, survivors)
            if float(acc.weight_total) <= 0:
                raise RoundAbortedError("no client update arrived")
            delta = acc.mean_update(per_row_items)
            with torch.no_grad():
                new_shared, new_strategy_state = strategy.apply(
                    state.shared, delta, state.strategy_state
                )
        except RoundAbortedError as err:
            aborted, released = str(err), err.released
    n = max(len(survivors), 1)
    report = RoundReport(
        round=state.round + 1,
        selected=len(selected),
        dropped=len(dropped),
        participants=len(survivors),
        loss=loss,
        examples=examples,
        bytes_up=up,
        bytes_down=down,
        bytes_up_per_client=up / n,
        bytes_down_per_client=down / n,
        seconds=time.perf_counter() - start,
    )
    if aborted:
        report.extra["aborted"] = aborted
        report.extra["aborted_released"] = released
    return (
        ServerState(
            round=state.round + 1,
            shared=new_shared,
            strategy_state=new_strategy_state,
            rng_state=dict(gen.bit_generator.state),
        ),
        report,
    )
