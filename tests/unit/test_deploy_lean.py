"""A deployed client's "hello" and SecAgg+ stages run in processes that never load torch, scipy,
pandas or dp-accounting: each such message is answered by a fresh process in Flower's design,
and those imports would dominate its cost."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.deploy.client import Device
from fedrec.deploy.inprocess import InProcessTransport
from fedrec.deploy.payload import Payload
from fedrec.deploy.server import serve
from fedrec.experiment.outputs import RunDirectory
from tests.unit.test_deploy_inprocess import _cfg, _devices, _split

HEAVY = ("torch", "scipy", "pandas", "dp_accounting", "pyarrow")

# The ClientApp module is the entry point Flower loads in each message's process.
CHILD = """
import pickle, sys, types
from fedrec.deploy import client_app
from fedrec.deploy.node import handle
shard, state, kind, req, HEAVY = pickle.load(sys.stdin.buffer)
ctx = types.SimpleNamespace(node_config={"shard-dir": shard, "state-dir": state})
try:
    reply, error = handle(client_app._device(ctx), kind, req), None
except Exception as exc:
    reply, error = None, repr(exc)
heavy = sorted(m for m in HEAVY if m in sys.modules)
pickle.dump((reply, error, heavy), sys.stdout.buffer)
"""


def _in_fresh_process(device: Device, kind: str, req: Payload) -> tuple[Payload, list[str]]:
    src = Path(__file__).resolve().parents[2] / "src"
    res = subprocess.run(
        [sys.executable, "-c", CHILD],
        input=pickle.dumps((str(device.shard_dir), str(device.state_dir), kind, req, HEAVY)),
        capture_output=True,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        timeout=120,
        check=True,
    )
    reply, error, heavy = pickle.loads(res.stdout)
    assert error is None, error
    return reply, heavy


def test_hello_and_every_secagg_stage_stay_torch_free(tmp_path: Path) -> None:
    split, cfg = _split(), _cfg(secagg=True, rounds=1)
    devices = _devices(cfg, split, tmp_path)
    transport = InProcessTransport(devices)
    original = transport.exchange
    seen: dict[str, list[str]] = {}

    def exchange(kind: str, requests: dict[int, Payload], timeout: float) -> dict[int, Payload]:
        if kind != "secagg" or 0 not in requests:
            return original(kind, requests, timeout)
        stage = str(requests[0].meta["stage"])
        out = original(kind, {c: r for c, r in requests.items() if c != 0}, timeout)
        out[0], seen[stage] = _in_fresh_process(devices[0], kind, requests[0])
        return out

    transport.exchange = exchange  # type: ignore[method-assign]
    summary: dict[str, Any] = serve(cfg, transport, RunDirectory(tmp_path / "out"))
    _, seen["hello"] = _in_fresh_process(devices[0], "hello", Payload())
    assert set(seen) == {"hello", "share", "mask", "unmask"}
    assert all(heavy == [] for heavy in seen.values()), seen
    assert summary["rounds"] == 1 and np.isfinite(summary["test"]["HR@5"])


def test_the_probe_sees_heavy_imports() -> None:
    """The check above can fail: a process that trains does load torch."""
    res = subprocess.run(
        [sys.executable, "-c", "import fedrec.deploy.client, sys; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
        timeout=120,
        check=True,
    )
    assert res.stdout.strip() == "True"
