"""The rounds around :func:`~fedrec.federated.server.run_round`: evaluation, model selection on
validation, early stopping, the privacy budget, divergence and checkpoints.

Written once for every way of reaching clients: the simulator and the Flower deployment pass
their own runner (who trains) and evaluator (who computes metrics with the clients' private
state), and get the same stopping rules, records and checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from fedrec.federated.selection import Selection
from fedrec.federated.server import ClientRunner, ServerState, run_round
from fedrec.federated.strategies import Strategy
from fedrec.privacy.server import ServerPrivacy


class Evaluator(Protocol):
    """Validation metrics of the current model, computed with every client's private state."""

    def valid(self, state: ServerState) -> dict[str, float]: ...

    def keep_best(self, state: ServerState) -> None:
        """``state`` is the new best round: remember what the final test needs."""
        ...


@dataclass(frozen=True)
class LoopSettings:
    rounds: int
    eval_every: int
    patience: int
    checkpoint_every: int
    monitor: str
    per_row_items: bool
    target_epsilon: float | None = None
    delta: float | None = None
    ema_decay: float = 0.0
    """See ``FederatedConfig.ema_decay``."""


@dataclass
class LoopState:
    """Everything the loop carries from round to round (and checkpoints)."""

    server: ServerState
    history: list[dict[str, Any]] = field(default_factory=list)
    best_value: float = -math.inf
    best_round: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    stale: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    round_seconds: list[float] = field(default_factory=list)
    stop_reason: str = ""
    average: dict[str, torch.Tensor] | None = None
    """The moving average of the shared parameters (``LoopSettings.ema_decay > 0``)."""

    def released(self) -> ServerState:
        """The server state validation, selection and the released model use: the moving
        average of the shared parameters when there is one."""
        if self.average is None:
            return self.server
        return replace(self.server, shared=self.average)

    def to_dict(self) -> dict[str, Any]:
        return {
            "server": self.server.to_dict(),
            "history": self.history,
            "best": {"value": self.best_value, "round": self.best_round, "valid": self.best_valid},
            "stale": self.stale,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "round_seconds": self.round_seconds,
            "average": self.average,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> LoopState:
        best = d["best"]
        return LoopState(
            server=ServerState.from_dict(d["server"]),
            history=list(d["history"]),
            best_value=float(best["value"]),
            best_round=int(best["round"]),
            best_valid=dict(best["valid"]),
            stale=int(d["stale"]),
            bytes_up=int(d["bytes_up"]),
            bytes_down=int(d["bytes_down"]),
            round_seconds=list(d.get("round_seconds", [])),
            average=d.get("average"),
        )


def moving_average(
    average: dict[str, torch.Tensor] | None,
    shared: dict[str, torch.Tensor],
    decay: float,
    rounds: int,
) -> dict[str, torch.Tensor]:
    """The debiased moving average after ``rounds`` rounds, the last of which gave ``shared``:
    round ``i``'s parameters weigh ``decay**(rounds - i)``, normalised to sum to one, so the
    first round's average is that round's parameters (no pull toward the initial model)."""
    if average is None or rounds <= 1:
        return {k: v.detach().clone() for k, v in shared.items()}
    step = (1.0 - decay) / (1.0 - decay**rounds)
    return {k: a + step * (shared[k] - a) for k, a in average.items()}


def aborted_rounds(history: list[dict[str, Any]]) -> dict[str, int]:
    """How many rounds aborted, split by whether anything derived from their inputs reached the
    server first (those are accounted) or nothing did (e.g. stopped before unmasking)."""
    aborted = [r for r in history if r.get("aborted")]
    released = sum(bool(r.get("aborted_released")) for r in aborted)
    return {
        "total": len(aborted),
        "nothing_released": len(aborted) - released,
        "released_and_accounted": released,
    }


def privacy_record(privacy: ServerPrivacy) -> dict[str, Any]:
    """The per-round privacy fields of a metrics record."""
    rep = privacy.report()
    keys = ("epsilon", "epsilon_vs_server", "epsilon_released_model", "clip")
    return {k: rep[k] for k in keys if k in rep and rep[k] is not None}


def run_rounds(
    loop: LoopState,
    s: LoopSettings,
    *,
    strategy: Strategy,
    selection: Selection,
    runner: ClientRunner,
    evaluator: Evaluator,
    n_clients: int,
    privacy: ServerPrivacy | None = None,
    client_weights: npt.NDArray[np.float64] | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    save: Callable[[LoopState], None] | None = None,
) -> LoopState:
    """Run rounds from ``loop.server.round`` until ``s.rounds``, a stop rule, or the budget;
    returns the final loop state (``stop_reason`` says why it ended)."""
    while loop.server.round < s.rounds:
        if privacy is not None and privacy.budget_exhausted():
            against = "the server" if privacy.adversary_is_server else "the released model"
            loop.stop_reason = (
                f"privacy budget spent: one more round would exceed epsilon "
                f"{s.target_epsilon} at delta {s.delta} (against {against})"
            )
            break
        loop.server, report = run_round(
            loop.server,
            strategy=strategy,
            selection=selection,
            runner=runner,
            n_clients=n_clients,
            per_row_items=s.per_row_items,
            client_weights=client_weights,
            finalizer=privacy,
        )
        if privacy is not None:
            report.extra.update(privacy_record(privacy))
        state = loop.server
        if not all(bool(torch.isfinite(v).all()) for v in state.shared.values()):
            # Diverged: no later round can be selected, and evaluating it would fail; the
            # best round chosen on validation so far is what the run reports.
            loop.stop_reason = f"diverged: non-finite shared parameters after round {state.round}"
            loop.history.append(report.as_dict())
            if on_round is not None:
                on_round(loop.history[-1])
            break
        if s.ema_decay > 0:
            with torch.no_grad():
                loop.average = moving_average(loop.average, state.shared, s.ema_decay, state.round)
        loop.round_seconds.append(report.seconds)
        loop.bytes_up += report.bytes_up
        loop.bytes_down += report.bytes_down
        record = report.as_dict()
        stop = False
        if state.round % s.eval_every == 0 or state.round == s.rounds:
            released = loop.released()
            metrics = evaluator.valid(released)
            if s.monitor not in metrics:
                raise KeyError(
                    f"train.monitor {s.monitor!r} is not a metric (have {sorted(metrics)})"
                )
            record.update({f"valid/{k}": v for k, v in metrics.items()})
            if metrics[s.monitor] > loop.best_value:
                loop.best_value, loop.best_round = metrics[s.monitor], state.round
                loop.best_valid = dict(metrics)
                evaluator.keep_best(released)
                loop.stale = 0
                record["best"] = True
            else:
                loop.stale += 1
                record["best"] = False
            stop = s.patience > 0 and loop.stale >= s.patience
            if stop:
                loop.stop_reason = f"early stopping: {s.patience} evaluations without improvement"
        loop.history.append(record)
        if on_round is not None:
            on_round(record)
        last = stop or state.round == s.rounds
        if (
            save is not None
            and s.checkpoint_every
            and (state.round % s.checkpoint_every == 0 or last)
        ):
            save(loop)
        if stop:
            break
    if not loop.stop_reason:
        loop.stop_reason = "all rounds run"
    return loop
