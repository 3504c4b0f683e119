"""The "On separate machines" recipe of docs/deployment.md, command by command, on loopback.

The commands are read from that page itself and run with the real ``fedrec`` and Flower
CLIs; only what cannot be real on one machine is substituted: the server's name (node 0
reaches it as ``localhost``, node 1 as ``127.0.0.1``), the bind-all address (127.0.0.1: the
SuperLink's own SuperExec dials 127.0.0.1 either way), ports, paths, the number of nodes and
a tiny synthetic data set (plain FedMF, one round: SecAgg+ over Flower is covered by
test_deploy_flower.py). The run must finish and write its summary; a SuperNode given
another CA must exit with a clear error.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fedrec
from fedrec.config import RunConfig, dump_config, load_config
from fedrec.deploy.credentials import tls_certificates
from fedrec.deploy.launcher import (
    LaunchError,
    LocalFederation,
    _bin,
    _free_port,
    _Proc,
    tls_failures,
)
from fedrec.experiment.pipeline import prepare
from fedrec.utils.atomic import atomic_write_text

pytestmark = pytest.mark.slow

RECIPE_PAGE = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
NODES = 2
SERVER = "server.example.org"
DAEMONS = ("flower-superlink", "flower-supernode")


def recipe() -> tuple[list[list[str]], dict[str, str], dict[str, Any]]:
    """The recipe's commands, its exported variables and the flwr config it describes."""
    text = RECIPE_PAGE.read_text()
    start = text.index("```bash", text.index("On separate machines"))
    block = text[start + len("```bash") : text.index("```", start + len("```bash"))]
    commands: list[list[str]] = []
    exports: dict[str, str] = {}
    toml: list[str] = []
    in_toml, line = False, ""
    for raw in block.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#"):
            if "config.toml" in stripped:
                in_toml = True
            elif in_toml and raw.startswith("#   "):
                toml.append(raw[len("#   ") :])
            continue
        in_toml = False
        line += " " + stripped.removesuffix("\\")
        if stripped.endswith("\\"):
            continue
        args = shlex.split(line, comments=True)
        line = ""
        if not args:
            continue
        if args[0] == "export":
            name, _, value = args[1].partition("=")
            exports[name] = value
        else:
            commands.append(args)
    return commands, exports, tomllib.loads("\n".join(toml))


def _table(path: Path, users: int = 40, items: int = 30) -> None:
    """Two taste groups (learnable), as a CSV a user would bring."""
    rng = np.random.default_rng(3)
    rows = ["user,item"]
    for u in range(users):
        pool = np.arange(items)[np.arange(items) % 2 == u % 2]
        rows += [f"u{u},i{i}" for i in rng.choice(pool, size=8, replace=False)]
    atomic_write_text(path, "\n".join(rows) + "\n")


def _config(work: Path) -> Path:
    _table(work / "ratings.csv")
    cfg = RunConfig.model_validate(
        {
            "mode": "federated",
            "seed": 1,
            "threads": 1,
            "data": {
                "name": "table",
                "table": {
                    "path": str(work / "ratings.csv"),
                    "user_col": "user",
                    "item_col": "item",
                },
                "split": "loo-random",
                "eval_negatives": 10,
            },
            "model": {"name": "mf", "dim": 8, "init_std": 0.1},
            "eval": {"ks": [5]},
            "train": {"monitor": "HR@5"},
            "federated": {
                "rounds": 1,
                "partition": "random",
                "silos": NODES,
                "eval_every": 1,
                "patience": 0,
                "checkpoint_every": 1,
                "local": {"epochs": 1, "batch_size": 8, "lr": 1.0, "negatives": 2},
            },
            "deploy": {"reply_timeout_s": 300, "wait_clients_s": 300},
        }
    )
    path = work / "tiny.toml"
    atomic_write_text(path, dump_config(cfg))
    return path


