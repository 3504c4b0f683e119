"""Loaders for the registered data sets and for users' own CSV/Parquet tables, one module per
source (as LensKit does) over a shared parsing core.

Every loader returns :class:`~fedrec.data.table.Interactions` with contiguous 0-based ids in
order of first appearance (raw ids kept in ``user_ids`` / ``item_ids``) and rows in file
order; :mod:`~fedrec.data.loaders.assembly` says how side features are laid out.
"""

from fedrec.data.loaders.filmtrust import load_filmtrust, load_filmtrust_trust
from fedrec.data.loaders.lastfm import load_lastfm_2k, load_lastfm_friends
from fedrec.data.loaders.movielens import load_ml1m, load_ml100k, load_ml_latest_small
from fedrec.data.loaders.ncf import NcfTestFiles, load_ncf_ml1m_test
from fedrec.data.loaders.registry import load_dataset
from fedrec.data.loaders.user_table import load_table

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
