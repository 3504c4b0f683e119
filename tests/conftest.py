"""Shared fixtures. Real-data tests fail (never skip) when the data directory is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data sets' directory (``FEDREC_DATA_DIR``); a missing one is a failure."""
    value = os.environ.get("FEDREC_DATA_DIR")
    if not value:
        pytest.fail(
            "FEDREC_DATA_DIR is not set: real-data tests need it (e.g. ../shared/data). "
            "They fail rather than skip so CI cannot pass without them."
        )
    path = Path(value).resolve()
    if not path.is_dir():
        pytest.fail(f"FEDREC_DATA_DIR={value} is not a directory")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep tests from reading or writing the user's real cache directory."""
    monkeypatch.setenv("FEDREC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "fedrec-cache"))
