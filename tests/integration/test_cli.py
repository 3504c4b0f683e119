"""The command line end to end on ML-100K: what a newcomer runs."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedrec.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

pytestmark = pytest.mark.realdata


def _run(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_centralized_run_writes_a_complete_run_directory(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    _run(
        "run",
        str(ROOT / "configs/ml-100k-central-mf.toml"),
        "--out",
        str(out),
        "--data-dir",
        str(data_dir),
        "--set",
        "train.epochs=2",
        "--set",
        "threads=1",
    )
    summary = json.loads((out / "summary.json").read_text())
    assert {"HR@10", "NDCG@10", "MRR", "AUC"} <= set(summary["test"])
    assert {"HR@10", "NDCG@10"} <= set(summary["valid"]) and summary["seconds"] > 0
    assert summary["data"]["users"] == 943 and summary["data"]["test_rows"] == 943
    assert tomllib.loads((out / "config.toml").read_text())["train"]["epochs"] == 2
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    assert (out / "per_user_test.csv").read_text().count("\n") == 944

    recs = _run("recommend", str(out), "--user", "1", "-k", "5")
    assert "(19" in recs  # MovieLens titles carry their year
    refused = runner.invoke(
        app,
        [
            "run",
            str(ROOT / "configs/ml-100k-central-mf.toml"),
            "--out",
            str(out),
            "--data-dir",
            str(data_dir),
        ],
    )
    assert refused.exit_code == 2 and "--overwrite" in refused.output


def test_federated_run_reports_rounds_and_bytes(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "fed"
    _run(
        "run",
        str(ROOT / "configs/ml-100k-fedmf.toml"),
        "--out",
        str(out),
        "--data-dir",
        str(data_dir),
        "--set",
        "federated.rounds=2",
        "--set",
        "federated.eval_every=1",
        "--set",
        "threads=1",
        "--set",
        "federated.sampling='fraction'",
        "--set",
        "federated.fraction=0.3",
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "federated" and summary["rounds"] == 2
    assert summary["clients"] == 943
    assert summary["bytes"]["up_total"] > 0 and summary["bytes"]["down_per_client_round"] > 0
    rounds = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["participants"] == 283 for r in rounds)  # 30% of 943
    assert (out / "checkpoints" / "checkpoint.pt").exists()
    for png in ("learning_curves.png", "loss.png", "valid_HR10.png", "valid_NDCG10.png"):
        assert (out / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    assert summary["uploads"]["form"] == "sparse rows with item ids"

    # The audit replays a round as this server saw it: plain sparse FedMF leaks everything.
    _run("audit", str(out), "--clients", "100", "--canaries", "100")
    audit = json.loads((out / "audit.json").read_text())
    assert audit["server_view"] == "sparse rows with item ids"
    assert audit["item_inference"]["auc_mean"] > 0.95
    assert audit["item_inference"]["advantage_over_popularity_mean"] > 0.1
    assert audit["item_inference"]["n_clients"] == 100
    assert 0.3 < audit["membership_inference"]["auc"] < 0.8
    canary = audit["canary_audit"]
    assert canary["adversary_view"] == "uploads" and canary["retrained"]
    assert canary["auc"] > 0.6 and canary["accounted_epsilon"] is None


def test_secagg_dp_run_reports_epsilon_and_hides_clients(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "private"
    _run(
        "run",
        str(ROOT / "configs/ml-100k-fedmf-secagg-dp.toml"),
        "--out",
        str(out),
        "--data-dir",
        str(data_dir),
        "--set",
        "federated.rounds=1",
        "--set",
        "federated.sampling='count'",
        "--set",
        "federated.count=60",
        "--set",
        "threads=1",
    )
    summary = json.loads((out / "summary.json").read_text())
    priv = summary["privacy"]
    assert priv["sampling"] == "fixed" and priv["rounds"] == 1 and priv["delta"] == 1e-6
    assert 7.0 < priv["epsilon"] <= 8.0 and priv["accountant"] == "rdp"
    assert summary["uploads"]["secure_aggregation"] and summary["uploads"]["user_level_dp"]
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["epsilon"] == priv["epsilon"]
    _run("audit", str(out), "--clients", "60", "--canaries", "100")
    audit = json.loads((out / "audit.json").read_text())
    assert audit["server_view"] == "sum over clients only"
    assert audit["item_inference"]["advantage_over_popularity_mean"] < 0.05
    canary = audit["canary_audit"]
    assert canary["adversary_view"] == "sums"
    assert canary["empirical_epsilon"] <= canary["accounted_epsilon"]


def test_data_info_and_bad_input(data_dir: Path, tmp_path: Path) -> None:
    info = _run("data", "info", "ml-100k", "--data-dir", str(data_dir), "--json")
    stats = json.loads(info)
    assert stats["users"] == 943 and stats["interactions"] == 100000
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlr = 'fast'\n")
    result = runner.invoke(app, ["run", str(bad), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "lr" in result.output
    result = runner.invoke(app, ["data", "info", "no-such-set"])
    assert result.exit_code == 2 and "ml-100k" in result.output
