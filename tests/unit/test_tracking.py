"""MLflow tracking: a real tracking server read back with MlflowClient, the local-store default,
and a server that is down from the start or dies mid-run (training goes on, one warning)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from fedrec.config import RunConfig, apply_overrides, load_config
from fedrec.experiment.outputs import RunDirectory
from fedrec.experiment.pipeline import run_experiment
from fedrec.tracking import (
    Tracker,
    TrackingUnavailableError,
    TrackingWarning,
    attach_artifact,
    flatten_config,
    metric_key,
)
from fedrec.tracking.mlflow_run import privacy_mechanisms
from tests.synthetic import tiny_config, two_taste_csv

SERVER_WAIT_S = 180.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def mlflow_server(tmp: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real ``mlflow server`` on loopback with a SQLite backend, killed on exit."""
    port = _free_port()
    log = (tmp / "server.log").open("wb")
    exe = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
         "--artifacts-destination", str(tmp / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_WAIT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(tmp / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not up after {SERVER_WAIT_S:.0f}s")
            time.sleep(0.5)
        yield url, proc
    finally:
        stop(proc)
        log.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """The server and its workers (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    return two_taste_csv(tmp_path / "syn.csv")


def _dp_config(csv: Path) -> RunConfig:
    raw = tiny_config(csv, rounds=6)
    raw["federated"]["weighting"] = "uniform"
    raw["privacy"] = {"dp": {"enabled": True, "noise_multiplier": 0.5, "clip": 1.0}}
    raw["tracking"] = {"mlflow": True, "experiment": "t", "tags": {"owner": "tests"}}
    return RunConfig.model_validate(raw)


def _records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _check_mirror(client: MlflowClient, run_dir: Path, cfg: RunConfig) -> str:
    """Params, per-round histories, test once, artifacts and tags match the run directory."""
    info = json.loads((run_dir / "mlflow.json").read_text())
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params == flatten_config(cfg)
    records, summary = _records(run_dir), json.loads((run_dir / "summary.json").read_text())
    step = "round" if cfg.mode == "federated" else "epoch"
    per_round = ["loss", "bytes_up_per_client", "bytes_down_per_client", "seconds", "epsilon"]
    if cfg.mode != "federated":
        per_round = ["train_loss", "seconds"]
    for key in [*per_round, "valid/HR@5", "valid/NDCG@10"]:
        expected = [(r[step], float(r[key])) for r in records if r.get(key) is not None]
        assert expected, key
        got = _history(client, run.info.run_id, metric_key(key))
        assert [s for s, _ in got] == [s for s, _ in expected], key
        assert [v for _, v in got] == pytest.approx([v for _, v in expected]), key
    for k, v in summary["test"].items():
        got = _history(client, run.info.run_id, metric_key(f"test/{k}"))
        assert len(got) == 1 and got[0] == (0, pytest.approx(v))
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "config.toml", "metrics.jsonl", "per_user_test.csv"} <= names
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/learning_curves.png" in plots
    local = client.download_artifacts(run.info.run_id, "summary.json", str(run_dir.parent))
    assert json.loads(Path(local).read_text()) == summary
    tags = run.data.tags
    assert tags["fedrec.data"] == "table" and tags["fedrec.model"] == "mf"
    assert tags["fedrec.mode"] == cfg.mode
    assert tags["fedrec.privacy"] == privacy_mechanisms(cfg)
    return str(info["run_id"])


@pytest.mark.slow
def test_real_server_mirrors_a_dp_federated_run(
    tmp_path: Path, csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _dp_config(csv)
    with mlflow_server(tmp_path) as (url, _):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        run_dir = tmp_path / "runs" / "dp"
        with warnings.catch_warnings():
            warnings.simplefilter("error", TrackingWarning)
            run_experiment(cfg, RunDirectory(run_dir))
        client = MlflowClient(url)
        run_id = _check_mirror(client, run_dir, cfg)
        assert client.get_run(run_id).data.tags["owner"] == "tests"
        assert client.get_run(run_id).data.tags["fedrec.privacy"] == "dp-central"
        eps = _history(client, run_id, "privacy/epsilon")
        assert len(eps) == 1 and eps[0] == (0, pytest.approx(_records(run_dir)[-1]["epsilon"]))
        # A later `fedrec audit` adds its report to the same MLflow run.
        audit = run_dir / "audit.json"
        audit.write_text('{"server_view": "per-client uploads"}\n')
        assert attach_artifact(run_dir, audit)
        assert "audit.json" in {a.path for a in client.list_artifacts(run_id)}
    assert not (tmp_path / "mlflow.db").exists()  # the server's store, not a local one


def test_local_store_is_the_default(
    tmp_path: Path, csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = tiny_config(csv, mode="centralized", rounds=3)
    cfg = RunConfig.model_validate({**raw, "tracking": {"mlflow": True}})
    run_dir = tmp_path / "runs" / "central"
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrackingWarning)
        run_experiment(cfg, RunDirectory(run_dir))
    store = tmp_path / "runs" / "mlflow.db"
    assert store.is_file()
    info = json.loads((run_dir / "mlflow.json").read_text())
    assert info["tracking_uri"] == f"sqlite:///{store.resolve().as_posix()}"
    _check_mirror(MlflowClient(info["tracking_uri"]), run_dir, cfg)
    assert any((tmp_path / "runs" / "mlartifacts").rglob("summary.json"))


def test_unreachable_server_warns_once_and_the_run_completes(
    tmp_path: Path, csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    cfg = _dp_config(csv)
    run_dir = tmp_path / "run"
    with pytest.warns(TrackingWarning) as caught:
        summary = run_experiment(cfg, RunDirectory(run_dir))
    assert len([w for w in caught if issubclass(w.category, TrackingWarning)]) == 1
    assert "training goes on" in str(caught[0].message)
    assert json.loads((run_dir / "summary.json").read_text())["test"] == summary["test"]
    assert [r["round"] for r in _records(run_dir)] == list(range(1, 7))


@pytest.mark.slow
def test_server_dying_mid_run_costs_one_warning(
    tmp_path: Path, csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _dp_config(csv)
    run_dir = tmp_path / "run"
    with mlflow_server(tmp_path) as (url, proc):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)

        def kill_after_round_2(record: dict[str, Any]) -> None:
            if record["round"] == 2:
                stop(proc)

        with pytest.warns(TrackingWarning) as caught:
            run_experiment(cfg, RunDirectory(run_dir), on_eval=kill_after_round_2)
    assert len([w for w in caught if issubclass(w.category, TrackingWarning)]) == 1
    assert (run_dir / "mlflow.json").is_file()  # it was tracking before the server died
    assert [r["round"] for r in _records(run_dir)] == list(range(1, 7))
    for name in ("summary.json", "config.toml", "per_user_test.csv", "model.pt"):
        assert (run_dir / name).is_file(), name


def test_tracking_off_touches_no_store(tmp_path: Path, csv: Path) -> None:
    cfg = RunConfig.model_validate(tiny_config(csv, rounds=2))
    run_experiment(cfg, RunDirectory(tmp_path / "run"))
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "run" / "mlflow.json").exists()


def test_missing_mlflow_is_a_clear_error(
    tmp_path: Path, csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    cfg = _dp_config(csv)
    with pytest.raises(TrackingUnavailableError, match=r"fedrec\[tracking\]"):
        Tracker(cfg, tmp_path / "run")


def test_flattened_params_are_set_keys() -> None:
    """Every param name is a ``--set`` key: feeding them back rebuilds the configuration."""
    cfg = load_config(None, ["privacy.dp.clip_weights={global_bias = 0.0}", "model.dim=12"])
    flat = flatten_config(cfg)
    overrides = []
    for k, v in flat.items():
        if v == "null":
            continue  # TOML has no null: unset options keep their default (None)
        try:
            json.loads(v)
            overrides.append(f"{k}={v}")
        except json.JSONDecodeError:
            overrides.append(f"{k}={json.dumps(v)}")
    assert RunConfig.model_validate(apply_overrides({}, overrides)) == cfg
    assert flat["privacy.dp.clip_weights.global_bias"] == "0.0"
    assert flat["model.name"] == "mf" and flat["model.dim"] == "12"


def test_metric_keys_and_privacy_tags() -> None:
    assert metric_key("valid/HR@10") == "valid/HR_at_10"
    assert metric_key("a b:c-d.e/f#g") == "a b:c-d.e/f_g"
    cfg = load_config(
        None,
        [
            'mode="federated"',
            'federated.weighting="uniform"',
            "privacy.secagg.enabled=true",
            "privacy.dp.enabled=true",
            'privacy.dp.mode="distributed"',
            "privacy.dp.noise_multiplier=1.0",
            "privacy.obfuscation.pseudo_items=3",
        ],
    )
    assert privacy_mechanisms(cfg) == "secagg,dp-distributed,pseudo-items"
    assert privacy_mechanisms(RunConfig()) == "none"


def test_deployed_run_is_tracked_by_the_server(tmp_path: Path) -> None:
    """The server logs rounds and the final test metrics; the client side never loads MLflow
    (checked in a fresh interpreter importing everything a client node runs)."""
    from fedrec.deploy.client import Device
    from fedrec.deploy.inprocess import InProcessTransport
    from fedrec.deploy.server import serve
    from fedrec.deploy.shards import write_shards
    from tests.synthetic import two_taste_split

    split = two_taste_split(40, 30, per_user=7, string_ids=True)
    cfg = RunConfig.model_validate(
        {
            "mode": "federated",
            "seed": 3,
            "model": {"name": "mf", "dim": 8, "init_std": 0.1},
            "eval": {"ks": [5]},
            "train": {"monitor": "HR@5"},
            "federated": {"rounds": 3, "partition": "random", "silos": 4, "eval_every": 1,
                          "patience": 0, "local": {"batch_size": 8, "lr": 1.0}},
            "deploy": {"client_randomness": "run-seed", "wait_clients_s": 5},
            "tracking": {"mlflow": True},
        }
    )  # fmt: skip
    paths = write_shards(cfg, split, tmp_path / "shards")
    devices = {i: Device(p, tmp_path / "state" / p.name) for i, p in enumerate(paths)}
    run_dir = tmp_path / "runs" / "deployed"
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrackingWarning)
        summary = serve(cfg, InProcessTransport(devices), RunDirectory(run_dir))
    info = json.loads((run_dir / "mlflow.json").read_text())
    client = MlflowClient(info["tracking_uri"])
    assert [s for s, _ in _history(client, info["run_id"], "valid/HR_at_5")] == [1, 2, 3]
    for k, v in summary["test"].items():
        assert _history(client, info["run_id"], metric_key(f"test/{k}")) == [(0, pytest.approx(v))]
    code = (
        "import sys, fedrec.deploy.client_app, fedrec.deploy.client, fedrec.deploy.node\n"
        "import fedrec.data, fedrec.models, fedrec.eval, fedrec.federated, fedrec.privacy\n"
        "bad = [m for m in sys.modules if m.startswith(('mlflow', 'optuna', 'fedrec.tracking',"
        " 'fedrec.tune', 'fedrec.experiment'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_cli_run_mlflow_flag(tmp_path: Path, csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tomli_w
    from typer.testing import CliRunner

    from fedrec.cli.main import app

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = tmp_path / "c.toml"
    config.write_text(tomli_w.dumps(tiny_config(csv, rounds=2)))
    out = tmp_path / "runs" / "r"
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out), "--mlflow"])
    assert result.exit_code == 0, result.output
    assert load_config(out / "config.toml").tracking.mlflow
    info = json.loads((out / "mlflow.json").read_text())
    assert MlflowClient(info["tracking_uri"]).get_run(info["run_id"]).info.status == "FINISHED"
