"""The released model as a moving average of the rounds' shared parameters (``ema_decay``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.federated.aggregate import Accumulator
from fedrec.federated.layout import ParamLayout
from fedrec.federated.loop import LoopSettings, LoopState, moving_average, run_rounds
from fedrec.federated.selection import Selection
from fedrec.federated.server import RoundOutcome, ServerState
from fedrec.federated.strategies import make_strategy
from fedrec.models.mf import MF

Params = dict[str, torch.Tensor]


@settings(max_examples=40, deadline=None)
@given(st.floats(0.0, 0.99), st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_moving_average_is_the_debiased_weighted_mean_of_the_rounds(
    decay: float, rounds: int, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    xs = [{"w": torch.randn(3, 2, generator=gen, dtype=torch.float64)} for _ in range(rounds)]
    avg: Params | None = None
    for t, x in enumerate(xs, start=1):
        avg = moving_average(avg, x, decay, t)
    assert avg is not None
    weights = [decay ** (rounds - i) for i in range(1, rounds + 1)]
    expected = sum(w * x["w"] for w, x in zip(weights, xs, strict=True)) / sum(weights)
    torch.testing.assert_close(avg["w"], expected)


class _StepRunner:
    """Every item row moves by (round + 1): the iterates are known in closed form."""

    def __init__(self, layout: ParamLayout, n_items: int) -> None:
        self.layout, self.n_items = layout, n_items

    def run(self, clients: Any, shared: Params, round_: int, dropped: Any = None) -> RoundOutcome:
        acc = Accumulator.zeros(self.layout, shared, self.n_items)
        ids = torch.arange(self.n_items)
        rows = {n: torch.full_like(shared[n], float(round_ + 1)) for n in self.layout.item_rows}
        acc.add_items(ids, rows, torch.ones(self.n_items))
        acc.add_clients(torch.ones(1), 1, 0.0)
        return RoundOutcome(acc, np.zeros(1, np.int64), np.zeros(1, np.int64))


class _Recorder:
    """Validation that remembers which parameters it was shown."""

    def __init__(self) -> None:
        self.seen: list[Params] = []
        self.best: Params | None = None

    def valid(self, state: ServerState) -> dict[str, float]:
        self.seen.append({k: v.clone() for k, v in state.shared.items()})
        return {"m": -float(state.round)}  # the first round evaluated stays the best

    def keep_best(self, state: ServerState) -> None:
        self.best = {k: v.clone() for k, v in state.shared.items()}


@pytest.mark.parametrize("decay", [0.0, 0.6])
def test_validation_and_selection_see_the_average_while_training_continues_raw(
    decay: float,
) -> None:
    model = MF(3, 5, 2)
    layout = ParamLayout.of(model)
    shared = {k: v.detach().clone() for k, v in model.named_parameters() if k in layout.shared}
    loop = run_rounds(
        LoopState(server=ServerState.initial(shared, make_strategy("fedavg"), seed=0)),
        LoopSettings(
            rounds=4,
            eval_every=1,
            patience=0,
            checkpoint_every=0,
            monitor="m",
            per_row_items=False,
            ema_decay=decay,
        ),
        strategy=make_strategy("fedavg"),
        selection=Selection("all"),
        runner=_StepRunner(layout, 5),
        evaluator=(rec := _Recorder()),
        n_clients=1,
    )
    name = layout.item_rows[0]
    # Raw iterates: x_t = x_0 + (1 + ... + t); training continued from them.
    raw = [shared[name] + t * (t + 1) / 2 for t in range(1, 5)]
    torch.testing.assert_close(loop.server.shared[name], raw[-1])
    for t, seen in enumerate(rec.seen, start=1):
        w = [decay ** (t - i) for i in range(1, t + 1)]
        expected = sum(wi * x for wi, x in zip(w, raw[:t], strict=True)) / sum(w)
        torch.testing.assert_close(seen[name], expected)
    assert rec.best is not None
    torch.testing.assert_close(rec.best[name], raw[0])  # round 1 won, as the average saw it
    assert (loop.average is None) == (decay == 0)
