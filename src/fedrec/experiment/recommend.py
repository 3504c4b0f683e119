"""Top-k recommendations for one user from a finished run: the user's private state plus the
shared model, never the items the user already has."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedrec.config import load_config
from fedrec.experiment.pipeline import prepare
from fedrec.models.factory import build_model

MODEL_FILE = "model.pt"


@dataclass(frozen=True)
class Recommendation:
    rank: int
    item: object
    """Raw item id, as the data set names it."""
    title: str | None
    score: float


def recommend(run_dir: Path, raw_user: str, k: int = 10) -> list[Recommendation]:
    """The user's top ``k`` items among those it has not interacted with in training."""
    if k < 1:
        raise ValueError(f"-k must be >= 1, got {k}")
    cfg_path, model_path = run_dir / "config.toml", run_dir / MODEL_FILE
    for p in (cfg_path, model_path):
        if not p.exists():
            raise FileNotFoundError(f"{p} is missing: is {run_dir} a finished fedrec run?")
    cfg = load_config(cfg_path)
    prepared = prepare(cfg)
    data, train = prepared.data, prepared.split.train
    raw_ids = data.user_ids
    matches = np.nonzero(raw_ids.astype(str) == str(raw_user))[0]
    if len(matches) == 0:
        raise ValueError(
            f"user {raw_user!r} is not in {data.name} (raw ids like {raw_ids[:3].tolist()})"
        )
    user = int(matches[0])
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, train.n_users, train.n_items, train)
    model.load_state_dict(torch.load(model_path, weights_only=True))
    model.eval()
    with torch.no_grad():
        scores = model.score_all(torch.tensor([user]))[0].numpy().astype(np.float64)
    known = train.items[train.users == user]
    scores[known] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    top = top[np.isfinite(scores[top])]
    titles = None
    if data.item_features is not None and "title" in data.item_features.columns:
        titles = data.item_features["title"]
    return [
        Recommendation(
            rank=r + 1,
            item=data.item_ids[i].item() if hasattr(data.item_ids[i], "item") else data.item_ids[i],
            title=None if titles is None else str(titles.iloc[i]),
            score=float(scores[i]),
        )
        for r, i in enumerate(top)
    ]
