"""Locating data sets, the download path (file:// and a local HTTP server) and checksums."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedrec.data import fetch
from fedrec.data.errors import ChecksumError, DataError, DataFormatError, DataNotFoundError
from fedrec.data.fetch import (
    cache_dir,
    data_file,
    datasets_cache_dir,
    is_present,
    locate,
    sha256_file,
    verify,
)
from fedrec.data.sources import DATASETS, SOURCES, Source, SourceFile, get_source

DATA = b"1\t2\t3\n4\t5\t6\n"
EXTRA = b"extra side file\n"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _toy(url: str | None = None, data_hash: str | None = None, **kw: object) -> Source:
    return Source(
        name="toy",
        title="Toy",
        folder="toy-set",
        files=(
            SourceFile("side.txt", _sha(EXTRA)),
            SourceFile("README"),
            SourceFile("data.txt", data_hash or _sha(DATA)),
        ),
        required=(("data.txt",),),
        archive_url=url,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Own cache per test, no data dir from the environment, checksums on."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FEDREC_CACHE_DIR", str(cache))
    monkeypatch.delenv("FEDREC_DATA_DIR", raising=False)
    monkeypatch.delenv("FEDREC_SKIP_CHECKSUM", raising=False)
    return cache


def _register(monkeypatch: pytest.MonkeyPatch, source: Source) -> None:
    monkeypatch.setitem(SOURCES, source.name, source)


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _toy_folder(root: Path, data: bytes = DATA) -> Path:
    folder = root / "toy-set"
    folder.mkdir(parents=True)
    (folder / "data.txt").write_bytes(data)
    return folder


def _leftovers(cache: Path) -> list[str]:
    root = cache / "datasets"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# --------------------------------------------------------------------------- cache dir


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("FEDREC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "fedrec"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "fedrec"
    assert datasets_cache_dir() == cache_dir() / "datasets"


# ----------------------------------------------------------------------------- look-up


def test_lookup_order_explicit_env_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, _isolated: Path
) -> None:
    _register(monkeypatch, _toy())
    cached = _toy_folder(_isolated / "datasets")
    assert locate("toy", download=False) == cached
    env = _toy_folder(tmp_path / "env")
    monkeypatch.setenv("FEDREC_DATA_DIR", str(tmp_path / "env"))
    assert locate("toy", download=False) == env
    explicit = _toy_folder(tmp_path / "explicit")
    assert locate("toy", tmp_path / "explicit", download=False) == explicit
    # The data set folder itself is accepted as data_dir too.
    assert locate("toy", explicit, download=False) == explicit
    # An explicit dir without the data falls through to the next location.
    assert locate("toy", tmp_path / "empty", download=False) == env


def test_folder_without_required_file_is_not_present(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _register(monkeypatch, _toy())
    folder = tmp_path / "d" / "toy-set"
    folder.mkdir(parents=True)
    (folder / "side.txt").write_bytes(EXTRA)
    with pytest.raises(DataNotFoundError):
        locate("toy", tmp_path / "d", download=False)


def test_ml1m_needs_either_ratings_file(tmp_path: Path) -> None:
    source = get_source("ml-1m")
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "users.dat").write_text("")
    assert not is_present(source, folder)
    (folder / "ratings.no-timestamp.dat.gz").write_bytes(b"")
    assert is_present(source, folder)
    (folder / "ratings.no-timestamp.dat.gz").unlink()
    (folder / "ratings.dat").write_bytes(b"")
    assert is_present(source, folder)


def test_not_found_message_names_files_folders_and_network(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        locate("ml-1m", tmp_path / "mine", download=False)
    msg = str(info.value)
    assert str(tmp_path / "mine" / "ml-1m") in msg
    assert str(datasets_cache_dir() / "ml-1m") in msg
    assert "'ml-1m'" in msg and "FEDREC_DATA_DIR" in msg
    assert "ratings.dat or ratings.no-timestamp.dat.gz" in msg
    assert "Optional, used when present: users.dat, movies.dat." in msg
    assert "needs network" in msg and "https://files.grouplens.org" in msg
    assert "download=False" in msg
    assert isinstance(info.value, DataError)


def test_unknown_name_lists_known() -> None:
    with pytest.raises(DataError, match=r"unknown data set 'nope'; known: .*filmtrust"):
        locate("nope")
    assert set(DATASETS) == {"ml-100k", "ml-1m", "ml-latest-small", "lastfm-2k", "filmtrust"}


def test_registry_folders_and_urls() -> None:
    assert get_source("lastfm-2k").folder == "hetrec2011-lastfm-2k"
    assert get_source("ml-1m-ncf").folder == "ml-1m/ncf-leave-one-out"
    assert get_source("ml-1m").file("ratings.dat").sha256 == (
        "506d64ca44484487c11dc2d9a28de5c54948213e6b96285e298afe28d6ea4e0f"
    )
    for s in SOURCES.values():
        assert s.url is not None and s.url.startswith("https://")
        names = {f.name for f in s.files}
        assert all(n in names for group in s.required for n in group)


# ------------------------------------------------------------------------ downloading


def test_download_from_file_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, _isolated: Path
) -> None:
    archive = _zip(
        tmp_path / "toy.zip",
        {
            "toy-set/data.txt": DATA,
            "toy-set/side.txt": EXTRA,
            "toy-set/README": b"licence",
            "toy-set/unneeded.bin": b"x",
            "__MACOSX/toy-set/._data.txt": b"junk",
        },
    )
    _register(monkeypatch, _toy(archive.as_uri()))
    folder = locate("toy")
    assert folder == _isolated / "datasets" / "toy-set"
    assert (folder / "data.txt").read_bytes() == DATA
    assert sorted(p.name for p in folder.iterdir()) == ["README", "data.txt", "side.txt"]
    assert _leftovers(_isolated) == ["toy-set"]  # no staging folder left behind
    archive.unlink()
    assert locate("toy") == folder  # cached: no second download


def test_download_zip_without_folder_and_hostile_paths(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, _isolated: Path
) -> None:
    archive = _zip(tmp_path / "toy.zip", {"data.txt": DATA, "side.txt": EXTRA})
    _register(monkeypatch, _toy(archive.as_uri()))
    folder = locate("toy")
    assert (folder / "data.txt").read_bytes() == DATA and (folder / "side.txt").is_file()
    # Member paths never choose where files land: "../.." cannot escape the cache.
    evil = _zip(tmp_path / "evil.zip", {"../../data.txt": DATA, "../../side.txt": EXTRA})
    _register(monkeypatch, _toy(evil.as_uri()))
    (folder / "data.txt").unlink()
    assert (locate("toy") / "data.txt").read_bytes() == DATA
    assert not (tmp_path / "data.txt").exists() and not (_isolated / "data.txt").exists()


def test_download_checksum_mismatch_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, _isolated: Path
) -> None:
    archive = _zip(tmp_path / "toy.zip", {"data.txt": DATA + b"tampered\n", "side.txt": EXTRA})
    _register(monkeypatch, _toy(archive.as_uri()))
    with pytest.raises(ChecksumError, match=r"data.txt from file://.*toy.zip: SHA-256"):
        locate("toy")
    assert _leftovers(_isolated) == []
    monkeypatch.setenv("FEDREC_SKIP_CHECKSUM", "1")
    assert (locate("toy") / "data.txt").read_bytes().endswith(b"tampered\n")


def test_download_side_file_mismatch_also_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, _isolated: Path
) -> None:
    archive = _zip(tmp_path / "toy.zip", {"data.txt": DATA, "side.txt": b"other"})
    _register(monkeypatch, _toy(archive.as_uri()))
    with pytest.raises(ChecksumError, match=r"side\.txt"):
        locate("toy")
    assert _leftovers(_isolated) == []


@pytest.mark.parametrize(
    ("blob", "words"),
    [
        (b"this is not a zip", "not a valid zip archive"),
        (None, "archive holds none of data.txt"),
    ],
)
def test_download_bad_archive(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    _isolated: Path,
    blob: bytes | None,
    words: str,
) -> None:
    path = tmp_path / "toy.zip"
    if blob is None:
        _zip(path, {"side.txt": EXTRA})
    else:
        path.write_bytes(blob)
    _register(monkeypatch, _toy(path.as_uri()))
    with pytest.raises(DataFormatError, match=words):
        locate("toy")
    assert _leftovers(_isolated) == []


def test_corrupt_member_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, _isolated: Path
) -> None:
    path = _zip(tmp_path / "toy.zip", {"data.txt": DATA * 500})
    blob = bytearray(path.read_bytes())
    start = blob.index(b"data.txt") + len(b"data.txt")  # first byte of compressed data
    for k in range(start + 5, start + 25):
        blob[k] ^= 0xFF
    path.write_bytes(bytes(blob))
    _register(monkeypatch, _toy(path.as_uri()))
    with pytest.raises(DataFormatError, match=r"corrupt member data\.txt"):
        locate("toy")
    assert _leftovers(_isolated) == []


def test_offline_download_is_data_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, _toy("http://127.0.0.1:9/toy.zip"))
    with pytest.raises(DataNotFoundError) as info:
        locate("toy")
    assert "Download not possible: http://127.0.0.1:9/toy.zip" in str(info.value)


def test_install_into_existing_incomplete_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, _isolated: Path
) -> None:
    """Like ml-1m/ holding only the NCF sub-folder: files are added, the sub-folder kept."""
    sub = _isolated / "datasets" / "toy-set" / "sub"
    sub.mkdir(parents=True)
    (sub / "keep.txt").write_text("kept")
    archive = _zip(tmp_path / "toy.zip", {"data.txt": DATA, "side.txt": EXTRA})
    _register(monkeypatch, _toy(archive.as_uri()))
    folder = locate("toy")
    assert (folder / "data.txt").read_bytes() == DATA
    assert (sub / "keep.txt").read_text() == "kept"
    assert _leftovers(_isolated) == ["toy-set"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()

    def handler(*args: object) -> _Quiet:
        return _Quiet(*args, directory=str(root))  # type: ignore[arg-type]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_http_archive_and_404(
    monkeypatch: pytest.MonkeyPatch, http_root: tuple[Path, str], _isolated: Path
) -> None:
    root, base = http_root
    _zip(root / "toy.zip", {"toy/data.txt": DATA, "toy/side.txt": EXTRA})
    _register(monkeypatch, _toy(f"{base}/missing.zip"))
    with pytest.raises(DataNotFoundError, match="HTTP 404"):
        locate("toy")
    _register(monkeypatch, _toy(f"{base}/toy.zip"))
    assert (locate("toy") / "side.txt").read_bytes() == EXTRA


def test_http_loose_files_resource(
    monkeypatch: pytest.MonkeyPatch, http_root: tuple[Path, str], _isolated: Path
) -> None:
    root, base = http_root
    (root / "a.rating").write_bytes(DATA)
    (root / "a.negative").write_bytes(EXTRA)
    source = Source(
        name="res",
        title="Resource",
        folder="toy-set/loose",
        kind="resource",
        files=(SourceFile("a.negative", _sha(EXTRA)), SourceFile("a.rating", _sha(DATA))),
        required=(("a.rating",), ("a.negative",)),
        file_urls={"a.negative": f"{base}/a.negative", "a.rating": f"{base}/a.rating"},
    )
    _register(monkeypatch, source)
    folder = locate("res")
    assert folder == _isolated / "datasets" / "toy-set" / "loose"
    assert (folder / "a.rating").read_bytes() == DATA


# ------------------------------------------------------------------------- checksums


def test_lazy_verification_and_digest_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = _toy()
    folder = _toy_folder(tmp_path)
    calls: list[Path] = []
    real_open = Path.open

    def counting_open(self: Path, *args: object, **kw: object) -> object:
        if self.name == "data.txt":
            calls.append(self)
        return real_open(self, *args, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", counting_open)
    assert data_file(folder, source, "data.txt") == folder / "data.txt"
    assert data_file(folder, source, "data.txt") == folder / "data.txt"
    assert len(calls) == 1  # hashed once, then remembered
    (folder / "data.txt").write_bytes(DATA + b"7\t8\t9\n")
    with pytest.raises(ChecksumError, match=r"data.txt: SHA-256 is .*FEDREC_SKIP_CHECKSUM=1"):
        data_file(folder, source, "data.txt")
    monkeypatch.setenv("FEDREC_SKIP_CHECKSUM", "1")
    assert data_file(folder, source, "data.txt").is_file()
    assert sha256_file(folder / "data.txt") == _sha(DATA + b"7\t8\t9\n")


def test_verify_report(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _register(monkeypatch, _toy())
    folder = _toy_folder(tmp_path)
    (folder / "README").write_text("x")
    assert verify("toy", tmp_path) == {"side.txt": "missing", "README": "no hash", "data.txt": "ok"}
    (folder / "side.txt").write_bytes(b"changed")
    with pytest.raises(ChecksumError, match=r"side\.txt"):
        verify("toy", tmp_path)
    monkeypatch.setenv("FEDREC_SKIP_CHECKSUM", "yes")
    assert verify("toy", tmp_path)["side.txt"] == "skipped"


def test_timeout_is_passed_to_urlopen(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []

    def fake_urlopen(req: object, timeout: float) -> object:
        seen.append(timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr("urllib.request.urlopen", fake_urlopen)
    _register(monkeypatch, _toy("https://example.invalid/toy.zip"))
    with pytest.raises(DataNotFoundError, match="timed out"):
        locate("toy")
    assert seen == [fetch.DOWNLOAD_TIMEOUT]
