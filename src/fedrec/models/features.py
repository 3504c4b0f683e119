"""Side features as numeric matrices: user profiles and item attributes.

Small and generic on purpose (LensKit-style): numeric columns are standardised, string
columns with few distinct values are one-hot encoded, everything else (titles, zip codes)
is dropped, and each column's treatment is reported so a run can say what it used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

MAX_CATEGORIES = 64
"""A string column with more distinct values than this is an identifier, not a category."""


@dataclass(frozen=True)
class FeatureMatrix:
    values: npt.NDArray[np.float32]
    """One row per entity (user or item index), one column per encoded feature."""
    columns: tuple[str, ...]
    dropped: tuple[str, ...]


def encode_features(
    frame: pd.DataFrame | None, n_rows: int, use: list[str] | None = None
) -> FeatureMatrix:
    """Encode ``frame`` (indexed 0..n_rows-1) into a dense float matrix.

    ``use`` restricts the columns; naming a column that does not exist is an error.
    """
    if frame is None:
        if use:
            raise ValueError(f"features {use} requested but the data set has no side features")
        return FeatureMatrix(np.zeros((n_rows, 0), dtype=np.float32), (), ())
    if len(frame) != n_rows:
        raise ValueError(f"feature table has {len(frame)} rows, expected {n_rows}")
    cols = list(frame.columns)
    if use is not None:
        missing = [c for c in use if c not in cols]
        if missing:
            raise ValueError(f"unknown feature columns {missing}; the data set has {cols}")
        cols = list(use)
    parts: list[npt.NDArray[np.float32]] = []
    names: list[str] = []
    dropped: list[str] = []
    for col in cols:
        s = frame[col]
        if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
            x = s.astype(np.float64).to_numpy()
            x = np.where(np.isfinite(x), x, np.nanmean(x) if np.isfinite(x).any() else 0.0)
            lo, hi = float(np.min(x)), float(np.max(x))
            if lo >= 0 and hi <= 1:  # already an indicator (genre flags)
                parts.append(x.astype(np.float32)[:, None])
            else:
                sd = float(np.std(x)) or 1.0
                parts.append(((x - float(np.mean(x))) / sd).astype(np.float32)[:, None])
            names.append(col)
            continue
        values = s.astype("string").fillna("<missing>")
        cats = sorted(values.unique())
        if len(cats) > MAX_CATEGORIES:
            dropped.append(col)
            continue
        codes = pd.Categorical(values, categories=cats).codes
        parts.append(np.eye(len(cats), dtype=np.float32)[codes])
        names.extend(f"{col}={c}" for c in cats)
    values_mat = np.concatenate(parts, axis=1) if parts else np.zeros((n_rows, 0), np.float32)
    return FeatureMatrix(values_mat.astype(np.float32), tuple(names), tuple(dropped))
