"""Build a model from its configuration section."""

from __future__ import annotations

from fedrec.config import ModelConfig
from fedrec.data.table import Interactions
from fedrec.models.base import Recommender
from fedrec.models.features import encode_features
from fedrec.models.mf import MF
from fedrec.models.ncf import GMF, MLP, NeuMF
from fedrec.models.pfedrec import PFedRec
from fedrec.models.popularity import Popularity
from fedrec.models.two_tower import TwoTower


def build_model(
    cfg: ModelConfig, n_users: int, n_items: int, train: Interactions | None = None
) -> Recommender:
    """A freshly initialised model (seed torch before calling for reproducible weights)."""
    if cfg.name == "popularity":
        if train is None:
            raise ValueError("model.name = 'popularity' needs the training interactions")
        return Popularity(n_users, n_items, train.items)
    if cfg.name == "mf":
        return MF(n_users, n_items, cfg.dim, cfg.init_std, cfg.use_bias)
    if cfg.name == "gmf":
        return GMF(n_users, n_items, cfg.dim, cfg.init_std)
    if cfg.name == "mlp":
        return MLP(n_users, n_items, list(cfg.mlp_layers), cfg.dropout, cfg.init_std)
    if cfg.name == "neumf":
        return NeuMF(n_users, n_items, cfg.dim, list(cfg.mlp_layers), cfg.dropout, cfg.init_std)
    if cfg.name == "pfedrec":
        return PFedRec(n_users, n_items, cfg.dim, cfg.init_std)
    if cfg.name == "two-tower":
        if train is None:
            raise ValueError("model.name = 'two-tower' needs the training interactions")
        users = encode_features(train.user_features, n_users, cfg.user_features)
        items = encode_features(train.item_features, n_items, cfg.item_features)
        return TwoTower(
            n_users, n_items, users.values, items.values, cfg.dim, cfg.tower_layers, cfg.init_std
        )
    raise ValueError(f"unknown model.name {cfg.name!r}")
