"""Loaders for the registered data sets and for users' own CSV/Parquet tables.

Every loader returns :class:`~fedrec.data.table.Interactions` with contiguous 0-based ids in
order of first appearance (raw ids kept in ``user_ids`` / ``item_ids``) and rows in file
order. Side features are DataFrames indexed by internal id covering every user/item that
has an interaction (missing profile rows become NaN, never dropped rows).

Feature conventions:

- users (MovieLens 100K / 1M): ``age`` (ML-100K: years; ML-1M: the age-group code 1, 18,
  25, 35, 45, 50 or 56 from its README), ``gender`` ("M"/"F"), ``occupation`` (name; ML-1M
  codes are mapped to the README's names) and ``zip`` (string).
- items (MovieLens): ``title`` (as published, year included), ``year`` (nullable Int64,
  parsed from the title, else the ML-100K release date) and one multi-hot bool column
  ``genre:<Name>`` per genre. The pseudo-genres "unknown" (ML-100K) and
  "(no genres listed)" (latest-small) get no column: such items have all flags False.
- items (Last.fm): ``title`` = artist name. Ratings are play counts.

Big files are parsed with the pandas C parser; when it fails or the result does not
validate, a line-by-line scan finds the first bad line for the error message.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import math
import re
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedrec.data.errors import DataError, DataFormatError
from fedrec.data.fetch import data_file, locate
from fedrec.data.sources import DATASETS, SOURCES, Source, get_source
from fedrec.data.table import FloatArray, IntArray, Interactions

Kind = Literal["int", "float", "str", "any", "empty"]
"""Field kinds: ``str`` must be non-empty, ``any`` may be empty, ``empty`` must be empty."""

_INT_RE = re.compile(r"\s*[+-]?[0-9]+\s*")
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


# ----------------------------------------------------------------------------- parsing core


@dataclass(frozen=True)
class _Layout:
    """Shape of a delimited text file: separator, typed fields and optional header."""

    sep: str
    """A literal separator, ``"::"``, or ``" "`` for runs of whitespace."""
    fields: tuple[tuple[str, Kind], ...]
    header: tuple[str, ...] | None = None
    encoding: str = "utf-8"
    quoted: bool = False
    """Fields may be double-quoted (CSV); otherwise quotes are ordinary characters."""

    @property
    def sep_name(self) -> str:
        return {"\t": "tab", " ": "whitespace", ",": "comma"}.get(self.sep, repr(self.sep))


_OPENERS: dict[str, Callable[[Path], Any]] = {
    ".gz": gzip.GzipFile,
    ".bz2": bz2.BZ2File,
    ".xz": lzma.LZMAFile,
}
_DECOMPRESS_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error, lzma.LZMAError)


def _open_text(path: Path, encoding: str) -> io.TextIOWrapper:
    """Text stream over a plain or compressed (by suffix, as pandas infers it) file."""
    opener = _OPENERS.get(path.suffix.lower())
    # The wrapper owns (and closes) the binary stream; callers use it as a context manager.
    raw = opener(path) if opener is not None else path.open("rb")
    return io.TextIOWrapper(raw, encoding=encoding, newline=None)


def _split(line: str, layout: _Layout) -> list[str]:
    if layout.sep == " ":
        return line.split()
    if layout.quoted:
        return next(csv.reader([line], delimiter=layout.sep), [])
    return line.split(layout.sep)


def _records(fh: io.TextIOWrapper, layout: _Layout, counter: list[int]) -> Iterator[list[str]]:
    """Non-blank records; ``counter[0]`` is the 1-based line of the last one yielded."""
    if layout.quoted:
        reader = csv.reader(fh, delimiter=layout.sep)
        for rec in reader:
            counter[0] = reader.line_num
            if rec:
                yield rec
        return
    for lineno, raw in enumerate(fh, 1):
        counter[0] = lineno
        line = raw.rstrip("\r\n")
        if (not line.strip()) if layout.sep == " " else line == "":
            continue
        yield _split(line, layout)


def _check_value(kind: Kind, value: str) -> str | None:
    """What is wrong with one field, or None."""
    if kind == "int":
        if not _INT_RE.fullmatch(value):
            return f"expected an integer, found {value!r}"
        if not _I64_MIN <= int(value) <= _I64_MAX:
            return f"integer {value} does not fit in 64 bits"
    elif kind == "float":
        try:
            x = float(value)
        except ValueError:
            return f"expected a number, found {value!r}"
        if "_" in value or not value.isascii() or not math.isfinite(x):
            return f"expected a finite number, found {value!r}"
    elif kind == "str" and value == "":
        return "empty value"
    elif kind == "empty" and value != "":
        return f"unexpected text {value!r}"
    return None


def _parse_python(path: Path, layout: _Layout) -> list[list[str]]:
    """Validate ``path`` line by line and return its data records (as strings).

    The slow path: used for small files and to locate the first bad line of a big file.
    """
    n = len(layout.fields)
    counter = [0]
    rows: list[list[str]] = []
    try:
        with _open_text(path, layout.encoding) as fh:
            recs = _records(fh, layout, counter)
            if layout.header is not None:
                _check_header(path, layout, next(recs, None))
            for rec in recs:
                if len(rec) != n:
                    raise DataFormatError(
                        path,
                        counter[0],
                        f"expected {n} {layout.sep_name}-separated fields, found {len(rec)}",
                    )
                for (fname, kind), value in zip(layout.fields, rec, strict=True):
                    problem = _check_value(kind, value)
                    if problem is not None:
                        raise DataFormatError(path, counter[0], f"{fname}: {problem}")
                rows.append(rec)
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            path, counter[0] + 1, f"not valid {layout.encoding} text ({exc.reason})"
        ) from exc
    except _DECOMPRESS_ERRORS as exc:
        raise DataFormatError(
            path, counter[0] + 1, f"compressed data is truncated or corrupt ({exc})"
        ) from exc
    if not rows:
        what = "no data rows after the header" if layout.header else "no data rows"
        raise DataFormatError(path, counter[0] + 1, f"{what} (empty file?)")
    return rows


def _check_header(path: Path, layout: _Layout, rec: list[str] | None) -> None:
    if rec is None:
        raise DataFormatError(path, 1, "file is empty")
    if layout.header is not None and [c.strip() for c in rec] != list(layout.header):
        raise DataFormatError(path, 1, f"expected header {list(layout.header)}, found {rec}")


def _rows_frame(rows: list[list[str]], layout: _Layout) -> pd.DataFrame:
    """Typed DataFrame (columns 0..k-1, ``empty`` fields dropped) from validated records."""
    cols: dict[int, Any] = {}
    j = 0
    for i, (_, kind) in enumerate(layout.fields):
        if kind == "empty":
            continue
        values = [r[i] for r in rows]
        if kind == "int":
            cols[j] = np.array(values, dtype=np.int64)
        elif kind == "float":
            cols[j] = np.array(values, dtype=np.float64)
        else:
            cols[j] = pd.array(values, dtype=object)
        j += 1
    return pd.DataFrame(cols)


def _pandas_layout(layout: _Layout) -> tuple[str, tuple[Kind, ...]]:
    """Separator and field kinds as the pandas C parser sees them.

    ``::`` is not a single character; splitting on ``:`` yields the real fields with empty
    ones between them, which we require to be empty.
    """
    kinds = tuple(k for _, k in layout.fields)
    if layout.sep == "::":
        spread: list[Kind] = []
        for k in kinds:
            spread += [k, "empty"]
        return ":", tuple(spread[:-1])
    if layout.sep == " ":
        return r"\s+", kinds
    return layout.sep, kinds


def _frame_is_valid(df: pd.DataFrame, kinds: Sequence[Kind]) -> bool:
    if df.shape[1] != len(kinds) or len(df) == 0:
        return False
    for i, kind in enumerate(kinds):
        col = df[i]
        if kind == "int":
            if col.dtype != np.int64:
                return False
        elif kind == "float":
            if col.dtype.kind not in "iuf" or not np.isfinite(col.to_numpy(np.float64)).all():
                return False
        elif kind == "str":
            if col.isna().any():
                return False
        elif kind == "empty" and not col.isna().all():
            return False
    return True


def _read(path: Path, layout: _Layout) -> pd.DataFrame:
    """Parse and validate ``path``; columns are 0..k-1 for the non-``empty`` fields.

    Raises DataFormatError naming the first bad line.
    """
    has_text = any(k in ("str", "any") for _, k in layout.fields)
    if layout.sep == "::" and has_text:
        # Text fields may contain ':' so the single-character trick does not apply.
        return _rows_frame(_parse_python(path, layout), layout)
    sep, kinds = _pandas_layout(layout)
    try:
        if layout.header is not None:
            with _open_text(path, layout.encoding) as fh:
                _check_header(path, layout, next(_records(fh, layout, [0]), None))
        df = pd.read_csv(
            path,
            sep=sep,
            header=None,
            skiprows=1 if layout.header is not None else 0,
            dtype={i: str for i, k in enumerate(kinds) if k in ("str", "any")},
            keep_default_na=False,
            na_values=[""],
            quoting=csv.QUOTE_MINIMAL if layout.quoted else csv.QUOTE_NONE,
            encoding=layout.encoding,
            compression="infer",
            engine="c",
        )
        ok = _frame_is_valid(df, kinds)
        detail = "values do not match the expected types"
    except DataFormatError:
        raise
    except Exception as exc:  # any parser failure is located precisely by the slow scan
        ok, detail = False, str(exc)
    if not ok:
        _parse_python(path, layout)  # raises with the line number
        raise DataFormatError(path, None, f"could not be parsed: {detail}")
    keep = [i for i, k in enumerate(kinds) if k != "empty"]
    return pd.DataFrame(
        {j: df[i].fillna("") if kinds[i] == "any" else df[i] for j, i in enumerate(keep)}
    )


def _line_of_row(path: Path, layout: _Layout, row: int) -> int | None:
    """1-based line of the ``row``-th (0-based) data record, for errors found after parsing."""
    counter = [0]
    with _open_text(path, layout.encoding) as fh:
        recs = _records(fh, layout, counter)
        if layout.header is not None:
            next(recs, None)
        for i, _ in enumerate(recs):
            if i == row:
                return counter[0]
    return None


# ------------------------------------------------------------------------ shared assembly


def _show(value: object) -> str:
    """repr() for messages, without numpy's ``np.int64(3)`` wrapping."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _factorize(values: npt.NDArray[Any]) -> tuple[IntArray, npt.NDArray[Any]]:
    """Contiguous codes in order of first appearance, and the raw value of each code."""
    codes, uniques = pd.factorize(values)
    return codes.astype(np.int64, copy=False), np.asarray(uniques)


