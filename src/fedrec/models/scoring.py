"""Scores for evaluation: any ``Recommender`` behind the numpy ``Scorer`` protocol of
``fedrec.eval`` (which itself knows nothing of models)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from fedrec.models.base import Recommender


class ModelScorer:
    """Adapts any ``Recommender`` to the evaluation ``Scorer`` protocol (numpy in, numpy out).

    Scores in eval mode without gradients, in batches, and restores the model's mode.
    """

    def __init__(self, model: Recommender, batch_users: int = 1024, batch_pairs: int = 1 << 18):
        if batch_users < 1 or batch_pairs < 1:
            raise ValueError(f"batch sizes must be >= 1, got {batch_users}, {batch_pairs}")
        self.model = model
        self.batch_users = batch_users
        self.batch_pairs = batch_pairs

    @property
    def n_items(self) -> int:
        return self.model.n_items

    def score_candidates(
        self, users: npt.NDArray[np.int64], items: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        u = np.asarray(users, dtype=np.int64)
        it = np.asarray(items, dtype=np.int64)
        if it.ndim != 2 or u.shape != (it.shape[0],):
            raise ValueError(f"need users (B,) and items (B, C); got {u.shape} and {it.shape}")
        n_cand = it.shape[1]
        rows = max(1, self.batch_pairs // max(1, n_cand))
        out = np.empty(it.shape, dtype=np.float32)
        with _eval_mode(self.model), torch.no_grad():
            for s in range(0, len(u), rows):
                bu = torch.from_numpy(u[s : s + rows])
                bi = torch.from_numpy(it[s : s + rows])
                out[s : s + rows] = self.model.score_candidates(bu, bi).float().numpy()
        return out

    def predict(
        self, users: npt.NDArray[np.int64], items: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """Scores of the pairs ``(users[i], items[i])`` (predicted ratings for MSE models)."""
        u = np.asarray(users, dtype=np.int64)
        it = np.asarray(items, dtype=np.int64)
        if u.shape != it.shape or u.ndim != 1:
            raise ValueError(f"need users and items of equal 1-D shape; got {u.shape}, {it.shape}")
        out = np.empty(len(u), dtype=np.float32)
        with _eval_mode(self.model), torch.no_grad():
            for s in range(0, len(u), self.batch_pairs):
                bu = torch.from_numpy(u[s : s + self.batch_pairs])
                bi = torch.from_numpy(it[s : s + self.batch_pairs])
                out[s : s + self.batch_pairs] = self.model(bu, bi).float().numpy()
        return out

    def score_all(self, users: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        u = np.asarray(users, dtype=np.int64)
        out = np.empty((len(u), self.model.n_items), dtype=np.float32)
        with _eval_mode(self.model), torch.no_grad():
            for s in range(0, len(u), self.batch_users):
                bu = torch.from_numpy(u[s : s + self.batch_users])
                out[s : s + self.batch_users] = self.model.score_all(bu).float().numpy()
        return out


class _eval_mode:  # noqa: N801 - used like a function-style context manager
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.was_training = model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)
