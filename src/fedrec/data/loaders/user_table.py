"""Interactions from a user's own CSV or Parquet table."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedrec.data.errors import DataError, DataFormatError
from fedrec.data.loaders.assembly import new_interactions, with_features
from fedrec.data.loaders.parsing import (
    DECOMPRESS_ERRORS,
    OPENERS,
    Layout,
    line_of_row,
    open_text,
    records,
    show,
)
from fedrec.data.table import IntArray, Interactions

_COMPRESSION = set(OPENERS)


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
            raise bad_row(r, f"timestamp {show(col.iloc[r])} is neither a number nor ISO 8601")
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
                f"{what} {show(uniques[codes[r]])} has conflicting values for feature {c!r}: "
                f"{show(ref.iloc[r])} (first seen earlier) and {show(col.iloc[r])}",
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
    layout = Layout(sep_, (), quoted=True)
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
        # ParquetFile reads the columns directly; pd.read_parquet goes through pyarrow's
        # dataset scanner, whose column projection needs compute kernels that were seen
        # unregistered ("No function registered with name: make_struct") in a long test run.
        with pq.ParquetFile(path) as pf:
            df = pf.read(columns=needed, use_pandas_metadata=False).to_pandas()

        def bad_row(r: int, problem: str) -> DataFormatError:
            return DataFormatError(path, None, f"row {r + 1}: {problem}")

    else:
        with open_text(path, "utf-8") as fh:
            header = next(records(fh, layout, [0]), None)
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
            *DECOMPRESS_ERRORS,
        ) as exc:
            raise _table_parse_error(path, layout, len(header), exc) from exc
        if len(df) == 0:
            raise DataFormatError(path, 2, "no data rows after the header")

        def bad_row(r: int, problem: str) -> DataFormatError:
            return DataFormatError(path, line_of_row(path, layout, r + 1), problem)

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
            raise bad_row(r, f"{rating_col!r} value {show(raw)} is not a finite number")
        ratings = ratings_s.to_numpy(np.float32)
    else:
        ratings = np.ones(len(df), dtype=np.float32)
    ts = None if timestamp_col is None else _to_seconds(df[timestamp_col], bad_row)

    data, user_ids, item_ids = new_interactions(
        name, _canonical_ids(df[user_col]), _canonical_ids(df[item_col]), ratings, ts
    )
    uf = _entity_features(df, data.users, user_ids, ufeat, "user", bad_row) if ufeat else None
    itf = _entity_features(df, data.items, item_ids, ifeat, "item", bad_row) if ifeat else None
    return with_features(data, uf, itf)


def _table_parse_error(
    path: Path, layout: Layout, n_fields: int, exc: Exception
) -> DataFormatError:
    """Locate a CSV record the pandas parser rejected (wrong field count, bad encoding)."""
    counter = [0]
    try:
        with open_text(path, "utf-8") as fh:
            for rec in records(fh, layout, counter):
                if len(rec) != n_fields:
                    return DataFormatError(
                        path, counter[0], f"expected {n_fields} fields, found {len(rec)}"
                    )
    except UnicodeDecodeError as e:
        return DataFormatError(path, counter[0] + 1, f"not valid utf-8 text ({e.reason})")
    except DECOMPRESS_ERRORS as e:
        return DataFormatError(path, counter[0] + 1, f"compressed data is truncated ({e})")
    return DataFormatError(path, None, f"could not be parsed: {exc}")
