"""The federated engine's fast paths compute exactly what the general ones do."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from fedrec.config import ModelConfig
from fedrec.data.table import Interactions
from fedrec.federated import rng
from fedrec.federated.client import (
    LocalSettings,
    LocalTrainer,
    _add_rows,
    _sub_rows_,
    train_clients,
)
from fedrec.federated.layout import ParamLayout
from fedrec.federated.partition import client_groups, cross_device, random_silos
from fedrec.federated.plan import _stable_argsort
from fedrec.models.base import Recommender
from fedrec.models.factory import build_model
from fedrec.models.mf import MF
from fedrec.models.pfedrec import PFedRec
from tests.model_names import FEDERATED_MODEL_NAMES

N_USERS, N_ITEMS = 24, 30


def _train(seed: int = 0, n: int = 260) -> Interactions:
    gen = np.random.default_rng(seed)
    keys = np.unique(gen.integers(0, N_USERS, n) * N_ITEMS + gen.integers(0, N_ITEMS, n))
    users, items = keys // N_ITEMS, keys % N_ITEMS
    return Interactions(
        name="syn",
        users=users,
        items=items,
        ratings=gen.integers(1, 6, len(users)).astype(np.float32),
        timestamps=None,
        user_ids=np.arange(N_USERS),
        item_ids=np.arange(N_ITEMS),
    )


class _RowwisePFedRec(PFedRec):
    """PFedRec scored one row at a time: the flat path for models without dense parameters."""

    broadcast_rows = False


MODELS = {
    "mf": lambda: MF(N_USERS, N_ITEMS, 6),
    "mf-nobias": lambda: MF(N_USERS, N_ITEMS, 6, use_bias=False),
    "pfedrec": lambda: PFedRec(N_USERS, N_ITEMS, 6),
    "pfedrec-rowwise": lambda: _RowwisePFedRec(N_USERS, N_ITEMS, 6),
}
SETTINGS = [
    LocalSettings(epochs=2, batch_size=5, lr=0.5, negatives=3),
    LocalSettings(
        epochs=1,
        batch_size=7,
        lr=0.05,
        optimizer="adam",
        loss="bpr",
        negatives=2,
        weight_decay=0.01,
        prox_mu=0.1,
    ),
    LocalSettings(epochs=1, batch_size=4, lr=0.05, loss="mse", weight_decay=0.01),
    LocalSettings(batch_size=6, lr=0.5, negatives=2, pseudo_items=3, pseudo_labels="model"),
]


def _update(
    model: Recommender, local: LocalSettings, silos: bool, flat: bool
) -> dict[str, torch.Tensor]:
    train = _train()
    part = random_silos(train.users, 5, 0) if silos else cross_device(train.users)
    group = client_groups(train, part)
    layout = ParamLayout.of(model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    trainer = LocalTrainer(model, local)
    trainer.flat = flat
    upd = train_clients(
        trainer,
        {k: params[k] for k in layout.shared},
        {k: params[k][torch.from_numpy(part.members)] for k in layout.private},
        group,
        seed=2,
        round_=1,
    )
    out = {"losses": upd.losses, "item_ids": upd.item_ids.double()}
    out.update({f"item/{k}": v for k, v in upd.item_deltas.items()})
    out.update({f"dense/{k}": v for k, v in upd.dense_deltas.items()})
    out.update({f"private/{k}": v for k, v in upd.private.items()})
    return out


def test_every_model_on_the_flat_path_is_compared() -> None:
    """A configurable model that takes the flat gradient path must be in MODELS."""
    train = dataclasses.replace(
        _train(),
        user_features=pd.DataFrame({"age": np.arange(N_USERS) % 7}),
        item_features=pd.DataFrame({"genre:A": np.arange(N_ITEMS) % 2}),
    )
    flat = []
    for name in FEDERATED_MODEL_NAMES:
        cfg = ModelConfig(name=name, dim=4, mlp_layers=[8, 4])  # type: ignore[arg-type]
        if LocalTrainer(build_model(cfg, N_USERS, N_ITEMS, train), LocalSettings()).flat:
            flat.append(name)
    assert flat and set(flat) <= set(MODELS), flat


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("local", SETTINGS, ids=["bce", "bpr-adam-prox", "mse", "pseudo"])
@pytest.mark.parametrize("silos", [False, True], ids=["device", "silo"])
def test_flat_gradient_path_equals_the_vmapped_one(
    name: str, local: LocalSettings, silos: bool
) -> None:
    torch.manual_seed(0)
    model = MODELS[name]()
    assert LocalTrainer(model, local).flat
    flat = _update(model, local, silos, flat=True)
    vmapped = _update(model, local, silos, flat=False)
    assert flat.keys() == vmapped.keys()
    for k in flat:
        torch.testing.assert_close(flat[k], vmapped[k], rtol=1e-5, atol=1e-6, equal_nan=True)
    assert any(v.abs().max() > 0 for k, v in flat.items() if k.startswith("item/"))


def test_mf_scores_broadcast_one_user_row_over_a_batch() -> None:
    torch.manual_seed(0)
    model = MF(5, 9, 4)
    users = torch.tensor([0, 3, 4])
    items = torch.randint(0, 9, (3, 7))
    rows = model.gather_rows(users, items[:, 0])
    g = {
        "user_emb.weight": model.user_emb.weight[users][:, None],
        "user_bias.weight": model.user_bias.weight[users][:, None],
        "item_emb.weight": model.item_emb.weight[items],
        "item_bias.weight": model.item_bias.weight[items],
    }
    with torch.no_grad():
        expect = model(users.repeat_interleave(7), items.reshape(-1)).view(3, 7)
        torch.testing.assert_close(model.score_rows(g), expect)
        torch.testing.assert_close(model.score_rows(rows), model(users, items[:, 0]))


def test_row_scatter_adds_in_order_like_index_add() -> None:
    gen = torch.Generator().manual_seed(0)
    for width in (1, 8, 40):
        table = torch.randn(50, width, generator=gen)
        keys = torch.randint(0, 50, (300,), generator=gen)
        values = torch.randn(300, width, generator=gen)
        expect = table.clone().index_add_(0, keys, values)
        _add_rows(table, keys, values)
        torch.testing.assert_close(table, expect)


def test_blockwise_row_subtraction() -> None:
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(20, 3, generator=gen)
    ids = torch.randint(0, 20, (101,), generator=gen)
    out = torch.randn(101, 3, generator=gen)
    expect = out - table[ids]
    torch.testing.assert_close(_sub_rows_(out, table, ids, block=16), expect)


def test_fast_argsort_is_the_stable_one_with_or_without_ties() -> None:
    gen = np.random.default_rng(0)
    for high in (5, 2**62):
        keys = gen.integers(0, high, 10_000).astype(np.uint64)
        np.testing.assert_array_equal(_stable_argsort(keys), np.argsort(keys, kind="stable"))


def test_hash_prefixes_extend_to_the_full_hash() -> None:
    clients = np.array([3, 9, 27], dtype=np.int64)
    counters = np.arange(12, dtype=np.int64)
    prefix = rng.hash64(1, 2, rng.SHUFFLE, 0, clients)
    full = rng.hash64(1, 2, rng.SHUFFLE, 0, np.repeat(clients, 4), counters)
    np.testing.assert_array_equal(rng.extend(prefix[np.repeat(np.arange(3), 4)], counters), full)
    np.testing.assert_array_equal(rng.extend(rng.hash64(1, 2), 3), rng.hash64(1, 2, 3))
    np.testing.assert_array_equal(
        rng.below(7, full), rng.randint(7, 1, 2, rng.SHUFFLE, 0, np.repeat(clients, 4), counters)
    )
