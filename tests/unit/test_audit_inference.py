"""Item inference against a popularity prior, and popularity-matched membership inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.experiment.audit import (
    _Recorder,
    item_inference,
    membership_advantage,
    membership_inference,
)
from fedrec.simulation.protected import Observation
from tests.synthetic import two_taste_split


def test_membership_advantage_by_hand() -> None:
    # Thresholds below 3, 2.5, 2, 1, 0: TPR - FPR = 1/3, -1/6, 1/6, 1/2, 0.
    assert membership_advantage(np.array([3.0, 2.0, 1.0]), np.array([2.5, 0.0])) == 0.5
    # All tied: the only threshold takes everyone.
    assert membership_advantage(np.ones(2), np.ones(1)) == 0.0


def test_item_inference_is_measured_against_popularity() -> None:
    n = 10
    popularity = np.arange(n, 0, -1).astype(np.int64)  # item i has 10 - i interactions
    rec = _Recorder(limit=5)
    bias = torch.tensor([[1.0], [1.0], [-1.0]])
    rec.client(
        Observation(client=0, item_ids=torch.tensor([7, 8, 0]), rows={"item_bias.weight": bias})
    )
    out, _ = item_inference(rec, {0: np.array([7, 8])}, n, None, popularity)
    # Prior without the client's own interactions: items 7, 8 score 2 and 1 against
    # 10, 9, 8, 7, 6, 5, 4 and 1 (item 9): (1 + 0.5) / 16.
    assert out["popularity_auc_mean"] == pytest.approx(1.5 / 16)
    assert out["attack_with_prior_auc_mean"] == 1.0
    assert out["advantage_over_popularity_mean"] == pytest.approx(1 - 1.5 / 16)


class _Lookup(torch.nn.Module):
    """Scores from a table: a model that has memorised exactly what the table says."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.table[users, items]


def test_membership_compares_with_never_interacted_items_of_the_same_popularity() -> None:
    split = two_taste_split(n_users=60, n_items=40, per_user=8)
    train = split.train
    memorised = torch.zeros(train.n_users, train.n_items)
    memorised[torch.from_numpy(train.users), torch.from_numpy(train.items)] = 1.0
    out = membership_inference(_Lookup(memorised), split, 60, seed=0)  # type: ignore[arg-type]
    assert out["auc"] == 1.0 and out["advantage"] == 1.0  # so no non-member is a member
    for held in (split.valid, split.test):
        seen = torch.zeros_like(memorised)
        seen[torch.from_numpy(held.users), torch.from_numpy(held.items)] = 1.0
        # Held-out items score 2, above every member: one drawn as a non-member would push
        # the AUC below 1 (the old audit compared members with exactly these).
        lookup = _Lookup(memorised + 2 * seen)
        out2 = membership_inference(lookup, split, 60, seed=0)  # type: ignore[arg-type]
        assert out2["auc"] == 1.0
    pop = torch.from_numpy(np.bincount(train.items, minlength=train.n_items)).float()
    by_popularity = membership_inference(
        _Lookup(pop.expand(train.n_users, -1)),  # type: ignore[arg-type]
        split,
        60,
        seed=0,
    )
    assert abs(by_popularity["auc"] - 0.5) < 0.15


def test_an_attack_worse_than_the_prior_has_no_advantage() -> None:
    popularity = np.arange(10, 0, -1).astype(np.int64)
    rec = _Recorder(limit=5)
    bias = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])
    ids = torch.tensor([8, 9, 0, 1])
    rec.client(Observation(client=0, item_ids=ids, rows={"item_bias.weight": bias}))
    out, _ = item_inference(rec, {0: np.array([0, 1])}, 10, None, popularity)
    # Items 0 and 1 rank above the six unseen items only (6/8); by popularity 9 and 8 beat
    # everything but a tie with item 2: (8 + 7.5) / 16.
    assert out["attack_minus_popularity_auc_mean"] == pytest.approx(0.75 - 15.5 / 16)
    assert out["advantage_over_popularity_mean"] == 0.0