def _by_raw_id(
    frame: pd.DataFrame,
    ids: npt.NDArray[Any],
    uniques: npt.NDArray[Any],
    path: Path,
    layout: _Layout,
    what: str,
) -> pd.DataFrame:
    """Rows of a profile file (keyed by raw id ``ids``) for each internal id, in order."""
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        r = int(np.argmax(dup))
        raise DataFormatError(
            path, _line_of_row(path, layout, r), f"{what} id {_show(ids[r])} is listed twice"
        )
    frame = frame.set_axis(pd.Index(ids), axis=0)
    out = frame.reindex(pd.Index(uniques))
    out.index = pd.RangeIndex(len(uniques), name=what)
    return out


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


def _interactions(
    name: str,
    users_raw: npt.NDArray[Any],
    items_raw: npt.NDArray[Any],
    ratings: npt.NDArray[Any],
    timestamps: npt.NDArray[Any] | None,
) -> tuple[Interactions, npt.NDArray[Any], npt.NDArray[Any]]:
    users, user_ids = _factorize(users_raw)
    items, item_ids = _factorize(items_raw)
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


def _with_features(
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


def _optional(folder: Path, source: Source, name: str) -> Path | None:
    """A side file that enriches the data set when present (verified when read)."""
    return data_file(folder, source, name) if (folder / name).is_file() else None


# --------------------------------------------------------------------------- MovieLens


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
    df = _read(
        ratings_path,
        _Layout(
            "\t",
            (("user id", "int"), ("item id", "int"), ("rating", "float"), ("timestamp", "int")),
        ),
    )
    data, user_ids, item_ids = _interactions(
        source.name, df[0].to_numpy(), df[1].to_numpy(), df[2].to_numpy(), df[3].to_numpy()
    )
    users = None
    if (p := _optional(folder, source, "u.user")) is not None:
        layout = _Layout(
            "|",
            (("user id", "int"), ("age", "int"), ("gender", "str"), ("occupation", "str"),
             ("zip", "str")),
        )  # fmt: skip
        prof = _read(p, layout)
        frame = prof[[1, 2, 3, 4]].set_axis(list(_USER_PROFILE), axis=1)
        users = _by_raw_id(frame, prof[0].to_numpy(), user_ids, p, layout, "user")
    items = None
    if (p := _optional(folder, source, "u.item")) is not None:
        genres: Sequence[str] = _ML100K_GENRES
        if (g := _optional(folder, source, "u.genre")) is not None:
            gdf = _read(g, _Layout("|", (("genre", "str"), ("genre index", "int"))))
            order = np.argsort(gdf[1].to_numpy(), kind="stable")
            genres = [str(x) for x in gdf[0].to_numpy()[order]]
        fields: tuple[tuple[str, Kind], ...] = (
            ("item id", "int"), ("title", "str"), ("release date", "any"),
            ("video release date", "any"), ("IMDb URL", "any"),
            *((f"genre {name}", "int") for name in genres),
        )  # fmt: skip
        layout = _Layout("|", fields, encoding="latin-1")
        cat = _read(p, layout)
        flags = cat[list(range(5, 5 + len(genres)))].to_numpy()
        bad = ~np.isin(flags, (0, 1)).all(axis=1)
        if bad.any():
            r = int(np.argmax(bad))
            raise DataFormatError(p, _line_of_row(p, layout, r), "genre flags must be 0 or 1")
        titles = cat[1].astype(str)
        year = _year_from_title(titles)
        from_date = pd.to_numeric(
            cat[2].str.extract(r"(\d{4})\s*$", expand=False), errors="coerce"
        ).astype("Int64")
        frame = pd.DataFrame({"title": titles, "year": year.fillna(from_date)})
        genre_frame = _genre_columns(flags.astype(bool), genres, frame.index)
        frame = pd.concat([frame, genre_frame], axis=1)
        items = _finish_items(
            _by_raw_id(frame, cat[0].to_numpy(), item_ids, p, layout, "item"),
            list(genre_frame.columns),
        )
    return _with_features(data, users, items)


def _split_genres(genres: pd.Series) -> tuple[npt.NDArray[np.bool_], list[str]]:
    """Multi-hot matrix and names (sorted) of ``|``-joined genre lists."""
    dummies = genres.str.get_dummies(sep="|")
    names = sorted(dummies.columns)
    return dummies[names].to_numpy(dtype=bool), names


def _movies_frame(
    cat: pd.DataFrame, item_ids: npt.NDArray[Any], path: Path, layout: _Layout
) -> pd.DataFrame:
    """Item features from a (movie id, title, genres) catalogue (ML-1M, latest-small)."""
    titles = cat[1].astype(str)
    flags, names = _split_genres(cat[2].astype(str))
    frame = pd.DataFrame({"title": titles, "year": _year_from_title(titles)})
    genre_frame = _genre_columns(flags, names, frame.index)
    frame = pd.concat([frame, genre_frame], axis=1)
    return _finish_items(
        _by_raw_id(frame, cat[0].to_numpy(), item_ids, path, layout, "item"),
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
        df = _read(
            data_file(folder, source, "ratings.dat"), _Layout("::", (*base, ("Timestamp", "int")))
        )
        ts: npt.NDArray[Any] | None = df[3].to_numpy()
    else:
        df = _read(data_file(folder, source, "ratings.no-timestamp.dat.gz"), _Layout("::", base))
        ts = None
    data, user_ids, item_ids = _interactions(
        source.name, df[0].to_numpy(), df[1].to_numpy(), df[2].to_numpy(), ts
    )
    users = None
    if (p := _optional(folder, source, "users.dat")) is not None:
        layout = _Layout(
            "::",
            (("UserID", "int"), ("Gender", "str"), ("Age", "int"), ("Occupation", "int"),
             ("Zip-code", "str")),
            encoding="latin-1",
        )  # fmt: skip
        prof = _read(p, layout)
        occ = prof[3].to_numpy()
        bad = (occ < 0) | (occ >= len(_ML1M_OCCUPATIONS))
        if bad.any():
            r = int(np.argmax(bad))
            raise DataFormatError(
                p, _line_of_row(p, layout, r), f"Occupation code {occ[r]} is not in 0..20"
            )
        frame = pd.DataFrame(
            {
                "age": prof[2].to_numpy(),
                "gender": prof[1].to_numpy(),
                "occupation": np.asarray(_ML1M_OCCUPATIONS, dtype=object)[occ],
                "zip": prof[4].to_numpy(),
            }
        )
        users = _by_raw_id(frame, prof[0].to_numpy(), user_ids, p, layout, "user")
    items = None
    if (p := _optional(folder, source, "movies.dat")) is not None:
        layout = _Layout(
            "::", (("MovieID", "int"), ("Title", "str"), ("Genres", "any")), encoding="latin-1"
        )
        items = _movies_frame(_read(p, layout), item_ids, p, layout)
    return _with_features(data, users, items)


def load_ml_latest_small(data_dir: Path | None = None, download: bool = True) -> Interactions:
    """MovieLens latest-small: ``ratings.csv`` (half-star ratings) and ``movies.csv``."""
    source = get_source("ml-latest-small")
    folder = locate(source.name, data_dir, download)
    df = _read(
        data_file(folder, source, "ratings.csv"),
        _Layout(
            ",",
            (("userId", "int"), ("movieId", "int"), ("rating", "float"), ("timestamp", "int")),
            header=("userId", "movieId", "rating", "timestamp"),
        ),
    )
    data, _, item_ids = _interactions(
        source.name, df[0].to_numpy(), df[1].to_numpy(), df[2].to_numpy(), df[3].to_numpy()
    )
    items = None
    if (p := _optional(folder, source, "movies.csv")) is not None:
        layout = _Layout(
            ",",
            (("movieId", "int"), ("title", "str"), ("genres", "any")),
            header=("movieId", "title", "genres"),
            quoted=True,
        )
        items = _movies_frame(_read(p, layout), item_ids, p, layout)
    return _with_features(data, None, items)


# ---------------------------------------------------------------------- Last.fm, FilmTrust


def load_lastfm_2k(data_dir: Path | None = None, download: bool = True) -> Interactions:
    """HetRec 2011 Last.fm 2K: user-artist play counts (``ratings`` = plays), artist names."""
    source = get_source("lastfm-2k")
    folder = locate(source.name, data_dir, download)
    df = _read(
        data_file(folder, source, "user_artists.dat"),
        _Layout(
            "\t",
            (("userID", "int"), ("artistID", "int"), ("weight", "int")),
            header=("userID", "artistID", "weight"),
        ),
    )
    data, _, item_ids = _interactions(
        source.name, df[0].to_numpy(), df[1].to_numpy(), df[2].to_numpy(), None
    )
    items = None
    if (p := _optional(folder, source, "artists.dat")) is not None:
        layout = _Layout(
            "\t",
            (("id", "int"), ("name", "any"), ("url", "any"), ("pictureURL", "any")),
            header=("id", "name", "url", "pictureURL"),
        )
        art = _read(p, layout)
        frame = pd.DataFrame({"title": art[1].to_numpy()})
        items = _by_raw_id(frame, art[0].to_numpy(), item_ids, p, layout, "item")
    return _with_features(data, None, items)


def load_filmtrust(data_dir: Path | None = None, download: bool = True) -> Interactions:
    """FilmTrust ratings (0.5-4.0 in half steps, no timestamps, no features)."""
    source = get_source("filmtrust")
    folder = locate(source.name, data_dir, download)
    df = _read(
        data_file(folder, source, "ratings.txt"),
        _Layout(" ", (("user", "int"), ("item", "int"), ("rating", "float"))),
    )
    data, _, _ = _interactions(
        source.name, df[0].to_numpy(), df[1].to_numpy(), df[2].to_numpy(), None
    )
    return data


def _links(
    path: Path,
    layout: _Layout,
    cols: tuple[str, str],
    value: str | None,
    data: Interactions | None,
) -> pd.DataFrame:
    """Directed user-user links; with ``data``, mapped to its internal ids (others dropped)."""
    df = _read(path, layout)
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
    layout = _Layout(" ", (("truster", "int"), ("trustee", "int"), ("value", "float")))
    return _links(
        data_file(folder, source, "trust.txt"), layout, ("truster", "trustee"), "value", data
    )


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
    layout = _Layout("\t", (("userID", "int"), ("friendID", "int")), header=("userID", "friendID"))
    return _links(
        data_file(folder, source, "user_friends.dat"), layout, ("user", "friend"), None, data
    )


# ------------------------------------------------------------------------------ NCF files


@dataclass(frozen=True)
class NcfTestFiles:
    """The NCF release's ML-1M leave-one-out test: one held-out rating per user and the
    99 sampled negatives it is ranked against.

    Ids are NCF's, which equal :func:`load_ml1m`'s internal ids (user = UserID - 1, item =
    first appearance in ``ratings.dat``).
    """

    users: IntArray
    items: IntArray
    ratings: FloatArray
    timestamps: IntArray
    negatives: IntArray
    """Shape (n_users, 99)."""

    def __len__(self) -> int:
        return len(self.users)


def load_ncf_ml1m_test(data_dir: Path | None = None, download: bool = True) -> NcfTestFiles:
    """Read ``ml-1m.test.rating`` and ``ml-1m.test.negative`` and check they agree."""
    source = get_source("ml-1m-ncf")
    folder = locate(source.name, data_dir, download)
    rating_path = data_file(folder, source, "ml-1m.test.rating")
    test = _read(
        rating_path,
        _Layout(
            "\t",
            (("user", "int"), ("item", "int"), ("rating", "float"), ("timestamp", "int")),
        ),
    )
    neg_path = data_file(folder, source, "ml-1m.test.negative")
    with _open_text(neg_path, "utf-8") as fh:
        first = next(_records(fh, _Layout("\t", ()), [0]), None)
    if first is None or len(first) < 2:
        raise DataFormatError(neg_path, 1, "expected '(user,item)' and negative item ids")
    neg_layout = _Layout(
        "\t",
        (("(user,item)", "str"), *((f"negative {j}", "int") for j in range(1, len(first)))),
    )
    neg = _read(neg_path, neg_layout)
    pairs = neg[0].str.extract(r"^\((\d+),(\d+)\)$")
    bad = pairs.isna().any(axis=1).to_numpy()
    if bad.any():
        r = int(np.argmax(bad))
        raise DataFormatError(
            neg_path, _line_of_row(neg_path, neg_layout, r),
            f"first field must be '(user,item)', found {_show(neg[0].iloc[r])}",
        )  # fmt: skip
    pu = pairs[0].astype(np.int64).to_numpy()
    pi = pairs[1].astype(np.int64).to_numpy()
    users = test[0].to_numpy(np.int64)
    items = test[1].to_numpy(np.int64)
    if len(pu) != len(users):
        raise DataFormatError(
            neg_path, None, f"{len(pu)} rows but {rating_path.name} has {len(users)}"
        )
    mismatch = (pu != users) | (pi != items)
    if mismatch.any():
        r = int(np.argmax(mismatch))
        raise DataFormatError(
            neg_path, _line_of_row(neg_path, neg_layout, r),
            f"pair ({pu[r]},{pi[r]}) differs from {rating_path.name}'s ({users[r]},{items[r]})",
        )  # fmt: skip
    negatives = neg[list(range(1, len(first)))].to_numpy(np.int64)
    return NcfTestFiles(
        users=users,
        items=items,
        ratings=test[2].to_numpy(np.float32),
        timestamps=test[3].to_numpy(np.int64),
        negatives=negatives,
    )


# --------------------------------------------------------------------------- registry


_LOADERS: dict[str, Callable[[Path | None, bool], Interactions]] = {
    "ml-100k": load_ml100k,
    "ml-1m": load_ml1m,
    "ml-latest-small": load_ml_latest_small,
    "lastfm-2k": load_lastfm_2k,
    "filmtrust": load_filmtrust,
}


def load_dataset(name: str, data_dir: Path | None = None, download: bool = True) -> Interactions:
    """Load a registered data set by name (see :data:`fedrec.data.sources.DATASETS`)."""
    loader = _LOADERS.get(name)
    if loader is None:
        if name in SOURCES:
            raise DataError(
                f"{name!r} is a resource, not an interaction data set "
                f"(e.g. load it with load_ncf_ml1m_test); data sets: {', '.join(DATASETS)}"
            )
        raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    return loader(data_dir, download)


# ------------------------------------------------------------------------- user tables


_COMPRESSION = set(_OPENERS)


def _table_format(path: Path) -> Literal["csv", "parquet"]:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in {".parquet", ".pq"}:
        return "parquet"
    if last in {".csv", ".tsv", ".txt", ".dat", ".tab"}:
        return "csv"
    raise DataError(
        f"{path}: cannot tell the format from the suffix {last or '(none)'!r}; "
        "pass format='csv' or format='parquet'"
    )


def _canonical_ids(col: pd.Series) -> npt.NDArray[Any]:
    """Raw ids as int64 when every value is a canonical integer, else as strings.

    CSV id columns are read as text so ``007`` and ``7`` stay distinct ids.
    """
    if col.dtype.kind in "iu":
        return col.to_numpy(np.int64)
    if col.dtype.kind == "f":
        values = col.to_numpy(np.float64)
        if (values == np.round(values)).all():
            return values.astype(np.int64)
        return values
    text = col.astype(str)
    if text.str.fullmatch(r"0|-?[1-9]\d{0,17}").all():
        return text.astype(np.int64).to_numpy()
    return text.to_numpy(dtype=object)


def _to_seconds(col: pd.Series, bad_row: Callable[[int, str], DataFormatError]) -> IntArray:
    """Timestamps as int64 epoch seconds from numbers, datetimes or ISO-8601 text."""
    if col.dtype.kind in "iuf":
        values = col.to_numpy(np.float64)
        if not np.isfinite(values).all():
            r = int(np.argmax(~np.isfinite(values)))
            raise bad_row(r, "missing or non-finite timestamp")
        seconds: IntArray = np.floor(values).astype(np.int64)
        return seconds
    if col.dtype.kind != "M":
        numeric = pd.to_numeric(col, errors="coerce")
        if numeric.notna().all():
            return _to_seconds(numeric, bad_row)
        parsed = pd.to_datetime(col, utc=True, format="ISO8601", errors="coerce")
        if parsed.isna().any():
            r = int(np.argmax(parsed.isna().to_numpy()))
            raise bad_row(r, f"timestamp {_show(col.iloc[r])} is neither a number nor ISO 8601")
        col = parsed
    dt = pd.Series(col)
    if dt.isna().any():
        raise bad_row(int(np.argmax(dt.isna().to_numpy())), "missing timestamp")
    if dt.dt.tz is None:
        dt = dt.dt.tz_localize("UTC")
    epoch = pd.Timestamp("1970-01-01", tz="UTC")
    return np.asarray((dt - epoch) // pd.Timedelta(seconds=1), dtype=np.int64)


def _entity_features(
    frame: pd.DataFrame,
    codes: IntArray,
    uniques: npt.NDArray[Any],
    columns: list[str],
    what: str,
    bad_row: Callable[[int, str], DataFormatError],
) -> pd.DataFrame:
    """One row per entity (in id order); every row of an entity must agree on each column."""
    _, first_row = np.unique(codes, return_index=True)
    rows_first = first_row[codes]
    for c in columns:
        col = frame[c].reset_index(drop=True)
        ref = col.iloc[rows_first].reset_index(drop=True)
        same = (col == ref) | (col.isna() & ref.isna())
        if not same.all():
            r = int(np.argmax(~same.to_numpy()))
            raise bad_row(
                r,
                f"{what} {_show(uniques[codes[r]])} has conflicting values for feature {c!r}: "
                f"{_show(ref.iloc[r])} (first seen earlier) and {_show(col.iloc[r])}",
            )
    out = frame[columns].iloc[first_row].reset_index(drop=True)
    out.index = pd.RangeIndex(len(uniques), name=what)
    return out


def load_table(
    path: str | Path,
    *,
    user_col: str,
    item_col: str,
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    sep: str | None = None,
    format: Literal["csv", "parquet"] | None = None,
    user_features: list[str] | None = None,
    item_features: list[str] | None = None,
    name: str = "table",
) -> Interactions:
    """Interactions from your own CSV (with a header row) or Parquet file.

    ``rating_col`` None gives every row rating 1.0 (implicit feedback). Timestamps may be
    numbers (epoch seconds), datetimes or ISO-8601 text. Feature columns are per user / per
    item: all rows of one user must carry the same value (an error names the user). A row
    with more fields than the header is an error; one with fewer leaves the trailing
    columns missing (an error only if an id or rating is among them). Ids
    that all look like integers become int64 raw ids, anything else stays text.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    fmt = format or _table_format(path)
    if fmt not in ("csv", "parquet"):
        raise DataError(f"format must be 'csv' or 'parquet', got {fmt!r}")
    ufeat, ifeat = list(user_features or []), list(item_features or [])
    wanted = [user_col, item_col, rating_col, timestamp_col, *ufeat, *ifeat]
    needed = list(dict.fromkeys(c for c in wanted if c is not None))
    sep_ = sep if sep is not None else ("\t" if ".tsv" in path.suffixes else ",")
    layout = _Layout(sep_, (), quoted=True)
    id_cols = {user_col, item_col}

    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            present = list(pq.read_schema(path).names)
        except Exception as exc:  # pyarrow raises several unrelated types for bad files
            raise DataFormatError(path, None, f"not a readable Parquet file ({exc})") from exc
        missing = [c for c in needed if c not in present]
        if missing:
            raise DataFormatError(
                path, None, f"missing column(s) {missing}; the file has {present}"
            )
        df = pd.read_parquet(path, columns=needed)

        def bad_row(r: int, problem: str) -> DataFormatError:
            return DataFormatError(path, None, f"row {r + 1}: {problem}")

    else:
        with _open_text(path, "utf-8") as fh:
            header = next(_records(fh, layout, [0]), None)
        if header is None:
            raise DataFormatError(path, 1, "file is empty (expected a header row)")
        missing = [c for c in needed if c not in header]
        if missing:
            raise DataFormatError(path, 1, f"missing column(s) {missing}; the header has {header}")
        try:
            # No usecols and index_col=False: otherwise pandas silently drops extra fields
            # or turns the first column into the index when rows are longer than the header.
            with warnings.catch_warnings():
                warnings.simplefilter("error", pd.errors.ParserWarning)
                df = pd.read_csv(
                    path,
                    sep=sep_,
                    index_col=False,
                    dtype={c: str for c in id_cols},
                    encoding="utf-8",
                    engine="c",
                )
        except (
            pd.errors.ParserError,
            pd.errors.ParserWarning,
            UnicodeDecodeError,
            ValueError,
            *_DECOMPRESS_ERRORS,
        ) as exc:
            raise _table_parse_error(path, layout, len(header), exc) from exc
        if len(df) == 0:
            raise DataFormatError(path, 2, "no data rows after the header")

        def bad_row(r: int, problem: str) -> DataFormatError:
            return DataFormatError(path, _line_of_row(path, layout, r + 1), problem)

    for c in (user_col, item_col):
        nan = df[c].isna().to_numpy()
        if nan.any():
            raise bad_row(int(np.argmax(nan)), f"missing value in id column {c!r}")
    if rating_col is not None:
        ratings_s = pd.to_numeric(df[rating_col], errors="coerce")
        bad = ~np.isfinite(ratings_s.to_numpy(np.float64))
        if bad.any():
            r = int(np.argmax(bad))
            raw = df[rating_col].iloc[r]
            if pd.isna(raw):
                raise bad_row(r, f"missing value in rating column {rating_col!r}")
            raise bad_row(r, f"{rating_col!r} value {_show(raw)} is not a finite number")
        ratings = ratings_s.to_numpy(np.float32)
    else:
        ratings = np.ones(len(df), dtype=np.float32)
    ts = None if timestamp_col is None else _to_seconds(df[timestamp_col], bad_row)

    data, user_ids, item_ids = _interactions(
        name, _canonical_ids(df[user_col]), _canonical_ids(df[item_col]), ratings, ts
    )
    uf = _entity_features(df, data.users, user_ids, ufeat, "user", bad_row) if ufeat else None
    itf = _entity_features(df, data.items, item_ids, ifeat, "item", bad_row) if ifeat else None
    return _with_features(data, uf, itf)


def _table_parse_error(
    path: Path, layout: _Layout, n_fields: int, exc: Exception
) -> DataFormatError:
    """Locate a CSV record the pandas parser rejected (wrong field count, bad encoding)."""
    counter = [0]
    try:
        with _open_text(path, "utf-8") as fh:
            for rec in _records(fh, layout, counter):
                if len(rec) != n_fields:
                    return DataFormatError(
                        path, counter[0], f"expected {n_fields} fields, found {len(rec)}"
                    )
    except UnicodeDecodeError as e:
        return DataFormatError(path, counter[0] + 1, f"not valid utf-8 text ({e.reason})")
    except _DECOMPRESS_ERRORS as e:
        return DataFormatError(path, counter[0] + 1, f"compressed data is truncated ({e})")
    return DataFormatError(path, None, f"could not be parsed: {exc}")


__all__ = [
    "NcfTestFiles",
    "load_dataset",
    "load_filmtrust",
    "load_filmtrust_trust",
    "load_lastfm_2k",
    "load_lastfm_friends",
    "load_ml1m",
    "load_ml100k",
    "load_ml_latest_small",
    "load_ncf_ml1m_test",
    "load_table",
]
