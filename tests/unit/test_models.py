"""Models: parameter split, score_all vs forward, purity, losses, Popularity, factory."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.func import functional_call

from fedrec.config import ModelConfig
from fedrec.data.table import Interactions
from fedrec.models import (
    GMF,
    MF,
    MLP,
    NeuMF,
    Popularity,
    Recommender,
    bce_loss,
    bpr_loss,
    build_model,
    l2_penalty,
    mse_loss,
)
from fedrec.models.features import MAX_CATEGORIES, encode_features
from fedrec.models.pfedrec import PFedRec
from fedrec.models.two_tower import TwoTower
from tests.model_names import MODEL_NAMES

N_USERS, N_ITEMS = 7, 11


def _interactions(users: list[int], items: list[int]) -> Interactions:
    return Interactions(
        name="toy",
        users=np.array(users, dtype=np.int64),
        items=np.array(items, dtype=np.int64),
        ratings=np.ones(len(users), dtype=np.float32),
        timestamps=None,
        user_ids=np.arange(N_USERS),
        item_ids=np.arange(N_ITEMS),
    )


def _models() -> list[Recommender]:
    torch.manual_seed(0)
    train = _interactions([0, 1, 1, 2, 3], [4, 4, 5, 6, 4])
    return [
        MF(N_USERS, N_ITEMS, dim=5, init_std=0.3),
        MF(N_USERS, N_ITEMS, dim=5, init_std=0.3, use_bias=False),
        GMF(N_USERS, N_ITEMS, dim=5, init_std=0.3),
        MLP(N_USERS, N_ITEMS, layers=[8, 6, 3], init_std=0.3),
        MLP(N_USERS, N_ITEMS, layers=[8, 6, 3], dropout=0.5, init_std=0.3),
        NeuMF(N_USERS, N_ITEMS, dim=5, layers=[8, 6, 3], init_std=0.3),
        NeuMF(N_USERS, N_ITEMS, dim=5, layers=[4, 2], dropout=0.2, init_std=0.3),
        Popularity(N_USERS, N_ITEMS, train.items),
        PFedRec(N_USERS, N_ITEMS, dim=5, init_std=0.3),
        TwoTower(N_USERS, N_ITEMS, _feats(N_USERS, 3), _feats(N_ITEMS, 4), dim=5, layers=[6, 4]),
        _features_only(),
    ]


def _features_only() -> TwoTower:
    m = TwoTower(N_USERS, N_ITEMS, _feats(N_USERS, 3), _feats(N_ITEMS, 4), dim=0, layers=[4])
    torch.nn.init.normal_(m.item_bias.weight)  # zero at init: make the L2 check meaningful
    return m


def _feats(n: int, f: int) -> np.ndarray:
    return np.random.default_rng(n * f).normal(size=(n, f)).astype(np.float32)


MODELS = _models()
IDS = [f"{type(m).__name__}-{i}" for i, m in enumerate(MODELS)]


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_private_shared_split(model: Recommender) -> None:
    params = dict(model.named_parameters())
    private = model.private_parameter_names()
    shared = model.shared_parameter_names()
    assert sorted(private + shared) == sorted(params)
    assert not set(private) & set(shared)
    for name in private:
        assert params[name].shape[0] == N_USERS, name
    for name in shared:
        assert params[name].dim() == 0 or params[name].shape[0] != N_USERS, name
    if not isinstance(model, Popularity):
        assert private, "every learned model has user embeddings"
        assert shared


def test_private_names_are_the_user_tables() -> None:
    assert MF(N_USERS, N_ITEMS, dim=4).private_parameter_names() == [
        "user_emb.weight",
        "user_bias.weight",
    ]
    assert NeuMF(N_USERS, N_ITEMS, dim=4, layers=[4, 2]).private_parameter_names() == [
        "user_gmf.weight",
        "user_mlp.weight",
    ]
    assert Popularity(N_USERS, N_ITEMS, np.array([1])).private_parameter_names() == []


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_score_all_matches_forward(model: Recommender) -> None:
    model.eval()
    users = torch.tensor([0, 3, 6, 3])
    with torch.no_grad():
        full = model.score_all(users)
        assert full.shape == (4, N_ITEMS)
        pair = model(users.repeat_interleave(N_ITEMS), torch.arange(N_ITEMS).repeat(4))
    torch.testing.assert_close(full, pair.view(4, N_ITEMS), rtol=1e-5, atol=1e-6)
    assert full.std() > 0  # not a degenerate constant model


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_score_candidates_matches_forward_and_l2(model: Recommender) -> None:
    """The grouped training path is the same math as forward + embedding_l2 per pair."""
    model.eval()
    users = torch.tensor([0, 3, 6])
    items = torch.tensor([[1, 2, 10, 2], [0, 0, 5, 9], [7, 3, 1, 4]])
    flat_u, flat_i = users.repeat_interleave(4), items.reshape(-1)
    with torch.no_grad():
        scores, l2 = model.score_candidates_l2(users, items)
        torch.testing.assert_close(scores, model(flat_u, flat_i).view(3, 4))
        torch.testing.assert_close(model.score_candidates(users, items), scores)
        torch.testing.assert_close(l2, model.embedding_l2(flat_u, flat_i))
    if model.trainable:
        assert float(l2) > 0


def test_mlp_score_all_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunking over users in score_all must not change the scores."""
    import fedrec.models.ncf as ncf

    model = NeuMF(N_USERS, N_ITEMS, dim=3, layers=[6, 4], init_std=0.5).eval()
    users = torch.arange(N_USERS)
    with torch.no_grad():
        whole = model.score_all(users)
        monkeypatch.setattr(ncf, "_CHUNK_ELEMS", 1)
        assert len(ncf._chunks(N_USERS, N_ITEMS, 6)) == N_USERS
        torch.testing.assert_close(model.score_all(users), whole)
        assert model.score_all(users[:0]).shape == (0, N_ITEMS)


