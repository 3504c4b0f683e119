"""The audit attacks a uniform sample of clients, the same whatever order they arrive in."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.experiment.audit import _Recorder
from fedrec.simulation.protected import Observation


def _fill(order: list[int], limit: int, seed: int = 0) -> list[int]:
    rec = _Recorder(limit=limit, seed=seed)
    for c in order:
        rec.client(Observation(client=c, item_ids=torch.tensor([c])))
    return [o.client for o in rec.clients]


@settings(max_examples=30, deadline=None)
@given(st.permutations(list(range(40))), st.integers(1, 45))
def test_the_sample_does_not_depend_on_arrival_order(order: list[int], limit: int) -> None:
    kept = _fill(order, limit)
    assert kept == _fill(sorted(order), limit)
    assert len(kept) == min(limit, 40) and kept == sorted(set(kept))
    # clients behind a sum are sampled the same way
    assert _Recorder(limit=limit).pick(np.array(order)) == kept


def test_the_sample_is_not_the_first_arrivals_and_is_spread_over_all() -> None:
    """The batched engine hands over the busiest clients first: the first 300 of 6,000 were
    the 300 heaviest users. The sample must reach across the whole arrival order."""
    kept = np.array(_fill(list(range(6000)), 300))
    assert len(kept) == 300
    counts, _ = np.histogram(kept, bins=6, range=(0, 6000))
    assert counts.min() > 25 and counts.max() < 75  # 50 expected per sixth
    assert _fill(list(range(6000)), 300, seed=1) != kept.tolist()  # the seed changes it
