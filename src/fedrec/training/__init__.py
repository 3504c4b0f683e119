"""Training loops: centralised here; the federated engine builds on the same models."""

from fedrec.models.scoring import ModelScorer
from fedrec.training.centralized import TrainResult, train_centralized

__all__ = ["ModelScorer", "TrainResult", "train_centralized"]
