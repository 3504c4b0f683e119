"""The batched simulator and the one-client update compute the same thing."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.data.table import Interactions
from fedrec.federated.client import LocalSettings, LocalTrainer, client_update
from fedrec.federated.encoding import INDEX_BYTES
from fedrec.federated.layout import ParamLayout
from fedrec.federated.partition import Partition, client_groups, cross_device, random_silos
from fedrec.federated.plan import plan_round
from fedrec.federated.selection import Selection
from fedrec.federated.server import ServerState, run_round
from fedrec.federated.strategies import Strategy, StrategySettings, make_strategy
from fedrec.models.base import Recommender
from fedrec.models.mf import MF
from fedrec.models.ncf import GMF, MLP, NeuMF
from fedrec.models.pfedrec import PFedRec
from fedrec.models.two_tower import TwoTower
from fedrec.simulation.engines import BatchedEngine, EngineSettings, PrivateStore, SequentialEngine
from fedrec.simulation.protected import SparseSink
from tests.model_names import FEDERATED_MODEL_NAMES

N_USERS, N_ITEMS = 30, 25


def _train(seed: int = 0, n: int = 300) -> Interactions:
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, N_USERS, n) * N_ITEMS + rng.integers(0, N_ITEMS, n))
    users, items = keys // N_ITEMS, keys % N_ITEMS
    ratings = rng.integers(1, 6, len(users)).astype(np.float32)
    return Interactions(
        name="syn",
        users=users,
        items=items,
        ratings=ratings,
        timestamps=None,
        user_ids=np.arange(N_USERS),
        item_ids=np.arange(N_ITEMS),
    )


MODELS: dict[str, Callable[[], Recommender]] = {
    "mf": lambda: MF(N_USERS, N_ITEMS, 8),
    "gmf": lambda: GMF(N_USERS, N_ITEMS, 8),
    "mlp": lambda: MLP(N_USERS, N_ITEMS, [16, 8]),
    "neumf": lambda: NeuMF(N_USERS, N_ITEMS, 8, [16, 8]),
    "pfedrec": lambda: PFedRec(N_USERS, N_ITEMS, 8),
    "two-tower": lambda: TwoTower(
        N_USERS,
        N_ITEMS,
        np.random.default_rng(1).normal(size=(N_USERS, 3)).astype(np.float32),
        np.random.default_rng(2).normal(size=(N_ITEMS, 2)).astype(np.float32),
        dim=4,
        layers=[6, 4],
    ),
}


def _simulate(
    engine: str,
    model_name: str,
    *,
    silos: bool,
    local: LocalSettings,
    rounds: int = 2,
    encoding: str = "float32",
    strategy: Strategy | None = None,
) -> tuple[ServerState, PrivateStore]:
    train = _train()
    torch.manual_seed(0)
    model = MODELS[model_name]()
    layout = ParamLayout.of(model)
    params = dict(model.named_parameters())
    part = random_silos(train.users, 4, 0) if silos else cross_device(train.users)
    group = client_groups(train, part)
    store = PrivateStore({k: params[k] for k in layout.private})
    trainer = LocalTrainer(model, local)
    es = EngineSettings(seed=3, encoding=encoding)
    runner = (
        BatchedEngine(trainer, group, part, store, es, chunk_samples=97)
        if engine == "batched"
        else SequentialEngine(trainer, group, part, store, es)
    )
    strategy = strategy or make_strategy("fedavg")
    state = ServerState.initial({k: params[k] for k in layout.shared}, strategy, 0)
    for _ in range(rounds):
        state, _ = run_round(
            state,
            strategy=strategy,
            selection=Selection("fraction", fraction=0.6, dropout=0.1),
            runner=runner,
            n_clients=part.n_clients,
            per_row_items=True,
        )
    return state, store


@pytest.mark.parametrize("model_name", sorted(FEDERATED_MODEL_NAMES))
@pytest.mark.parametrize(
    ("silos", "local"),
    [
        (False, LocalSettings(epochs=2, batch_size=5, lr=0.05, negatives=3)),
        (
            True,
            LocalSettings(
                epochs=1,
                batch_size=7,
                lr=0.01,
                optimizer="adam",
                loss="bpr",
                negatives=2,
                weight_decay=0.01,
                prox_mu=0.1,
            ),
        ),
        (False, LocalSettings(epochs=1, batch_size=4, lr=0.01, loss="mse", weight_decay=0.001)),
    ],
)
def test_batched_engine_equals_sequential_reference(
    model_name: str, silos: bool, local: LocalSettings
) -> None:
    a, store_a = _simulate("sequential", model_name, silos=silos, local=local)
    b, store_b = _simulate("batched", model_name, silos=silos, local=local)
    for k in a.shared:
        torch.testing.assert_close(a.shared[k], b.shared[k], rtol=1e-4, atol=1e-5)
    for k in store_a.tables:
        torch.testing.assert_close(store_a.tables[k], store_b.tables[k], rtol=1e-4, atol=1e-5)
    moved = max((a.shared[k] - b.shared[k]).abs().max().item() for k in a.shared)
    assert moved < 1e-4
    # and training really changed the model (the comparison is not between two no-ops)
    torch.manual_seed(0)
    init = dict(MODELS[model_name]().named_parameters())
    assert any(not torch.allclose(init[k], a.shared[k]) for k in a.shared)


def test_engines_agree_under_int8_uploads_and_adaptive_server() -> None:
    local = LocalSettings(epochs=1, batch_size=6, lr=0.05, negatives=2)
    strat = make_strategy("fedyogi", StrategySettings(server_lr=0.01))
    a, _ = _simulate("sequential", "mf", silos=False, local=local, encoding="int8", strategy=strat)
    b, _ = _simulate("batched", "mf", silos=False, local=local, encoding="int8", strategy=strat)
    for k in a.shared:
        torch.testing.assert_close(a.shared[k], b.shared[k], rtol=1e-4, atol=1e-5)


def test_private_parameters_never_leave_the_client() -> None:
    train = _train()
    model = NeuMF(N_USERS, N_ITEMS, 8, [16, 8])
    layout = ParamLayout.of(model)
    assert layout.private == ("user_gmf.weight", "user_mlp.weight")
    assert layout.item_rows == ("item_gmf.weight", "item_mlp.weight")
    params = dict(model.named_parameters())
    part = cross_device(train.users)
    group = client_groups(train, part)
    upd = client_update(
        LocalTrainer(model, LocalSettings()),
        {k: params[k] for k in layout.shared},
        {k: params[k][part.users_of(0)] for k in layout.private},
        group.select(np.array([0])),
        seed=0,
        round_=0,
    )
    uploaded = set(upd.item_deltas) | set(upd.dense_deltas)
    assert uploaded == set(layout.shared)
    assert not uploaded & set(layout.private)
    # the item rows uploaded are exactly the ones the client trained on
    mine = set(train.items[train.users == part.users_of(0)[0]].tolist())
    assert mine <= set(upd.item_ids.tolist())


def test_a_clients_plan_does_not_depend_on_its_group() -> None:
    train = _train()
    group = client_groups(train, cross_device(train.users))
    kw = dict(seed=1, round_=4, epochs=2, batch_size=4, negatives=3, loss="bce")
    together = plan_round(group, **kw)  # type: ignore[arg-type]
    for c in (0, 5, len(group) - 1):
        alone = plan_round(group.select(np.array([c])), **kw)  # type: ignore[arg-type]
        s0, s1 = together.sample_offsets[c], together.sample_offsets[c + 1]
        i0 = together.item_offsets[c]
        glob = together.local_items[i0 + together.items[s0:s1]]
        np.testing.assert_array_equal(glob, alone.local_items[alone.items])
        np.testing.assert_array_equal(together.labels[s0:s1], alone.labels)


def test_training_negatives_exclude_only_the_clients_training_positives() -> None:
    train = _train()
    part = cross_device(train.users)
    group = client_groups(train, part)
    plan = plan_round(group, seed=0, round_=0, epochs=3, batch_size=8, negatives=4, loss="bce")
    for c in range(len(group)):
        s0, s1 = plan.sample_offsets[c], plan.sample_offsets[c + 1]
        items = plan.local_items[plan.item_offsets[c] + plan.items[s0:s1]]
        labels = plan.labels[s0:s1]
        positives = set(group.items[group.offsets[c] : group.offsets[c + 1]].tolist())
        assert not set(items[labels == 0].tolist()) & positives
        assert set(items[labels == 1].tolist()) == positives


def test_poisson_sampling_and_dropout_rates() -> None:
    rng = np.random.default_rng(0)
    sel = Selection("poisson", rate=0.2, dropout=0.25)
    picked = [len(sel.select(1000, rng)) for _ in range(50)]
    assert abs(np.mean(picked) - 200) < 10
    survivors, dropped = sel.drop(np.arange(1000), rng)
    assert abs(len(dropped) - 250) < 50 and len(survivors) + len(dropped) == 1000
    assert len(Selection("fraction", fraction=0.1).select(1000, rng)) == 100
    assert len(Selection("count", count=7).select(1000, rng)) == 7


def test_server_state_checkpoint_resumes_bit_identically() -> None:
    local = LocalSettings(epochs=1, batch_size=5, lr=0.05, negatives=2)
    train = _train()

    def setup() -> tuple[BatchedEngine, ServerState, Partition, Strategy]:
        torch.manual_seed(0)
        model = MF(N_USERS, N_ITEMS, 8)
        layout = ParamLayout.of(model)
        params = dict(model.named_parameters())
        part = cross_device(train.users)
        store = PrivateStore({k: params[k] for k in layout.private})
        eng = BatchedEngine(
            LocalTrainer(model, local),
            client_groups(train, part),
            part,
            store,
            EngineSettings(seed=1),
        )
        strat = make_strategy("fedadam", StrategySettings(server_lr=0.01))
        return (
            eng,
            ServerState.initial({k: params[k] for k in layout.shared}, strat, 0),
            part,
            strat,
        )

    def go(
        eng: BatchedEngine, st_: ServerState, part: Partition, strat: Strategy, n: int
    ) -> ServerState:
        for _ in range(n):
            st_, _ = run_round(
                st_,
                strategy=strat,
                selection=Selection("poisson", rate=0.5),
                runner=eng,
                n_clients=part.n_clients,
                per_row_items=False,
            )
        return st_

    eng, s0, part, strat = setup()
    straight = go(eng, s0, part, strat, 4)
    eng2, s1, part2, strat2 = setup()
    mid = go(eng2, s1, part2, strat2, 2)
    buf = io.BytesIO()
    torch.save({"server": mid.to_dict(), "private": eng2.store.tables}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    eng3, _, part3, strat3 = setup()
    eng3.store.tables = saved["private"]
    resumed = go(eng3, ServerState.from_dict(saved["server"]), part3, strat3, 2)
    assert resumed.round == straight.round == 4
    for k in straight.shared:
        assert torch.equal(straight.shared[k], resumed.shared[k])


@settings(max_examples=25, deadline=None)
@given(st.permutations(list(range(8))), st.booleans())
def test_aggregation_ignores_client_order(order: list[int], per_row: bool) -> None:
    from fedrec.federated.aggregate import Accumulator

    torch.manual_seed(1)
    model = MF(10, 12, 4)
    layout = ParamLayout.of(model)
    shared = {k: v.detach() for k, v in model.named_parameters() if k in layout.shared}
    ids = [torch.randperm(12)[: 3 + i % 4] for i in range(8)]
    deltas = [
        {n: torch.randn(len(ids[i]), *shared[n].shape[1:]) for n in layout.item_rows}
        for i in range(8)
    ]
    dense = [{n: torch.randn(1, *shared[n].shape) for n in layout.dense} for i in range(8)]
    weights = [torch.tensor([float(1 + i)]) for i in range(8)]

    def total(seq: list[int]) -> dict[str, torch.Tensor]:
        acc = Accumulator.zeros(layout, shared, 12)
        for i in seq:
            acc.add_items(ids[i], deltas[i], weights[i].expand(len(ids[i])))
            acc.add_dense(dense[i], weights[i])
            acc.add_clients(weights[i], 1, 0.0)
        return acc.mean_update(per_row)

    a, b = total(list(range(8))), total(order)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_fedavg_with_one_client_and_unit_server_lr_adopts_its_model() -> None:
    from fedrec.federated.aggregate import Accumulator

    model = MF(4, 5, 3)
    layout = ParamLayout.of(model)
    shared = {k: v.detach().clone() for k, v in model.named_parameters() if k in layout.shared}
    acc = Accumulator.zeros(layout, shared, 5)
    ids = torch.tensor([1, 3])
    d = {n: torch.ones(2, *shared[n].shape[1:]) for n in layout.item_rows}
    acc.add_items(ids, d, torch.tensor([2.0, 2.0]))
    acc.add_dense({n: torch.ones(1, *shared[n].shape) for n in layout.dense}, torch.tensor([2.0]))
    acc.add_clients(torch.tensor([2.0]), 2, 0.0)
    new, _ = make_strategy("fedavg").apply(shared, acc.mean_update(True), {})
    emb = "item_emb.weight"
    torch.testing.assert_close(new[emb][ids], shared[emb][ids] + 1)
    torch.testing.assert_close(new[emb][[0, 2, 4]], shared[emb][[0, 2, 4]])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        LocalSettings(optimizer="rmsprop")
    with pytest.raises(ValueError, match="strategy"):
        make_strategy("fedsgd")
    with pytest.raises(ValueError, match="sampling"):
        Selection("stratified")
    with pytest.raises(ValueError, match="dropout"):
        LocalTrainer(NeuMF(3, 3, 2, [4, 2], dropout=0.5), LocalSettings())


def test_feature_tables_are_never_trained_nor_counted_as_upload() -> None:
    local = LocalSettings(epochs=1, batch_size=5, lr=0.5, negatives=2, weight_decay=0.1)
    state, store = _simulate("batched", "two-tower", silos=False, local=local)
    torch.manual_seed(0)
    init = dict(MODELS["two-tower"]().named_parameters())
    assert torch.equal(store.tables["user_profile.weight"], init["user_profile.weight"])
    assert torch.equal(state.shared["item_profile.weight"], init["item_profile.weight"])
    assert not torch.equal(state.shared["item_emb.weight"], init["item_emb.weight"])
    model = MODELS["two-tower"]()
    layout = ParamLayout.of(model)
    assert set(layout.frozen) == {"user_profile.weight", "item_profile.weight"}
    params = dict(model.named_parameters())
    sink = SparseSink(
        layout,
        {k: params[k] for k in layout.shared},
        N_ITEMS,
        np.array([0]),
        encoding="float32",
        uniform=True,
    )
    up = sink.per_row * 3 + INDEX_BYTES * 3 + sink.dense_bytes
    # 3 rows of (4 embedding + 1 bias) float32 values with a 4-byte id, plus both towers
    towers = sum(p.numel() for n, p in params.items() if n.split(".")[0].endswith("tower"))
    assert up == 3 * (5 * 4 + 4) + 4 * towers
