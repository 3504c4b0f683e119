"""Turning parsed columns into :class:`~fedrec.data.table.Interactions`: id maps, profile
rows keyed by raw id, optional side files and user-user links.

Every loader returns contiguous 0-based ids in order of first appearance (raw ids kept in
``user_ids`` / ``item_ids``) and rows in file order. Side features are DataFrames indexed by
internal id covering every user/item that has an interaction (missing profile rows become
NaN, never dropped rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedrec.data.errors import DataFormatError
from fedrec.data.fetch import data_file
from fedrec.data.loaders.parsing import Layout, line_of_row, read_delimited, show
from fedrec.data.sources import Source
from fedrec.data.table import IntArray, Interactions


def factorize(values: npt.NDArray[Any]) -> tuple[IntArray, npt.NDArray[Any]]:
    """Contiguous codes in order of first appearance, and the raw value of each code."""
    codes, uniques = pd.factorize(values)
    return codes.astype(np.int64, copy=False), np.asarray(uniques)


def by_raw_id(
    frame: pd.DataFrame,
    ids: npt.NDArray[Any],
    uniques: npt.NDArray[Any],
    path: Path,
    layout: Layout,
    what: str,
) -> pd.DataFrame:
    """Rows of a profile file (keyed by raw id ``ids``) for each internal id, in order."""
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        r = int(np.argmax(dup))
        raise DataFormatError(
            path, line_of_row(path, layout, r), f"{what} id {show(ids[r])} is listed twice"
        )
    frame = frame.set_axis(pd.Index(ids), axis=0)
    out = frame.reindex(pd.Index(uniques))
    out.index = pd.RangeIndex(len(uniques), name=what)
    return out


def new_interactions(
    name: str,
    users_raw: npt.NDArray[Any],
    items_raw: npt.NDArray[Any],
    ratings: npt.NDArray[Any],
    timestamps: npt.NDArray[Any] | None,
) -> tuple[Interactions, npt.NDArray[Any], npt.NDArray[Any]]:
    users, user_ids = factorize(users_raw)
    items, item_ids = factorize(items_raw)
    data = Interactions(
        name=name,
        users=users,
        items=items,
        ratings=np.asarray(ratings, dtype=np.float32),
        timestamps=None if timestamps is None else np.asarray(timestamps, dtype=np.int64),
        user_ids=user_ids,
        item_ids=item_ids,
    )
    return data, user_ids, item_ids


def with_features(
    data: Interactions, user_features: pd.DataFrame | None, item_features: pd.DataFrame | None
) -> Interactions:
    return Interactions(
        name=data.name,
        users=data.users,
        items=data.items,
        ratings=data.ratings,
        timestamps=data.timestamps,
        user_ids=data.user_ids,
        item_ids=data.item_ids,
        user_features=user_features,
        item_features=item_features,
    )


def optional_file(folder: Path, source: Source, name: str) -> Path | None:
    """A side file that enriches the data set when present (verified when read)."""
    return data_file(folder, source, name) if (folder / name).is_file() else None


def user_links(
    path: Path,
    layout: Layout,
    cols: tuple[str, str],
    value: str | None,
    data: Interactions | None,
) -> pd.DataFrame:
    """Directed user-user links; with ``data``, mapped to its internal ids (others dropped)."""
    df = read_delimited(path, layout)
    out = pd.DataFrame({cols[0]: df[0].to_numpy(), cols[1]: df[1].to_numpy()})
    if value is not None:
        out[value] = df[2].to_numpy(np.float32)
    if data is None:
        return out
    index = pd.Index(data.user_ids)
    a = index.get_indexer(out[cols[0]].to_numpy())
    b = index.get_indexer(out[cols[1]].to_numpy())
    keep = (a >= 0) & (b >= 0)
    mapped: pd.DataFrame = out.loc[keep].reset_index(drop=True)
    mapped[cols[0]] = a[keep].astype(np.int64)
    mapped[cols[1]] = b[keep].astype(np.int64)
    return mapped
