"""FilmTrust: ratings and the directed trust network."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedrec.data.errors import DataError
from fedrec.data.fetch import data_file, locate
from fedrec.data.loaders.assembly import new_interactions, user_links
from fedrec.data.loaders.parsing import Layout, read_delimited
from fedrec.data.sources import get_source
from fedrec.data.table import Interactions


def load_filmtrust(data_dir: Path | None = None, download: bool = True) -> Interactions:
    """FilmTrust ratings (0.5-4.0 in half steps, no timestamps, no features)."""
    source = get_source("filmtrust")
    folder = locate(source.name, data_dir, download)
    df = read_delimited(
        data_file(folder, source, "ratings.txt"),
        Layout(" ", (("user", "int"), ("item", "int"), ("rating", "float"))),
    )
    data, _, _ = new_interactions(
        source.name, df[0].to_numpy(), df[1].to_numpy(), df[2].to_numpy(), None
    )
    return data


def load_filmtrust_trust(
    data_dir: Path | None = None, download: bool = True, data: Interactions | None = None
) -> pd.DataFrame:
    """FilmTrust's directed trust links: columns ``truster``, ``trustee``, ``value``.

    Raw ids by default; given the loaded ratings ``data``, internal user ids, dropping links
    that touch users without ratings.
    """
    source = get_source("filmtrust")
    folder = locate(source.name, data_dir, download)
    path = folder / "trust.txt"
    if not path.is_file():
        raise DataError(f"{path}: missing; FilmTrust trust links need trust.txt in {folder}")
    layout = Layout(" ", (("truster", "int"), ("trustee", "int"), ("value", "float")))
    return user_links(
        data_file(folder, source, "trust.txt"), layout, ("truster", "trustee"), "value", data
    )