class Recipe:
    """Runs the recipe's commands in ``work`` with loopback substitutions."""

    def __init__(self, work: Path, exports: dict[str, str]) -> None:
        self.work = work
        self.link_port = _free_port()
        self.node_ports = [_free_port() for _ in range(NODES)]
        self.config = _config(work)
        self.out = work / "runs" / "r1"
        self.procs: dict[str, _Proc] = {}
        src = str(Path(fedrec.__file__).resolve().parents[1])
        self.env = {
            **os.environ,
            **exports,
            "FLWR_HOME": str(work / "flwr-home"),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
            "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
        }

    def substitute(self, args: list[str], node: int = 0) -> list[str]:
        out = []
        for i, a in enumerate(args):
            if i > 0 and args[i - 1] == "--nodes":
                a = str(NODES)
            elif a == "ca.crt":  # the CA as copied to a client machine
                a = str(self.work / "creds" / "tls" / "ca.crt")
            out.append(self.local(a, node))
        out[0] = _bin(out[0])
        return out

    def local(self, text: str, node: int = 0) -> str:
        host = "localhost" if node == 0 else "127.0.0.1"  # by name, then by IP
        table = {
            SERVER: host,
            "0.0.0.0": "127.0.0.1",
            "9093": str(self.link_port),
            "9094": str(self.node_ports[node]),
            "configs/deploy-ml-100k-secagg.toml": str(self.config),
            "/srv/fedrec/deploy-ml-100k-secagg.toml": str(self.config),
            "/srv/fedrec/runs/r1": str(self.out),
            "/srv/fedrec/creds": str(self.work / "creds"),
            "/data/client-0000i": str(self.work / "shards" / f"client-{node:05d}"),
            "/var/lib/fedrec": str(self.work / f"state-{node}"),
            "node-0000i": str(self.work / "creds" / "keys" / f"node-{node:05d}"),
            "node-00000.pub": f"node-{node:05d}.pub",
        }
        for old, new in table.items():
            text = text.replace(old, new)
        return text

    def run(self, args: list[str]) -> str:
        res = subprocess.run(
            args, cwd=self.work, env=self.env, capture_output=True, text=True, timeout=300
        )
        assert res.returncode == 0, f"{shlex.join(args)}:\n{res.stdout}\n{res.stderr}"
        return res.stdout

    def spawn(self, name: str, args: list[str]) -> _Proc:
        log = self.work / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as fh:
            popen = subprocess.Popen(
                args, cwd=self.work, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.procs[name] = _Proc(name, popen, log)
        return self.procs[name]

    def wait_listening(self, port: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2):
                    return
            except OSError:
                assert time.monotonic() < deadline, f"nothing listens on {port}"
                link = self.procs.get("superlink")
                assert link is None or link.popen.poll() is None, link.log.read_text()
                time.sleep(0.5)

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):
            p.stop()


def test_readme_recipe_runs_on_loopback(tmp_path: Path) -> None:
    commands, exports, flwr_config = recipe()
    assert exports.get("FLWR_TELEMETRY_ENABLED") == "0"
    programs = [c[0] for c in commands]
    assert set(programs) <= {"fedrec", "flwr", *DAEMONS}, programs
    r = Recipe(tmp_path, exports)
    # The flwr config as the recipe describes it, with the loopback address.
    default = flwr_config["superlink"]["default"]
    conn = flwr_config["superlink"][default]
    address, ca = r.local(conn["address"]), r.local(conn["root-certificates"])
    home = tmp_path / "flwr-home"
    home.mkdir()
    atomic_write_text(
        home / "config.toml",
        f'[superlink]\ndefault = "{default}"\n\n[superlink.{default}]\n'
        f'address = "{address}"\nroot-certificates = "{ca}"\n',
    )
    statuses: list[str] = []
    try:
        for args in commands:
            if args[0] == "flower-superlink":
                assert "--enable-supernode-auth" in args and "--ssl-certfile" in args
                r.spawn("superlink", r.substitute(args))
                r.wait_listening(r.link_port)
            elif args[0] == "flower-supernode":
                assert "--port" in args, "nodes sharing a machine need distinct --port"
                for i in range(NODES):
                    r.spawn(f"node-{i}", r.substitute(args, i))
            elif args[:2] == ["flwr", "supernode"]:
                for i in range(NODES):
                    r.run(r.substitute(args, i))
            elif args[:2] == ["flwr", "ls"]:
                _wait_summary(r, timeout=600)
                answer = json.loads(r.run([*r.substitute(args), "--format", "json"]))
                statuses = [run["status"] for run in answer["runs"]]
            else:
                r.run(r.substitute(args))
        _wait_summary(r, timeout=600)
        summary = json.loads((r.out / "summary.json").read_text())
        assert summary["clients"] == NODES and summary["rounds"] == 1
        assert np.isfinite(summary["test"]["HR@5"])
        assert statuses and all(s.startswith("finished") for s in statuses), statuses
        _foreign_ca_is_refused(r)
    finally:
        r.stop()


