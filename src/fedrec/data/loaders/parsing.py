"""The parsing core every loader shares: typed delimited-text layouts, a fast pandas path and
a line-by-line scan that names the first bad line.

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
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fedrec.data.errors import DataFormatError

Kind = Literal["int", "float", "str", "any", "empty"]
"""Field kinds: ``str`` must be non-empty, ``any`` may be empty, ``empty`` must be empty."""

_INT_RE = re.compile(r"\s*[+-]?[0-9]+\s*")
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Layout:
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


OPENERS: dict[str, Callable[[Path], Any]] = {
    ".gz": gzip.GzipFile,
    ".bz2": bz2.BZ2File,
    ".xz": lzma.LZMAFile,
}
DECOMPRESS_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error, lzma.LZMAError)


def open_text(path: Path, encoding: str) -> io.TextIOWrapper:
    """Text stream over a plain or compressed (by suffix, as pandas infers it) file."""
    opener = OPENERS.get(path.suffix.lower())
    # The wrapper owns (and closes) the binary stream; callers use it as a context manager.
    raw = opener(path) if opener is not None else path.open("rb")
    return io.TextIOWrapper(raw, encoding=encoding, newline=None)


def _split(line: str, layout: Layout) -> list[str]:
    if layout.sep == " ":
        return line.split()
    if layout.quoted:
        return next(csv.reader([line], delimiter=layout.sep), [])
    return line.split(layout.sep)


def records(fh: io.TextIOWrapper, layout: Layout, counter: list[int]) -> Iterator[list[str]]:
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


def _parse_python(path: Path, layout: Layout) -> list[list[str]]:
    """Validate ``path`` line by line and return its data records (as strings).

    The slow path: used for small files and to locate the first bad line of a big file.
    """
    n = len(layout.fields)
    counter = [0]
    rows: list[list[str]] = []
    try:
        with open_text(path, layout.encoding) as fh:
            recs = records(fh, layout, counter)
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
    except DECOMPRESS_ERRORS as exc:
        raise DataFormatError(
            path, counter[0] + 1, f"compressed data is truncated or corrupt ({exc})"
        ) from exc
    if not rows:
        what = "no data rows after the header" if layout.header else "no data rows"
        raise DataFormatError(path, counter[0] + 1, f"{what} (empty file?)")
    return rows


def _check_header(path: Path, layout: Layout, rec: list[str] | None) -> None:
    if rec is None:
        raise DataFormatError(path, 1, "file is empty")
    if layout.header is not None and [c.strip() for c in rec] != list(layout.header):
        raise DataFormatError(path, 1, f"expected header {list(layout.header)}, found {rec}")


def _rows_frame(rows: list[list[str]], layout: Layout) -> pd.DataFrame:
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


def _pandas_layout(layout: Layout) -> tuple[str, tuple[Kind, ...]]:
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


def read_delimited(path: Path, layout: Layout) -> pd.DataFrame:
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
            with open_text(path, layout.encoding) as fh:
                _check_header(path, layout, next(records(fh, layout, [0]), None))
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


def line_of_row(path: Path, layout: Layout, row: int) -> int | None:
    """1-based line of the ``row``-th (0-based) data record, for errors found after parsing."""
    counter = [0]
    with open_text(path, layout.encoding) as fh:
        recs = records(fh, layout, counter)
        if layout.header is not None:
            next(recs, None)
        for i, _ in enumerate(recs):
            if i == row:
                return counter[0]
    return None


def show(value: object) -> str:
    """repr() for messages, without numpy's ``np.int64(3)`` wrapping."""
    return repr(value.item() if isinstance(value, np.generic) else value)
