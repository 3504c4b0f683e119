"""Training losses: pointwise BCE with sampled negatives, pairwise BPR, and MSE for ratings."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def _check(pos: Tensor, neg: Tensor) -> None:
    if neg.dim() != 2 or pos.dim() != 1 or neg.shape[0] != pos.shape[0]:
        raise ValueError(
            f"need pos (B,) and neg (B, n); got pos {tuple(pos.shape)}, neg {tuple(neg.shape)}"
        )


def bce_loss(pos: Tensor, neg: Tensor) -> Tensor:
    """Mean binary cross-entropy over all positives (label 1) and negatives (label 0).

    Every sample weighs the same, as in the NCF paper: with n negatives per positive the
    negatives carry n/(n+1) of the loss.
    """
    _check(pos, neg)
    total = F.softplus(-pos).sum() + F.softplus(neg).sum()
    return total / (pos.numel() + neg.numel())


def bpr_loss(pos: Tensor, neg: Tensor) -> Tensor:
    """Mean ``-log sigmoid(pos - neg)`` over every (positive, its negative) pair."""
    _check(pos, neg)
    return F.softplus(neg - pos.unsqueeze(1)).mean()


def mse_loss(pred: Tensor, target: Tensor) -> Tensor:
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return F.mse_loss(pred, target)


def l2_penalty(sum_of_squares: Tensor, batch_size: int, weight: float) -> Tensor:
    """``weight * sum_of_squares / batch_size``: per-example L2 of the embedding rows used."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return sum_of_squares * (weight / batch_size)


__all__ = ["bce_loss", "bpr_loss", "l2_penalty", "mse_loss"]
