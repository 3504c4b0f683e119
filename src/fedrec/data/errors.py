"""Data errors that tell the user what to fix: which file, which line, what to put where.

All derive from ``ValueError`` through :class:`DataError`, so a caller that only wants to
report bad input can catch one type.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class DataError(ValueError):
    """Base of every data problem the user can fix (missing, malformed or altered files)."""


class DataNotFoundError(DataError):
    """A data set is not on disk and could not (or may not) be downloaded."""

    def __init__(
        self,
        name: str,
        *,
        folder: str,
        files: Sequence[str],
        searched: Sequence[Path],
        url: str | None,
        reason: str | None = None,
        optional: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.folder = folder
        self.files = tuple(files)
        self.optional = tuple(optional)
        self.searched = tuple(searched)
        self.url = url
        self.reason = reason
        where = "\n".join(f"  - {p / folder}" for p in searched) or "  (no location configured)"
        lines = [
            f"data set {name!r} not found. Looked in:",
            where,
            f"Put these files into one of those folders (or into $FEDREC_DATA_DIR/{folder}): "
            f"{', '.join(files)}.",
        ]
        if optional:
            lines.append(f"Optional, used when present: {', '.join(optional)}.")
        if url is not None:
            lines.append(
                f"Or allow the download (needs network access) from {url}; it is cached "
                "under the fedrec cache directory ($FEDREC_CACHE_DIR)."
            )
        if reason:
            lines.append(f"Download not possible: {reason}")
        super().__init__("\n".join(lines))


class DataFormatError(DataError):
    """A file does not have the expected format; names the file and the 1-based line."""

    def __init__(self, path: str | Path, line: int | None, problem: str) -> None:
        self.path = Path(path)
        self.where = str(path)  # as given: Path() would mangle a URL's "//"
        self.line = line
        self.problem = problem
        where = f"{self.where}, line {line}" if line is not None else self.where
        super().__init__(f"{where}: {problem}")


class ChecksumError(DataError):
    """A file's SHA-256 differs from the published one: corrupted, truncated or altered."""

    def __init__(self, path: str | Path, expected: str, actual: str) -> None:
        self.path = Path(path)
        self.where = str(path)
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{self.where}: SHA-256 is {actual}, expected {expected}. The file is corrupted or "
            "not the published version; replace it, or set FEDREC_SKIP_CHECKSUM=1 to use it "
            "anyway (results will then not be comparable with published ones)."
        )
