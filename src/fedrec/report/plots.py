"""Learning curves of a run as PNG files, drawn from its ``metrics.jsonl`` records.

Written from the history (not from live state) so a resumed or finished run can be redrawn
with the same function, and so the plots show exactly what the metrics file says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no screen on servers and CI; must precede pyplot

import matplotlib.pyplot as plt

from fedrec.utils.atomic import atomic_open

CURVES = ("loss", "train_loss", "valid/HR@10", "valid/NDCG@10")
"""Federated records carry ``loss``, centralized ones ``train_loss``; absent curves are skipped."""


X_KEYS = {"round": "round", "epoch": "epoch", "sim_hours": "sim_time_s"}
"""Each x-axis and the record field it reads; ``sim_hours`` is the simulated clock of a run
with a device model (``sim_time_s``) in hours."""


def _series(history: Sequence[dict[str, Any]], x_key: str, key: str) -> tuple[list[Any], list[Any]]:
    field = X_KEYS[x_key]
    xs, ys = [], []
    for rec in history:
        v = rec.get(key)
        if v is None or field not in rec:
            continue
        fv = float(v)
        if math.isfinite(fv):
            xs.append(rec[field] / 3600 if x_key == "sim_hours" else rec[field])
            ys.append(fv)
    return xs, ys


def plot_learning_curves(
    history: Sequence[dict[str, Any]], out_dir: Path, *, x_key: str = "round"
) -> list[Path]:
    """One PNG per curve in :data:`CURVES` that has data, plus ``learning_curves.png`` with
    all of them side by side; returns the files written (atomically)."""
    if x_key not in X_KEYS:
        raise ValueError(f"x_key must be one of {sorted(X_KEYS)}, got {x_key!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    present = [(k, *_series(history, x_key, k)) for k in CURVES]
    present = [(k, xs, ys) for k, xs, ys in present if xs]
    written: list[Path] = []
    if not present:
        return written
    for key, xs, ys in present:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(xs, ys, marker="o" if len(xs) < 40 else None, markersize=3)
        ax.set_xlabel(_label(x_key))
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"{key.replace('/', '_').replace('@', '')}.png"))
    fig, axes = plt.subplots(1, len(present), figsize=(5 * len(present), 3.5), squeeze=False)
    for ax, (key, xs, ys) in zip(axes[0], present, strict=True):
        ax.plot(xs, ys, marker="o" if len(xs) < 40 else None, markersize=3)
        ax.set_xlabel(_label(x_key))
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(_save(fig, out_dir / "learning_curves.png"))
    return written


def _label(x_key: str) -> str:
    return "simulated hours" if x_key == "sim_hours" else x_key


def _save(fig: Any, path: Path) -> Path:
    with atomic_open(path, "wb", encoding=None) as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
    return path
