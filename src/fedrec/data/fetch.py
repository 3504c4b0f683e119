"""Find a data set on disk, or download it once into the per-user cache.

Look-up order: an explicit ``data_dir``, then ``$FEDREC_DATA_DIR``, then the cache
(``cache_dir() / "datasets"``), then the network. Downloads are staged in a temporary folder
beside the cache, every file with a known SHA-256 is verified, and only then is the folder
renamed into place, so an interrupted or corrupted download never looks like a data set.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from fedrec import __version__
from fedrec.data.errors import ChecksumError, DataError, DataFormatError, DataNotFoundError
from fedrec.data.sources import Source, get_source

log = logging.getLogger(__name__)

ENV_DATA_DIR = "FEDREC_DATA_DIR"
ENV_CACHE_DIR = "FEDREC_CACHE_DIR"
ENV_SKIP_CHECKSUM = "FEDREC_SKIP_CHECKSUM"
DOWNLOAD_TIMEOUT = 60.0
"""Seconds without progress before a download is abandoned."""

_CHUNK = 1 << 20
# (resolved path, size, mtime_ns) -> sha256 hex; lets repeated loads in one process skip
# rehashing while still noticing a file that was replaced.
_digest_cache: dict[tuple[str, int, int], str] = {}


class _NetworkError(Exception):
    """A download failed for a reason outside the data (offline, HTTP error, timeout)."""


def cache_dir() -> Path:
    """Per-user cache root for downloads and derived data (e.g. splits).

    ``$FEDREC_CACHE_DIR``, else ``$XDG_CACHE_HOME/fedrec``, else ``~/.cache/fedrec``. Not
    created here: writers create what they need.
    """
    explicit = os.environ.get(ENV_CACHE_DIR)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fedrec"


def datasets_cache_dir() -> Path:
    """Where downloaded data sets live: one folder per source, named as in a data dir."""
    return cache_dir() / "datasets"


def checksums_disabled() -> bool:
    """True when ``FEDREC_SKIP_CHECKSUM`` asks us to accept files with unknown contents."""
    return os.environ.get(ENV_SKIP_CHECKSUM, "").strip().lower() in {"1", "true", "yes", "on"}


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) for this process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    cached = _digest_cache.get(key)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    _digest_cache[key] = digest
    return digest


def verify_file(path: Path, expected: str | None) -> None:
    """Raise :class:`ChecksumError` when ``path`` is not the published file.

    No-op when no hash is known or ``FEDREC_SKIP_CHECKSUM=1``.
    """
    if expected is None or checksums_disabled():
        return
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(path, expected, actual)


def is_present(source: Source, folder: Path) -> bool:
    """A folder holds ``source`` when every requirement group has one existing file."""
    return folder.is_dir() and all(
        any((folder / name).is_file() for name in group) for group in source.required
    )


def data_file(folder: Path, source: Source, name: str) -> Path:
    """Path of one file of ``source`` in ``folder``, verified before first use.

    Verification is lazy (only files a loader actually reads) and cached in-process.
    """
    path = folder / name
    verify_file(path, source.file(name).sha256)
    return path


def verify(name: str, data_dir: Path | None = None, download: bool = False) -> dict[str, str]:
    """Check every present file of a data set that has a known hash.

    Returns ``{file: "ok" | "no hash" | "missing"}``; a mismatch raises ChecksumError
    (unless checksums are disabled, in which case hashed files report ``"skipped"``).
    """
    source = get_source(name)
    folder = locate(name, data_dir=data_dir, download=download)
    report: dict[str, str] = {}
    for f in source.files:
        path = folder / f.name
        if not path.is_file():
            report[f.name] = "missing"
        elif f.sha256 is None:
            report[f.name] = "no hash"
        elif checksums_disabled():
            report[f.name] = "skipped"
        else:
            verify_file(path, f.sha256)
            report[f.name] = "ok"
    return report


def _candidates(source: Source, data_dir: Path | None) -> tuple[list[Path], list[Path]]:
    """(folders to try in order, roots to name in a not-found message)."""
    folders: list[Path] = []
    roots: list[Path] = []
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        roots.append(data_dir)
        # Also accept the data set folder itself (``--data-dir .../ml-100k``).
        folders += [data_dir / source.folder, data_dir]
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        env_dir = Path(env).expanduser()
        roots.append(env_dir)
        folders.append(env_dir / source.folder)
    roots.append(datasets_cache_dir())
    folders.append(datasets_cache_dir() / source.folder)
    return folders, roots


def locate(name: str, data_dir: Path | None = None, download: bool = True) -> Path:
    """The folder holding data set ``name``'s files, downloading it into the cache if needed.

    Raises :class:`DataNotFoundError` (naming the files and folders to create) when the data
    is nowhere on disk and downloading is disabled or impossible.
    """
    source = get_source(name)
    folders, roots = _candidates(source, data_dir)
    for folder in folders:
        if is_present(source, folder):
            return folder

    def not_found(reason: str) -> DataNotFoundError:
        required = {n for group in source.required for n in group}
        return DataNotFoundError(
            name,
            folder=source.folder,
            files=[" or ".join(group) for group in source.required],
            optional=[f.name for f in source.files if f.name not in required and f.sha256],
            searched=roots,
            url=source.url,
            reason=reason,
        )

    if not download:
        raise not_found("downloading is disabled (download=False).")
    if source.url is None:
        raise not_found("no download URL is known for this data set.")
    try:
        return _download(source, datasets_cache_dir())
    except _NetworkError as exc:
        raise not_found(str(exc)) from exc


def _fetch_url(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT) -> None:
    """Stream ``url`` to ``dest``; network trouble becomes :class:`_NetworkError`."""
    req = urllib.request.Request(url, headers={"User-Agent": f"fedrec/{__version__}"})
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp, dest.open("wb") as fh:
            length = resp.headers.get("Content-Length")
            shutil.copyfileobj(resp, fh, _CHUNK)
            written = fh.tell()
    except urllib.error.HTTPError as exc:
        raise _NetworkError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise _NetworkError(f"{url}: {exc.reason}") from exc
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise _NetworkError(f"{url}: {exc}") from exc
    if length is not None and length.isdigit() and int(length) != written:
        raise _NetworkError(f"{url}: download truncated ({written} of {length} bytes)")


def _extract(source: Source, archive: Path, url: str, out: Path) -> None:
    """Copy the source's files out of the zip, wherever the zip keeps them.

    Members are matched by file name inside the folder that holds the first required file,
    and written under fixed names, so archive paths can never escape ``out``.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise DataFormatError(url, None, f"not a valid zip archive ({exc})") from exc
    with zf:
        members = [
            PurePosixPath(m.filename)
            for m in zf.infolist()
            if not m.is_dir() and not m.filename.startswith("__MACOSX/")
        ]
        anchors = [m for m in members for group in source.required for n in group if m.name == n]
        if not anchors:
            raise DataFormatError(
                url, None, f"archive holds none of {', '.join(source.required_files)}"
            )
        root = min(anchors, key=lambda m: len(m.parts)).parent
        for f in source.files:
            member = root / f.name
            if member not in members:
                continue
            try:
                with zf.open(str(member)) as src, (out / f.name).open("wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
            except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
                raise DataFormatError(url, None, f"corrupt member {member}: {exc}") from exc


def _install(source: Source, staged: Path, target: Path) -> None:
    """Move verified files into ``target``: one atomic rename when it does not exist yet.

    A target that exists but is incomplete (e.g. ``ml-1m/`` holding only the NCF
    sub-folder) gets the files one by one, required files last, so the folder only counts
    as present once everything is in.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        try:
            os.rename(staged, target)
            return
        except OSError:
            if not target.is_dir():
                raise
            # Another process installed it concurrently; fall through and fill in.
    for f in source.files:
        src = staged / f.name
        if src.is_file():
            os.replace(src, target / f.name)


def _download(source: Source, root: Path) -> Path:
    target = root / source.folder
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{source.name}.", suffix=".partial", dir=root))
    try:
        files = staging / "files"
        files.mkdir()
        if source.archive_url is not None:
            archive = staging / "archive.zip"
            _fetch_url(source.archive_url, archive)
            _extract(source, archive, source.archive_url, files)
            origin = source.archive_url
        else:
            for fname, url in source.file_urls.items():
                _fetch_url(url, files / fname)
            origin = source.url or source.name
        if not is_present(source, files):
            need = " and ".join(" or ".join(g) for g in source.required)
            raise DataFormatError(origin, None, f"download lacks {need}")
        for f in source.files:
            if (files / f.name).is_file():
                try:
                    verify_file(files / f.name, f.sha256)
                except ChecksumError as exc:
                    raise ChecksumError(
                        f"{f.name} from {origin}", exc.expected, exc.actual
                    ) from None
        if is_present(source, target):  # someone else finished first
            return target
        _install(source, files, target)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
    log.info("installed %s into %s", source.name, target)
    return target


__all__ = [
    "DOWNLOAD_TIMEOUT",
    "ENV_CACHE_DIR",
    "ENV_DATA_DIR",
    "ENV_SKIP_CHECKSUM",
    "ChecksumError",
    "DataError",
    "DataNotFoundError",
    "cache_dir",
    "checksums_disabled",
    "data_file",
    "datasets_cache_dir",
    "is_present",
    "locate",
    "sha256_file",
    "verify",
    "verify_file",
]