def _wait_summary(r: Recipe, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (r.out / "summary.json").exists():
        if time.monotonic() > deadline:
            logs = sorted((r.work / "logs").glob("*.log"))
            pytest.fail(f"no summary after {timeout:g} s; TLS failures: {tls_failures(logs)}")
        time.sleep(2.0)


def _foreign_ca_is_refused(r: Recipe) -> None:
    """A SuperNode trusting another CA stops with Flower's TLS exit code and the reason."""
    other = tls_certificates(r.work / "other-ca", ["localhost"])
    node = r.spawn(
        "node-foreign-ca",
        [
            _bin("flower-supernode"),
            "--superlink", f"localhost:{r.link_port}",
            "--root-certificates", str(other.ca_cert),
            "--auth-supernode-private-key", str(r.work / "creds" / "keys" / "node-00000"),
            "--port", str(_free_port()),
        ],
    )  # fmt: skip
    assert node.popen.wait(120) != 0
    log = node.log.read_text()
    assert "Exit Code: 305" in log and "CERTIFICATE_VERIFY_FAILED" in log, log
    assert "unable to get local issuer certificate" in log, log


def _federation(work: Path, **kwargs: Any) -> tuple[LocalFederation, Path]:
    path = _config(work)
    cfg = load_config(path)
    fed = LocalFederation(cfg, work / "fed", NODES, **kwargs)
    fed.prepare(prepare(cfg).split)
    return fed, path


def test_run_the_superlink_cannot_start_is_reported_with_its_cause(tmp_path: Path) -> None:
    """The issue's certificate (a host name, no 127.0.0.1): nodes and the CLI reach the
    SuperLink by name, but its own SuperExec dials 127.0.0.1 and rejects the certificate, so
    the run stays pending. The launcher says so, with the log line, instead of hanging."""
    fed, path = _federation(tmp_path, host="localhost")
    assert fed.tls is not None
    fed.tls = tls_certificates(fed.tls.ca_cert.parent, ["localhost"], loopback=False)
    with fed:
        fed.start()
        popen = fed.submit(path, tmp_path / "out")
        begin = time.monotonic()
        with pytest.raises(LaunchError, match="still pending") as err:
            fed.wait(tmp_path / "out", popen, timeout=900, start_timeout=20)
    assert time.monotonic() - begin < 300
    message = str(err.value)
    assert "superlink.log" in message and "CERTIFICATE_VERIFY_FAILED" in message, message
    assert "not valid for '127.0.0.1'" in message and "127.0.0.1 and ::1" in message, message
    assert not (tmp_path / "out" / "summary.json").exists()


def test_expired_certificate_is_refused_on_both_sides(tmp_path: Path) -> None:
    fed, _ = _federation(tmp_path)
    assert fed.tls is not None
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=60)
    fed.tls = tls_certificates(fed.tls.ca_cert.parent, days=30, valid_from=long_ago)
    with fed:
        with pytest.raises(LaunchError, match="certificate has expired"):
            fed.start()
        node = fed._start_node_process("node-expired", fed.keys[0], None)
        assert node.popen.wait(120) != 0
    log = node.log.read_text()
    assert "Exit Code: 305" in log and "certificate has expired" in log, log
    assert fed.env["FLWR_TELEMETRY_ENABLED"] == "0"
