"""Data sets, id maps, side features, splits and negative sampling."""

from fedrec.data.errors import ChecksumError, DataError, DataFormatError, DataNotFoundError
from fedrec.data.fetch import cache_dir, locate
from fedrec.data.info import describe
from fedrec.data.loaders import load_dataset, load_table
from fedrec.data.table import Holdout, Interactions, Split

__all__ = [
    "ChecksumError",
    "DataError",
    "DataFormatError",
    "DataNotFoundError",
    "Holdout",
    "Interactions",
    "Split",
    "cache_dir",
    "describe",
    "load_dataset",
    "load_table",
    "locate",
]
