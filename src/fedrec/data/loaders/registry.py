"""Load a registered data set by its name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fedrec.data.errors import DataError
from fedrec.data.loaders.filmtrust import load_filmtrust
from fedrec.data.loaders.lastfm import load_lastfm_2k
from fedrec.data.loaders.movielens import load_ml1m, load_ml100k, load_ml_latest_small
from fedrec.data.sources import DATASETS, SOURCES
from fedrec.data.table import Interactions

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
