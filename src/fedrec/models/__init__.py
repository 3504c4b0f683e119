"""Recommender models with an explicit private (per-user) / shared parameter split."""

from fedrec.models.base import Recommender
from fedrec.models.factory import build_model
from fedrec.models.losses import bce_loss, bpr_loss, l2_penalty, mse_loss
from fedrec.models.mf import MF
from fedrec.models.ncf import GMF, MLP, NeuMF
from fedrec.models.popularity import Popularity

__all__ = [
    "GMF",
    "MF",
    "MLP",
    "NeuMF",
    "Popularity",
    "Recommender",
    "bce_loss",
    "bpr_loss",
    "build_model",
    "l2_penalty",
    "mse_loss",
]
