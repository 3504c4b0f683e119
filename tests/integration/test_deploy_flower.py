"""A real federation on loopback: one SuperLink and five SuperNodes (separate processes), TLS,
SuperNode authentication, Flower messages.

One federation serves two runs: plain FedMF, which must compute the simulator's model, then
FedMF under SecAgg+, during which a node is killed mid-round; the round completes without it.
A sixth node whose key was never registered must be refused throughout.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedrec.config import RunConfig, dump_config
from fedrec.data.table import Split
from fedrec.deploy.launcher import LocalFederation
from fedrec.simulation.training import train_federated
from fedrec.utils.atomic import atomic_write_text
from tests.synthetic import two_taste_split

N = 5


def _split() -> Split:
    return two_taste_split(50, 40)


def _cfg(secagg: bool) -> RunConfig:
    fed: dict[str, Any] = {
        "rounds": 1 if secagg else 2,
        "partition": "random",
        "silos": N,
        "eval_every": 1 if secagg else 2,
        "patience": 0,
        "checkpoint_every": 1,
        "server_lr": 2.0,
        "local": {"epochs": 1, "batch_size": 8, "lr": 1.0, "negatives": 2},
    }
    privacy: dict[str, Any] = {}
    if secagg:
        fed["weighting"] = "uniform"
        privacy = {"secagg": {"enabled": True, "clip": 4.0}}
    return RunConfig.model_validate(
        {
            "mode": "federated",
            "seed": 5,
            "threads": 1,
            "model": {"name": "mf", "dim": 8, "init_std": 0.1},
            "eval": {"ks": [5]},
            "train": {"monitor": "HR@5"},
            "federated": fed,
            "privacy": privacy,
            "deploy": {
                "client_randomness": "run-seed",
                "reply_timeout_s": 600,
                "wait_clients_s": 300,
            },
        }
    )


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    root = tmp_path_factory.mktemp("federation")
    fed = LocalFederation(_cfg(False), root, N, insecure_node=True)
    fed.prepare(_split())
    with fed:
        fed.start()
        yield fed


def _run(fed: LocalFederation, cfg: RunConfig, out: Path) -> dict[str, Any]:
    path = out.parent / f"{out.name}.toml"
    atomic_write_text(path, dump_config(cfg))
    return fed.wait(out, fed.submit(path, out), timeout=900)


def test_deployment_computes_the_simulators_model(
    federation: LocalFederation, tmp_path: Path
) -> None:
    cfg = _cfg(False)
    summary = _run(federation, cfg, tmp_path / "plain")
    sim = train_federated(cfg, _split(), checkpoint_dir=tmp_path / "sim")
    final = torch.load(tmp_path / "sim" / "checkpoint.pt", weights_only=False)["server"]["shared"]
    deployed = torch.load(tmp_path / "plain" / "shared_model.pt", weights_only=True)
    for k, v in deployed.items():
        assert torch.allclose(v, final[k], atol=1e-6), k
    # A client that missed the selection or the test (an offline node) would leave out users.
    assert summary["test_clients"] == N
    assert summary["test"] == pytest.approx(sim.test_metrics, abs=1e-9)
    assert summary["clients"] == N and summary["rounds"] == 2


def _holds_secagg_secrets(fed: LocalFederation, client: int) -> bool:
    """The client trained this round and advertised its keys (its secrets are on its disk)."""
    base = fed.root / "state" / f"client-{client:05d}"
    return any((d / "secagg.bin").exists() for d in base.glob("run-*"))


def test_secagg_round_completes_after_a_node_dies_mid_round(
    federation: LocalFederation, tmp_path: Path
) -> None:
    out = tmp_path / "secagg"
    killed = threading.Event()

    def killer() -> None:
        # The round has begun for client 4 once it holds its SecAgg secrets: kill its node.
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if _holds_secagg_secrets(federation, N - 1):
                federation.kill_node(N - 1)
                killed.set()
                return
            time.sleep(0.5)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    summary = _run(federation, _cfg(True), out)
    thread.join(5)
    assert killed.is_set()
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1]
    assert records[0]["participants"] == N - 1 and records[0]["dropped"] == 1
    assert any(e["client"] == N - 1 for e in records[0]["events"])
    assert "aborted" not in records[0]
    assert np.isfinite(summary["test"]["HR@5"])
    assert summary["uploads"]["secure_aggregation"] is True


def test_unregistered_node_is_refused(federation: LocalFederation) -> None:
    log = (federation.root / "logs" / "superlink.log").read_text()
    assert "No SuperNode found with the given public key" in log
    rogue = federation.procs["node-unregistered"]
    assert rogue.popen.poll() is not None or 'activate-node HTTP/1.1" 412' in log


def test_traffic_is_tls_with_the_federations_own_ca(federation: LocalFederation) -> None:
    assert federation.tls is not None
    ours = ssl.create_default_context(cafile=str(federation.tls.ca_cert))
    with (
        socket.create_connection(("127.0.0.1", federation.port), timeout=10) as sock,
        ours.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    # Anyone else's trust store rejects the certificate, and plain HTTP gets no answer.
    with pytest.raises(ssl.SSLError):
        other = ssl.create_default_context()
        with (
            socket.create_connection(("127.0.0.1", federation.port), timeout=10) as sock,
            other.wrap_socket(sock, server_hostname="127.0.0.1"),
        ):
            pass
    with socket.create_connection(("127.0.0.1", federation.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(10)
        try:
            answer = sock.recv(100)
        except (ConnectionResetError, TimeoutError):
            answer = b""
        assert not answer.startswith(b"HTTP/1.1 200")
