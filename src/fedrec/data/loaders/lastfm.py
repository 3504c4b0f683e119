"""HetRec 2011 Last.fm 2K: user-artist play counts and friendships.

Items carry ``title`` = artist name. Ratings are play counts.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedrec.data.errors import DataError
from fedrec.data.fetch import data_file, locate
from fedrec.data.loaders.assembly import (
    by_raw_id,
    new_interactions,
    optional_file,
    user_links,
    with_features,
)
from fedrec.data.loaders.parsing import Layout, read_delimited
from fedrec.data.sources import get_source
from fedrec.data.table import Interactions


def load_lastfm_2k(data_dir: Path | None = None, download: bool = True) -> Interactions:
    """HetRec 2011 Last.fm 2K: user-artist play counts (``ratings`` = plays), artist names."""
    source = get_source("lastfm-2k")
    folder = locate(source.name, data_dir, download)
    df = read_delimited(
        data_file(folder, source, "user_artists.dat"),
        Layout(
            "\t",
            (("userID", "int"), ("artistID", "int"), ("weight", "int")),
            header=("userID", "artistID", "weight"),
        ),
    )
    data, _, item_ids = new_interactions(
        source.name, df[0].to_numpy(), df[1].to_numpy(), df[2].to_numpy(), None
    )
    items = None
    if (p := optional_file(folder, source, "artists.dat")) is not None:
        layout = Layout(
            "\t",
            (("id", "int"), ("name", "any"), ("url", "any"), ("pictureURL", "any")),
            header=("id", "name", "url", "pictureURL"),
        )
        art = read_delimited(p, layout)
        frame = pd.DataFrame({"title": art[1].to_numpy()})
        items = by_raw_id(frame, art[0].to_numpy(), item_ids, p, layout, "item")
    return with_features(data, None, items)


def load_lastfm_friends(
    data_dir: Path | None = None, download: bool = True, data: Interactions | None = None
) -> pd.DataFrame:
    """Last.fm friendships as directed pairs (each friendship appears both ways).

    Columns ``user``, ``friend``; raw ids, or internal ids when ``data`` is given.
    """
    source = get_source("lastfm-2k")
    folder = locate(source.name, data_dir, download)
    path = folder / "user_friends.dat"
    if not path.is_file():
        raise DataError(f"{path}: missing; Last.fm friendships need user_friends.dat")
    layout = Layout("\t", (("userID", "int"), ("friendID", "int")), header=("userID", "friendID"))
    return user_links(
        data_file(folder, source, "user_friends.dat"), layout, ("user", "friend"), None, data
    )
