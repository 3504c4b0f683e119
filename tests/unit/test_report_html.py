"""``fedrec report``: one offline HTML page comparing runs, checked as text and in a real
headless Chromium (rendered DOM and a non-blank screenshot)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fedrec.cli.main import app
from fedrec.config import RunConfig
from fedrec.experiment.audit import audit_run
from fedrec.experiment.outputs import RunDirectory
from fedrec.experiment.pipeline import run_experiment
from fedrec.report.html import ReportError, render
from tests.synthetic import tiny_config, two_taste_csv

BROWSER_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A DP federated run with its audit, and a centralized run, on the same data."""
    root = tmp_path_factory.mktemp("report")
    csv = two_taste_csv(root / "syn.csv")
    fed = tiny_config(csv, rounds=6)
    fed["federated"]["weighting"] = "uniform"
    fed["privacy"] = {"dp": {"enabled": True, "noise_multiplier": 0.5, "clip": 1.0}}
    fed["federated"]["checkpoint_every"] = 2
    central = tiny_config(csv, mode="centralized", rounds=4)
    dirs = [root / "runs" / "fed-dp", root / "runs" / "central"]
    for raw, d in zip((fed, central), dirs, strict=True):
        run_experiment(RunConfig.model_validate(raw), RunDirectory(d))
    report = audit_run(dirs[0], clients=10)
    (dirs[0] / "audit.json").write_text(json.dumps(report))
    return dirs


def _section(page: str, name: str) -> str:
    match = re.search(rf'<section id="{name}">(.*?)</section>', page, re.S)
    assert match, name
    return match.group(1)


def test_page_is_self_contained(runs: list[Path]) -> None:
    page = render(runs)
    assert not re.search(r"https?://", page, re.I)  # nothing to fetch: it opens offline
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in page and "<script" not in page


def test_page_shows_what_the_runs_hold(runs: list[Path]) -> None:
    page = render(runs)
    summaries = [json.loads((d / "summary.json").read_text()) for d in runs]
    # Configurations: differing options highlighted, identical ones not.
    configs = _section(page, "configs")
    diff_rows = re.findall(r'<tr class="diff"><td>([^<]*)</td>', configs)
    assert "mode" in diff_rows and "privacy.dp.enabled" in diff_rows
    assert "seed" not in diff_rows and "model.dim" not in diff_rows
    # Metrics: the best row is the one best on the validation monitor (HR@5), never test.
    best = max(range(2), key=lambda i: summaries[i]["valid"]["HR@5"])
    metrics = _section(page, "metrics")
    marked = re.findall(r'<tr class="best"><td>([^<]*)', metrics)
    assert marked == [f"{runs[best].name} ★"]
    for s in summaries:
        assert f"{s['test']['NDCG@10']:.4f}" in metrics
    # Privacy: epsilon of the DP run and its audit figures.
    privacy = _section(page, "privacy")
    assert f"{summaries[0]['privacy']['epsilon']:.4f}" in privacy
    audit = json.loads((runs[0] / "audit.json").read_text())
    assert f"{audit['canary_audit']['auc']:.4f}" in privacy
    assert f"{audit['canary_audit']['empirical_epsilon']:.4f}" in privacy
    assert f"{audit['membership_inference']['advantage']:.4f}" in privacy
    assert "no audit.json" in privacy
    # Per-user distribution: quantiles recomputed from the CSV.
    per_user = _section(page, "per-user")
    frame = pd.read_csv(runs[1] / "per_user_test.csv")
    assert f"{frame['NDCG@10'].median():.4f}" in per_user
    assert f"{(frame['HR@10'] == 0).mean():.4f}" in per_user
    # Communication and machines.
    bytes_ = _section(page, "bytes")
    assert f"{int(summaries[0]['bytes']['up_total']):,}" in bytes_
    assert html.escape(summaries[0]["machine"]["cpu"]) in _section(page, "machine")
    assert _section(page, "curves").count("data:image/png;base64,") == 1


def test_cli_writes_the_page_and_refuses_unfinished_runs(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "r" / "report.html"
    result = CliRunner().invoke(app, ["report", *map(str, runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("<!DOCTYPE html>")
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 2 and "not a finished run" in " ".join(result.output.split())
    with pytest.raises(ReportError):
        render([])


def _chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return exe


BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Every host name fails to resolve: the page must render with no network at all.
    "--host-resolver-rules=MAP * ~NOTFOUND",
]


@pytest.mark.slow
def test_page_renders_in_headless_chromium(runs: list[Path], tmp_path: Path) -> None:
    exe = _chromium()
    page = tmp_path / "report.html"
    page.write_text(render(runs))

    def browse(*args: str) -> subprocess.CompletedProcess[str]:
        profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
        return subprocess.run(
            [exe, *BROWSER_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
            capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=True,
        )  # fmt: skip

    dom = browse("--dump-dom").stdout
    for section in ("configs", "metrics", "curves", "bytes", "privacy", "per-user", "machine"):
        assert f'<section id="{section}">' in dom
    assert "★" in dom and runs[0].name in dom
    figures = page.read_text().count("data:image/png;base64,")
    assert figures >= 4 and dom.count("data:image/png;base64,") == figures
    shot = tmp_path / "shot.png"
    browse(f"--screenshot={shot}", "--window-size=1200,2400")
    pixels = mpimg.imread(shot)
    assert pixels.shape[:2] == (2400, 1200)
    gray = pixels[..., :3].mean(axis=2)
    assert float(np.std(gray)) > 0.05  # text, tables and figures, not a blank page
    assert float((gray < 0.5).mean()) > 0.005
