"""MovieLens 100K, 1M and latest-small.

Feature conventions:

- users (100K / 1M): ``age`` (100K: years; 1M: the age-group code 1, 18, 25, 35, 45, 50
  or 56 from its README), ``gender`` ("M"/"F"), ``occupation`` (name; 1M codes are mapped
  to the README's names) and ``zip`` (string).
- items: ``title`` (as published, year included), ``year`` (nullable Int64, parsed from
  the title, else the 100K release date) and one multi-hot bool column ``genre:<Name>`` per
  genre. The pseudo-genres "unknown" (100K) and "(no genres listed)" (latest-small) get no
  column: such items have all flags False.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedrec.data.errors import DataFormatError
from fedrec.data.fetch import data_file, locate
from fedrec.data.loaders.assembly import (
    by_raw_id,
    new_interactions,
    optional_file,
    with_features,
)
from fedrec.data.loaders.parsing import Kind, Layout, line_of_row, read_delimited
from fedrec.data.sources import get_source
from fedrec.data.table import Interactions


def _year_from_title(titles: pd.Series) -> pd.Series:
    years = titles.str.extract(r"\((\d{4})\)\s*$", expand=False)
    return pd.to_numeric(years, errors="coerce").astype("Int64")


def _genre_columns(
    flags: npt.NDArray[np.bool_], names: Sequence[str], index: pd.Index
) -> pd.DataFrame:
    skip = {"unknown", "(no genres listed)"}
    keep = [j for j, n in enumerate(names) if n not in skip]
    return pd.DataFrame({f"genre:{names[j]}": flags[:, j] for j in keep}, index=index, dtype=bool)


def _finish_items(items: pd.DataFrame, genre_cols: list[str]) -> pd.DataFrame:
    """After reindexing, items without a catalogue row have NaN; genre flags become False."""
    for c in genre_cols:
        items[c] = items[c].fillna(False).astype(bool)
    return items


_ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip
_USER_PROFILE = ("age", "gender", "occupation", "zip")


def load_ml100k(data_dir: Path | None = None, download: bool = True) -> Interactions:
    """MovieLens 100K: ``u.data`` plus user profiles (``u.user``) and movies (``u.item``)."""
    source = get_source("ml-100k")
    folder = locate(source.name, data_dir, download)
    ratings_path = data_file(folder, source, "u.data")
    df = read_delimited(
        ratings_path,
        Layout(
            "\t",
            (("user id", "int"), ("item id", "int"), ("rating", "float"), ("timestamp", "int")),
        ),
    )
    data, user_ids, item_ids = new_interactions(
        source.name, df[0].to_numpy(), df[1].to_numpy(), df[2].to_numpy(), df[3].to_numpy()
    )
    users = None
    if (p := optional_file(folder, source, "u.user")) is not None:
        layout = Layout(
            "|",
            (("user id", "int"), ("age", "int"), ("gender", "str"), ("occupation", "str"),
             ("zip", "str")),
        )  # fmt: skip
        prof = read_delimited(p, layout)
        frame = prof[[1, 2, 3, 4]].set_axis(list(_USER_PROFILE), axis=1)
        users = by_raw_id(frame, prof[0].to_numpy(), user_ids, p, layout, "user")
    items = None
    if (p := optional_file(folder, source, "u.item")) is not None:
        genres: Sequence[str] = _ML100K_GENRES
        if (g := optional_file(folder, source, "u.genre")) is not None:
            gdf = read_delimited(g, Layout("|", (("genre", "str"), ("genre index", "int"))))
            order = np.argsort(gdf[1].to_numpy(), kind="stable")
            genres = [str(x) for x in gdf[0].to_numpy()[order]]
        fields: tuple[tuple[str, Kind], ...] = (
            ("item id", "int"), ("title", "str"), ("release date", "any"),
            ("video release date", "any"), ("IMDb URL", "any"),
            *((f"genre {name}", "int") for name in genres),
        )  # fmt: skip
        layout = Layout("|", fields, encoding="latin-1")
        cat = read_delimited(p, layout)
        flags = cat[list(range(5, 5 + len(genres)))].to_numpy()
        bad = ~np.isin(flags, (0, 1)).all(axis=1)
        if bad.any():
            r = int(np.argmax(bad))
            raise DataFormatError(p, line_of_row(p, layout, r), "genre flags must be 0 or 1")
        titles = cat[1].astype(str)
        year = _year_from_title(titles)
        from_date = pd.to_numeric(
            cat[2].str.extract(r"(\d{4})\s*$", expand=False), errors="coerce"
        ).astype("Int64")
        frame = pd.DataFrame({"title": titles, "year": year.fillna(from_date)})
        genre_frame = _genre_columns(flags.astype(bool), genres, frame.index)
        frame = pd.concat([frame, genre_frame], axis=1)
        items = _finish_items(
            by_raw_id(frame, cat[0].to_numpy(), item_ids, p, layout, "item"),
            list(genre_frame.columns),
        )
    return with_features(data, users, items)


def _split_genres(genres: pd.Series) -> tuple[npt.NDArray[np.bool_], list[str]]:
    """Multi-hot matrix and names (sorted) of ``|``-joined genre lists."""
    dummies = genres.str.get_dummies(sep="|")
    names = sorted(dummies.columns)
    return dummies[names].to_numpy(dtype=bool), names


def _movies_frame(
    cat: pd.DataFrame, item_ids: npt.NDArray[Any], path: Path, layout: Layout
) -> pd.DataFrame:
    """Item features from a (movie id, title, genres) catalogue (ML-1M, latest-small)."""
    titles = cat[1].astype(str)
    flags, names = _split_genres(cat[2].astype(str))
    frame = pd.DataFrame({"title": titles, "year": _year_from_title(titles)})
    genre_frame = _genre_columns(flags, names, frame.index)
    frame = pd.concat([frame, genre_frame], axis=1)
    return _finish_items(
        by_raw_id(frame, cat[0].to_numpy(), item_ids, path, layout, "item"),
        list(genre_frame.columns),
    )


def load_ml1m(data_dir: Path | None = None, download: bool = True) -> Interactions:
    """MovieLens 1M: ``ratings.dat`` (or, lacking it, ``ratings.no-timestamp.dat.gz`` with
    timestamps None), plus ``users.dat`` and ``movies.dat`` when present.

    Internal ids follow first appearance in the file, which makes them equal to the NCF
    release's ids (user = UserID - 1, item = order of first appearance).
    """
    source = get_source("ml-1m")
    folder = locate(source.name, data_dir, download)
    base: tuple[tuple[str, Kind], ...] = (
        ("UserID", "int"), ("MovieID", "int"), ("Rating", "float"),
    )  # fmt: skip
    if (folder / "ratings.dat").is_file():
        df = read_delimited(
            data_file(folder, source, "ratings.dat"), Layout("::", (*base, ("Timestamp", "int")))
        )
        ts: npt.NDArray[Any] | None = df[3].to_numpy()
    else:
        df = read_delimited(
            data_file(folder, source, "ratings.no-timestamp.dat.gz"), Layout("::", base)
        )
        ts = None
    data, user_ids, item_ids = new_interactions(
        source.name, df[0].to_numpy(), df[1].to_numpy(), df[2].to_numpy(), ts
    )
    users = None
    if (p := optional_file(folder, source, "users.dat")) is not None:
        layout = Layout(
            "::",
            (("UserID", "int"), ("Gender", "str"), ("Age", "int"), ("Occupation", "int"),
             ("Zip-code", "str")),
            encoding="latin-1",
        )  # fmt: skip
        prof = read_delimited(p, layout)
        occ = prof[3].to_numpy()
        bad = (occ < 0) | (occ >= len(_ML1M_OCCUPATIONS))
        if bad.any():
            r = int(np.argmax(bad))
            raise DataFormatError(
                p, line_of_row(p, layout, r), f"Occupation code {occ[r]} is not in 0..20"
            )
        frame = pd.DataFrame(
            {
                "age": prof[2].to_numpy(),
                "gender": prof[1].to_numpy(),
                "occupation": np.asarray(_ML1M_OCCUPATIONS, dtype=object)[occ],
                "zip": prof[4].to_numpy(),
            }
        )
        users = by_raw_id(frame, prof[0].to_numpy(), user_ids, p, layout, "user")
    items = None
    if (p := optional_file(folder, source, "movies.dat")) is not None:
        layout = Layout(
            "::", (("MovieID", "int"), ("Title", "str"), ("Genres", "any")), encoding="latin-1"
        )
        items = _movies_frame(read_delimited(p, layout), item_ids, p, layout)
    return with_features(data, users, items)


def load_ml_latest_small(data_dir: Path | None = None, download: bool = True) -> Interactions:
    """MovieLens latest-small: ``ratings.csv`` (half-star ratings) and ``movies.csv``."""
    source = get_source("ml-latest-small")
    folder = locate(source.name, data_dir, download)
    df = read_delimited(
        data_file(folder, source, "ratings.csv"),
        Layout(
            ",",
            (("userId", "int"), ("movieId", "int"), ("rating", "float"), ("timestamp", "int")),
            header=("userId", "movieId", "rating", "timestamp"),
        ),
    )
    data, _, item_ids = new_interactions(
        source.name, df[0].to_numpy(), df[1].to_numpy(), df[2].to_numpy(), df[3].to_numpy()
    )
    items = None
    if (p := optional_file(folder, source, "movies.csv")) is not None:
        layout = Layout(
            ",",
            (("movieId", "int"), ("title", "str"), ("genres", "any")),
            header=("movieId", "title", "genres"),
            quoted=True,
        )
        items = _movies_frame(read_delimited(p, layout), item_ids, p, layout)
    return with_features(data, None, items)
