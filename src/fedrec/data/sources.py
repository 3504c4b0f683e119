"""Registry of the public data sets fedrec knows: where they live, where to get them, and
the SHA-256 of every data file, so a run can prove it used the published bytes.

Hashes are per extracted file, not per archive: we know the file hashes (see the data
directory's SOURCES.md) and archives get re-zipped. Documentation files (READMEs) are kept
for their licence text but not hashed, because GroupLens edits them (e.g. the citation)
without touching the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fedrec.data.errors import DataError

_GROUPLENS = "https://files.grouplens.org/datasets"
_NCF = "https://raw.githubusercontent.com/hexiangnan/neural_collaborative_filtering/master/Data"


@dataclass(frozen=True)
class SourceFile:
    """One file of a data set; ``sha256`` is None when no trusted hash is known."""

    name: str
    sha256: str | None = None


@dataclass(frozen=True)
class Source:
    """One downloadable data set or resource and the files that make it up."""

    name: str
    title: str
    folder: str
    """Folder (relative, ``/``-separated) inside a data directory or the cache."""
    files: tuple[SourceFile, ...]
    """Every file we keep from the download, in the order they are installed."""
    required: tuple[tuple[str, ...], ...]
    """The folder is present when, for each group, at least one of its files exists."""
    kind: Literal["dataset", "resource"] = "dataset"
    archive_url: str | None = None
    """A zip holding the files (anywhere inside it)."""
    file_urls: dict[str, str] = field(default_factory=dict)
    """Per-file URLs, for resources published as loose files."""
    licence: str = ""
    citation: str = ""

    def file(self, name: str) -> SourceFile:
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no file {name!r}")

    @property
    def url(self) -> str | None:
        """Where the data comes from, for messages (the archive, or the first file URL)."""
        if self.archive_url is not None:
            return self.archive_url
        return next(iter(self.file_urls.values()), None)

    @property
    def required_files(self) -> tuple[str, ...]:
        """The first choice of each requirement group, for 'put these files there' messages."""
        return tuple(group[0] for group in self.required)


_ML_CITATION = (
    "F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and "
    "Context. ACM TiiS 5, 4, Article 19."
)
_ML_NO_REDIST = (
    "GroupLens: research use only; no redistribution without permission; no commercial use."
)

SOURCES: dict[str, Source] = {
    "ml-100k": Source(
        name="ml-100k",
        title="MovieLens 100K",
        folder="ml-100k",
        archive_url=f"{_GROUPLENS}/movielens/ml-100k.zip",
        files=(
            SourceFile(
                "u.data", "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"
            ),
            SourceFile(
                "u.item", "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701"
            ),
            SourceFile(
                "u.user", "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c"
            ),
            SourceFile(
                "u.genre", "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb"
            ),
            SourceFile(
                "u.occupation", "cd5fbec9afe345d993a62fc7817df1a4a9079c4feb267b3118763b8fd942137d"
            ),
            SourceFile(
                "u.info", "5b0a40b2e47a729ee6203063f6dcf8790c2e63f5a18663e6ee318a72c5f3c27b"
            ),
            SourceFile("README"),
        ),
        required=(("u.data",),),
        licence=_ML_NO_REDIST,
        citation=_ML_CITATION,
    ),
    "ml-1m": Source(
        name="ml-1m",
        title="MovieLens 1M",
        folder="ml-1m",
        archive_url=f"{_GROUPLENS}/movielens/ml-1m.zip",
        files=(
            SourceFile(
                "users.dat", "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3"
            ),
            SourceFile(
                "movies.dat", "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9"
            ),
            SourceFile("README"),
            SourceFile(
                "ratings.dat", "506d64ca44484487c11dc2d9a28de5c54948213e6b96285e298afe28d6ea4e0f"
            ),
            # Not in the official zip: the ratings without timestamps, rebuilt from public
            # conversions (see SOURCES.md). Used only when ratings.dat is absent.
            SourceFile(
                "ratings.no-timestamp.dat.gz",
                "0b42fb8501fc37cddf414985f35a59ac7d4ecc121b86f629d7e0514062ec6bb0",
            ),
        ),
        required=(("ratings.dat", "ratings.no-timestamp.dat.gz"),),
        licence=_ML_NO_REDIST,
        citation=_ML_CITATION,
    ),
    "ml-latest-small": Source(
        name="ml-latest-small",
        title="MovieLens latest-small (2018-09)",
        folder="ml-latest-small",
        archive_url=f"{_GROUPLENS}/movielens/ml-latest-small.zip",
        files=(
            SourceFile(
                "movies.csv", "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07"
            ),
            SourceFile(
                "links.csv", "97ad18e4e56a09363c65676b6cb3482ce3e2cea2372a24620c1599c843325f31"
            ),
            SourceFile(
                "tags.csv", "92a9f8bb7916dceef6151209845788c3643f794dfa79d1feaec7121b5960399d"
            ),
            SourceFile("README.txt"),
            SourceFile(
                "ratings.csv", "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646"
            ),
        ),
        required=(("ratings.csv",),),
        licence=(
            "GroupLens: research use only; redistribution (also of transformations) only "
            "under the same licence; no commercial use."
        ),
        citation=_ML_CITATION,
    ),
    "lastfm-2k": Source(
        name="lastfm-2k",
        title="HetRec 2011 Last.fm 2K",
        folder="hetrec2011-lastfm-2k",
        archive_url=f"{_GROUPLENS}/hetrec2011/hetrec2011-lastfm-2k.zip",
        files=(
            SourceFile(
                "artists.dat", "c173881362c6b28551368fecb3c0be5a6a30a6cd859e1f5775413dfe46d48648"
            ),
            SourceFile(
                "user_friends.dat",
                "9a3a8f7fa5f5ec832335e5b58ed69a4cf27c6f6f6afcde62134810eea46445a7",
            ),
            SourceFile("readme.txt"),
            SourceFile(
                "user_artists.dat",
                "650cd69d5a68db24b439042557aa539aec47e473273e12cdfdca2cd944b3773a",
            ),
        ),
        required=(("user_artists.dat",),),
        licence="Last.fm via HetRec 2011: non-commercial use only.",
        citation=(
            "Cantador, Brusilovsky, Kuflik. 2nd Workshop on Information Heterogeneity and "
            "Fusion in Recommender Systems (HetRec 2011), RecSys 2011. Data: Last.fm."
        ),
    ),
    "filmtrust": Source(
        name="filmtrust",
        title="FilmTrust",
        folder="filmtrust",
        archive_url="https://guoguibing.github.io/librec/datasets/filmtrust.zip",
        files=(
            SourceFile(
                "trust.txt", "64573a033add72b988a0fb140fdbc0ad3464cb9821f940007aff6fda44b09603"
            ),
            SourceFile("readme.txt"),
            SourceFile(
                "ratings.txt", "241167424e24d588e8871d68641e94ead98d5b3a4f0db01ef3181a74ad35e7a1"
            ),
        ),
        required=(("ratings.txt",),),
        licence="No licence terms given; 'Copy Right 2013 Guibing Guo'.",
        citation=(
            "G. Guo, J. Zhang, N. Yorke-Smith. A Novel Bayesian Similarity Measure for "
            "Recommender Systems. IJCAI 2013."
        ),
    ),
    "ml-1m-ncf": Source(
        name="ml-1m-ncf",
        title="NCF leave-one-out test files for MovieLens 1M",
        folder="ml-1m/ncf-leave-one-out",
        kind="resource",
        file_urls={
            "ml-1m.test.negative": f"{_NCF}/ml-1m.test.negative",
            "ml-1m.test.rating": f"{_NCF}/ml-1m.test.rating",
        },
        files=(
            SourceFile(
                "ml-1m.test.negative",
                "127853228a76b7d21c0481e8ef8d00dd009cd5c88670dbdd9e9debfdb9f93de4",
            ),
            SourceFile(
                "ml-1m.test.rating",
                "231ae11eb060b643a8c58c063cd17ffc743b54f569afb073d1abb6cf126b88b5",
            ),
        ),
        required=(("ml-1m.test.rating",), ("ml-1m.test.negative",)),
        licence="Apache-2.0 (repository); the data derive from MovieLens 1M (see its terms).",
        citation="X. He et al. Neural Collaborative Filtering. WWW 2017.",
    ),
}

DATASETS: tuple[str, ...] = tuple(n for n, s in SOURCES.items() if s.kind == "dataset")
"""Names :func:`fedrec.data.loaders.load_dataset` accepts."""


def get_source(name: str) -> Source:
    """The registered source ``name``; an unknown name lists the known ones."""
    try:
        return SOURCES[name]
    except KeyError:
        known = ", ".join(sorted(SOURCES))
        raise DataError(f"unknown data set {name!r}; known: {known}") from None