@pytest.mark.parametrize("model", [m for m in MODELS if m.trainable], ids=str)
def test_functional_call_is_pure(model: Recommender) -> None:
    """The federated engine swaps parameters in with functional_call; nothing may stick."""
    model.eval()
    users, items = torch.tensor([1, 2]), torch.tensor([3, 4])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(users, items)
    params = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
    with torch.no_grad():
        zero = functional_call(model, params, (users, items))
    torch.testing.assert_close(zero, torch.zeros(2))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    with torch.no_grad():
        torch.testing.assert_close(model(users, items), ref)


def test_mf_scores_and_l2_by_hand() -> None:
    m = MF(2, 3, dim=2)
    with torch.no_grad():
        m.user_emb.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
        m.item_emb.weight.copy_(torch.tensor([[1.0, 0.0], [0.5, 0.5], [-1.0, 3.0]]))
        m.user_bias.weight.copy_(torch.tensor([[0.1], [0.2]]))
        m.item_bias.weight.copy_(torch.tensor([[0.0], [1.0], [-1.0]]))
        m.global_bias.fill_(0.5)
        out = m(torch.tensor([0, 1]), torch.tensor([2, 1]))
        l2 = m.embedding_l2(torch.tensor([0, 1]), torch.tensor([2, 1]))
    # u0.i2 = -1 + 6 = 5, + 0.1 - 1 + 0.5 ; u1.i1 = -0.5, + 0.2 + 1 + 0.5
    torch.testing.assert_close(out, torch.tensor([4.6, 1.2]))
    # |u0|^2 + |u1|^2 + |i2|^2 + |i1|^2 + biases^2
    expected = 5 + 1 + 10 + 0.5 + (0.01 + 0.04) + (1 + 1)
    assert float(l2) == pytest.approx(expected)


def test_bce_loss_by_hand() -> None:
    pos = torch.tensor([0.0, 2.0])
    neg = torch.tensor([[0.0, -1.0], [1.0, 3.0]])
    expected = (
        math.log(2)
        + math.log1p(math.exp(-2))
        + math.log(2)
        + math.log1p(math.exp(-1))
        + math.log1p(math.exp(1))
        + math.log1p(math.exp(3))
    ) / 6
    assert float(bce_loss(pos, neg)) == pytest.approx(expected, rel=1e-6)


def test_bpr_loss_by_hand() -> None:
    pos = torch.tensor([1.0, 0.0])
    neg = torch.tensor([[1.0, -1.0], [2.0, 0.0]])
    diffs = [0.0, 2.0, -2.0, 0.0]
    expected = sum(math.log1p(math.exp(-d)) for d in diffs) / 4
    assert float(bpr_loss(pos, neg)) == pytest.approx(expected, rel=1e-6)


def test_bce_loss_is_stable_for_large_logits() -> None:
    loss = bce_loss(torch.tensor([200.0]), torch.tensor([[-200.0]]))
    assert torch.isfinite(loss) and float(loss) < 1e-30


def test_mse_and_l2_by_hand() -> None:
    assert float(mse_loss(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 1.0]))) == 2.5
    assert float(l2_penalty(torch.tensor(8.0), 4, 0.5)) == 1.0
    with pytest.raises(ValueError, match="batch_size"):
        l2_penalty(torch.tensor(1.0), 0, 0.1)


def test_loss_shape_errors() -> None:
    with pytest.raises(ValueError, match="pos"):
        bce_loss(torch.zeros(3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="pos"):
        bpr_loss(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="differ"):
        mse_loss(torch.zeros(3), torch.zeros(2))


def test_popularity_ranks_by_training_counts_only() -> None:
    train = _interactions([0, 1, 2, 3, 4, 5, 0, 1, 2], [9, 9, 9, 2, 2, 7, 7, 7, 7])
    model = Popularity(N_USERS, N_ITEMS, train.items)
    assert list(model.parameters()) == []
    assert not model.trainable
    scores = model.score_all(torch.tensor([0, 6]))
    expected = torch.zeros(N_ITEMS)
    expected[9], expected[2], expected[7] = 3, 2, 4
    torch.testing.assert_close(scores, expected.expand(2, -1))
    torch.testing.assert_close(
        model(torch.tensor([5, 5]), torch.tensor([7, 0])), torch.tensor([4.0, 0])
    )
    with pytest.raises(ValueError, match="item ids"):
        Popularity(N_USERS, N_ITEMS, np.array([0, N_ITEMS]))


MODEL_CLASSES: dict[str, type[Recommender]] = {
    "popularity": Popularity,
    "mf": MF,
    "gmf": GMF,
    "mlp": MLP,
    "neumf": NeuMF,
    "pfedrec": PFedRec,
    "two-tower": TwoTower,
}


def test_every_configurable_model_is_in_the_shared_checks() -> None:
    """A model added to the configuration fails here until MODELS exercises it."""
    assert {MODEL_CLASSES[n] for n in MODEL_NAMES} <= {type(m) for m in MODELS}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_build_model(name: str) -> None:
    cls = MODEL_CLASSES[name]
    cfg = ModelConfig(name=name, dim=6, mlp_layers=[10, 4])  # type: ignore[arg-type]
    train = dataclasses.replace(
        _interactions([0], [1]),
        user_features=pd.DataFrame({"age": np.arange(N_USERS), "sex": ["F", "M"] * 3 + ["F"]}),
        item_features=pd.DataFrame({"genre:A": np.arange(N_ITEMS) % 2}),
    )
    model = build_model(cfg, N_USERS, N_ITEMS, train)
    assert type(model) is cls
    assert (model.n_users, model.n_items) == (N_USERS, N_ITEMS)


def test_pfedrec_users_start_from_one_shared_score_function() -> None:
    model = PFedRec(N_USERS, N_ITEMS, dim=4)
    w = model.score_weight.weight
    assert torch.equal(w, w[:1].expand_as(w))
    assert model.private_parameter_names() == ["score_weight.weight", "score_bias.weight"]
    assert model.shared_parameter_names() == ["item_emb.weight"]


def test_two_tower_keeps_profiles_private_and_frozen() -> None:
    uf, itf = _feats(N_USERS, 3), _feats(N_ITEMS, 4)
    model = TwoTower(N_USERS, N_ITEMS, uf, itf, dim=4, layers=[5, 3])
    assert set(model.private_parameter_names()) == {"user_emb.weight", "user_profile.weight"}
    assert set(model.frozen_parameter_names()) == {"user_profile.weight", "item_profile.weight"}
    assert "user_profile.weight" not in model.shared_parameter_names()
    u, i = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    model(u, i).sum().backward()
    assert model.user_profile.weight.grad is None and model.item_profile.weight.grad is None
    assert model.user_emb.weight.grad is not None
    with pytest.raises(ValueError, match="feature rows"):
        TwoTower(N_USERS, N_ITEMS, uf[:2], itf)
    with pytest.raises(ValueError, match="user side is empty"):
        TwoTower(N_USERS, N_ITEMS, uf[:, :0], itf, dim=0)


def test_feature_encoding_standardises_numbers_and_one_hots_categories() -> None:
    frame = pd.DataFrame(
        {
            "age": [20, 30, 40],
            "gender": ["M", "F", "M"],
            "zip": [f"{k:05d}" for k in range(3)],
            "genre:Drama": [0, 1, 1],
        }
    )
    enc = encode_features(frame, 3)
    assert enc.columns == (
        "age",
        "gender=F",
        "gender=M",
        "zip=00000",
        "zip=00001",
        "zip=00002",
        "genre:Drama",
    )
    np.testing.assert_allclose(enc.values[:, 0], [-1.2247449, 0.0, 1.2247449], rtol=1e-5)
    np.testing.assert_array_equal(enc.values[:, 1:3], [[0, 1], [1, 0], [0, 1]])
    np.testing.assert_array_equal(enc.values[:, -1], [0, 1, 1])
    ids = pd.DataFrame({"title": [f"t{k}" for k in range(MAX_CATEGORIES + 1)]})
    assert encode_features(ids, MAX_CATEGORIES + 1).dropped == ("title",)
    with pytest.raises(ValueError, match="unknown feature columns"):
        encode_features(frame, 3, ["height"])
    with pytest.raises(ValueError, match="rows"):
        encode_features(frame, 4)


def test_build_model_errors() -> None:
    with pytest.raises(ValueError, match="training interactions"):
        build_model(ModelConfig(name="popularity"), N_USERS, N_ITEMS, None)
    with pytest.raises(ValueError, match="must be even"):
        build_model(ModelConfig(name="mlp", mlp_layers=[7, 3]), N_USERS, N_ITEMS)
    with pytest.raises(ValueError, match="at least 2"):
        build_model(ModelConfig(name="neumf", mlp_layers=[8]), N_USERS, N_ITEMS)
    with pytest.raises(ValueError, match="n_users"):
        MF(0, N_ITEMS)


def test_init_is_seeded() -> None:
    torch.manual_seed(3)
    a = NeuMF(N_USERS, N_ITEMS, dim=4, layers=[6, 3]).state_dict()
    torch.manual_seed(3)
    b = NeuMF(N_USERS, N_ITEMS, dim=4, layers=[6, 3]).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k])
