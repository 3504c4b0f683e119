"""``fedrec deploy local``: a whole federation on this machine, over TLS with authenticated
SuperNodes, exactly as it would run across machines.

:class:`LocalFederation` cuts the data into one shard per client, makes the TLS certificates
and the SuperNodes' keys, starts a SuperLink (TLS, ``--enable-supernode-auth``), registers each
node's public key, starts one SuperNode per client, and submits the run with ``flwr run``.
Everything lives under the run directory's ``deploy/`` folder (certificates, shards, each
client's private state, logs) and every process is stopped on exit. A run the SuperLink never
launches (it stays "pending", e.g. because its own SuperExec rejected the certificate) is
reported with the log lines that say why, instead of waiting out the whole timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from fedrec.config import RunConfig, dump_config
from fedrec.deploy import warm_exec
from fedrec.deploy.credentials import NodeKey, TLSFiles, node_keys, tls_certificates
from fedrec.deploy.shards import shard_dir, write_shards
from fedrec.utils.atomic import atomic_write_text

APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedrec-app"
version = "1.0.0"
description = "fedrec federated recommendation (ServerApp and ClientApp)"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedrec"

[tool.flwr.app.components]
serverapp = "fedrec_app.server:app"
clientapp = "fedrec_app.client:app"

[tool.flwr.app.config]
config-path = ""
out = ""
resume = false
"""


START_TIMEOUT_S = 180.0
"""A submitted run still "pending" after this long was never picked up by the SuperLink."""
SUPEREXEC_POLL_S = 0.05
"""How often each node's SuperExec asks its SuperNode for a message to run (Flower: 1 s)."""
STATUS_EVERY_S = 10.0
"""How often the run's status is asked for while it is pending (each ask is a CLI process)."""

_TLS_FAILURE = re.compile(r"CERTIFICATE_VERIFY_FAILED|SSLError|SSL: |certificate verify failed")
_RUN_ID = re.compile(r"started run (\d+)")


class LaunchError(RuntimeError):
    """A part of the local federation did not start or the run failed; the message points at
    the log to read."""


def tls_failures(logs: Iterable[Path], limit: int = 3) -> list[str]:
    """The distinct TLS failure lines in these logs, each prefixed by its file name: the only
    trace a SuperExec or SuperNode leaves when it rejects a certificate."""
    found: list[str] = []
    for log in logs:
        if not log.exists():
            continue
        for line in log.read_text(errors="replace").splitlines():
            if _TLS_FAILURE.search(line) and "handshake error detected" not in line:
                # One failure is raised again by each library layer: keep its reason once.
                reason = line[line.find("[SSL") :] if "[SSL" in line else line.strip()
                entry = f"{log.name}: {reason}"
                if entry not in found:
                    found.append(entry)
                if len(found) >= limit:
                    return found
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            raise LaunchError(
                f"{name} not found: install the deploy extra (pip install 'fedrec[deploy]')"
            )
        return found
    return str(path)


def write_app(directory: Path) -> Path:
    """The Flower App that ``flwr run`` ships: two modules re-exporting fedrec's apps."""
    pkg = directory / "fedrec_app"
    pkg.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / "pyproject.toml", APP_PYPROJECT)
    atomic_write_text(pkg / "__init__.py", "")
    atomic_write_text(
        pkg / "server.py", "from fedrec.deploy.server_app import app\n\n__all__ = ['app']\n"
    )
    atomic_write_text(
        pkg / "client.py", "from fedrec.deploy.client_app import app\n\n__all__ = ['app']\n"
    )
    return directory


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self, grace: float = 5.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(grace)

    def kill(self) -> None:
        """Abrupt failure of the node and of the ClientApp it may be running."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)


@dataclass
class LocalFederation:
    """A SuperLink and one SuperNode per client on loopback (see module docstring)."""

    cfg: RunConfig
    root: Path
    """Its working folder (certificates, shards, client states, logs)."""
    n_clients: int
    insecure_node: bool = False
    """Also start one SuperNode whose key was never registered (tests: it must be refused)."""
    host: str = "127.0.0.1"
    """The name SuperNodes and the CLI reach the SuperLink by (it listens on 127.0.0.1)."""
    tls: TLSFiles | None = None
    keys: list[NodeKey] = field(default_factory=list)
    port: int = 0
    procs: dict[str, _Proc] = field(default_factory=dict)
    warm: bool = True
    """Fork each message's ClientApp from one warm server (:mod:`fedrec.deploy.warm_exec`)."""
    warm_socket: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["FLWR_HOME"] = str(self.root / "flwr-home")
        # Flower starts its helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.setdefault("PYTHONUNBUFFERED", "1")
        # Flower reports usage to its servers unless told not to; no process of ours does.
        env["FLWR_TELEMETRY_ENABLED"] = "0"
        env.update(self._fast_env())
        return env

    # --- process start: warm ClientApps and short polls (issue 19) ---

    def _fast_env(self) -> dict[str, str]:
        """The SuperExec asks its SuperNode for work every second by default; every message
        waits for that poll. The warm shim, when on, comes first on PATH."""
        env = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(SUPEREXEC_POLL_S)}
        if self.warm_socket is not None:
            shim_dir = self.root / "warm-bin"
            env["PATH"] = os.pathsep.join([str(shim_dir), str(Path(sys.executable).parent)])
            env["PATH"] = os.pathsep.join([env["PATH"], os.environ.get("PATH", "")])
            env[warm_exec.SOCKET_ENV] = str(self.warm_socket)
        return env

    def start_warm(self, timeout: float = 300.0) -> None:
        """The shared warm server and the ``flwr-clientapp`` shim every SuperNode finds first."""
        # A short private folder: a Unix socket path must fit in 108 bytes.
        folder = Path(tempfile.mkdtemp(prefix="fedrec-warm-"))
        sock = folder / "sock"
        warm_exec.write_shim(self.root / "warm-bin")
        proc = self._spawn(
            "warm-exec",
            [sys.executable, "-m", "fedrec.deploy.warm_exec", "serve", "--socket", str(sock)],
        )
        deadline = time.monotonic() + timeout
        while not sock.exists():
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise LaunchError(f"the warm ClientApp server did not start; see {proc.log}")
            time.sleep(0.2)
        self.warm_socket = sock

    def _stop_warm(self) -> None:
        if self.warm_socket is not None:
            shutil.rmtree(self.warm_socket.parent, ignore_errors=True)
            self.warm_socket = None

    def _spawn(self, name: str, args: list[str]) -> _Proc:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        popen = subprocess.Popen(
            args, stdout=fh, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        fh.close()
        proc = _Proc(name, popen, log)
        self.procs[name] = proc
        return proc

    def _run(self, args: list[str], timeout: float) -> str:
        res = subprocess.run(
            args, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if res.returncode != 0:
            raise LaunchError(
                f"{' '.join(args[:3])} failed: {res.stdout[-800:]}{res.stderr[-800:]}"
            )
        return res.stdout

    def prepare(self, split: Any) -> None:
        """Shards, certificates, keys, the Flower config and the App (no process yet)."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_shards(self.cfg, split, self.root / "shards")
        n_shards = len(list((self.root / "shards").glob("client-*")))
        if n_shards != self.n_clients:
            raise LaunchError(
                f"the configuration partitions the data into {n_shards} clients, not "
                f"{self.n_clients}: set federated.partition = 'random' and federated.silos"
            )
        self.tls = tls_certificates(self.root / "tls")
        self.keys = [node_keys(self.root / "keys", f"node-{i:05d}") for i in range(self.n_clients)]
        self.port = _free_port()
        home = self.root / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            home / "config.toml",
            '[superlink]\ndefault = "local"\n\n[superlink.local]\n'
            f'address = "{self.host}:{self.port}"\nroot-certificates = "{self.tls.ca_cert}"\n',
        )
        write_app(self.root / "app")
        atomic_write_text(self.root / "run-config.toml", dump_config(self.cfg))

    def _wait_tls(self, timeout: float = 60.0) -> None:
        assert self.tls is not None
        ctx = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        deadline = time.monotonic() + timeout
        while True:
            try:
                with (
                    socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock,
                    ctx.wrap_socket(sock, server_hostname=self.host),
                ):
                    return
            except ssl.SSLCertVerificationError as exc:
                raise LaunchError(
                    f"the SuperLink's certificate {self.tls.server_cert} does not verify for "
                    f"{self.host} against {self.tls.ca_cert}: {exc.verify_message}"
                ) from None
            except OSError:
                link = self.procs.get("superlink")
                if link is not None and link.popen.poll() is not None:
                    raise LaunchError(f"the SuperLink exited; see {link.log}") from None
                if time.monotonic() > deadline:
                    raise LaunchError(
                        f"the SuperLink did not answer over TLS on port {self.port}"
                    ) from None
                time.sleep(0.5)

    def start(self) -> None:
        assert self.tls is not None
        t = self.tls
        self._spawn(
            "superlink",
            [
                _bin("flower-superlink"),
                "--ssl-ca-certfile", str(t.ca_cert),
                "--ssl-certfile", str(t.server_cert),
                "--ssl-keyfile", str(t.server_key),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--host", "127.0.0.1",
                "--port", str(self.port),
                # In-memory state: a file database hits "database is locked" with dozens of
                # nodes; runs resume from fedrec's own checkpoint, not the SuperLink's.
            ],
        )  # fmt: skip
        self._wait_tls()
        if self.warm:
            self.start_warm()
        for key in self.keys:
            self._run([_bin("flwr"), "supernode", "register", str(key.public), "local"], 120)
        for i in range(self.n_clients):
            self.start_node(i)
        if self.insecure_node:
            rogue = node_keys(self.root / "keys", "unregistered")
            self._start_node_process("node-unregistered", rogue, None)

    def _start_node_process(self, name: str, key: NodeKey, client: int | None) -> _Proc:
        assert self.tls is not None
        node_cfg = ""
        if client is not None:
            node_cfg = (
                f'shard-dir="{shard_dir(self.root / "shards", client)}" '
                f'state-dir="{self.root / "state" / f"client-{client:05d}"}"'
            )
        args = [
            _bin("flower-supernode"),
            "--superlink", f"{self.host}:{self.port}",
            "--root-certificates", str(self.tls.ca_cert),
            "--auth-supernode-private-key", str(key.private),
            "--port", str(_free_port()),
            "--max-retries", "3",
        ]  # fmt: skip
        if node_cfg:
            args += ["--node-config", node_cfg]
        return self._spawn(name, args)

    def start_node(self, i: int) -> None:
        self._start_node_process(f"node-{i:05d}", self.keys[i], i)

    def kill_node(self, i: int) -> None:
        self.procs[f"node-{i:05d}"].kill()

    def submit(
        self, config_path: Path, out: Path, *, resume: bool = False
    ) -> subprocess.Popen[bytes]:
        """``flwr run`` the App with this configuration; returns the streaming process."""
        rc = f'config-path="{config_path}" out="{out}" resume={"true" if resume else "false"}'
        out.mkdir(parents=True, exist_ok=True)
        return self._spawn(
            "flwr-run" + ("-resume" if resume else ""),
            [_bin("flwr"), "run", str(self.root / "app"), "local", "--run-config", rc, "--stream"],
        ).popen

    def run_status(self, run_id: str) -> str:
        """The run's status as the SuperLink's Control API reports it (``flwr ls``)."""
        args = [_bin("flwr"), "ls", "local", "--run-id", run_id, "--format", "json"]
        try:
            answer = json.loads(self._run(args, 120))
        except (LaunchError, json.JSONDecodeError, subprocess.TimeoutExpired) as exc:
            raise LaunchError(f"the SuperLink does not answer `flwr ls`: {exc}") from None
        runs = answer.get("runs") or [{}]
        return str(runs[0].get("status", "unknown"))

    def _never_started(self, run_id: str, waited: float) -> LaunchError:
        logs = self.root / "logs"
        cause = tls_failures([logs / "superlink.log", *sorted(logs.glob("node-*.log"))])
        if cause:
            why = (
                "a TLS connection was refused:\n  " + "\n  ".join(cause) + "\nThe SuperLink's "
                "certificate must name every address it is reached by, including the loopback "
                "address its own SuperExec dials (fedrec deploy credentials adds localhost, "
                "127.0.0.1 and ::1)."
            )
        else:
            why = f"see {logs / 'superlink.log'}"
        return LaunchError(
            f"run {run_id} is still pending after {waited:.0f} s: the SuperLink never "
            f"launched its ServerApp; {why}"
        )

    def wait(
        self,
        out: Path,
        popen: subprocess.Popen[bytes],
        timeout: float,
        start_timeout: float = START_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Until ``out/summary.json`` appears; raises with the logs to read if the run fails,
        if the SuperLink dies, or if the run is still pending after ``start_timeout``."""
        begin = time.monotonic()
        deadline = begin + timeout
        summary = out / "summary.json"
        submitted = next((p for p in self.procs.values() if p.popen is popen), None)
        run_id: str | None = None
        pending, next_status = True, begin + STATUS_EVERY_S
        while not summary.exists():
            now = time.monotonic()
            if now > deadline:
                raise LaunchError(
                    f"no summary after {timeout:g} s; see {out / 'deploy.log'} and "
                    f"{self.root / 'logs'}"
                )
            link = self.procs.get("superlink")
            if link is not None and link.popen.poll() is not None:
                raise LaunchError(f"the SuperLink exited; see {link.log}")
            if run_id is None and submitted is not None and submitted.log.exists():
                found = _RUN_ID.search(submitted.log.read_text(errors="replace"))
                run_id = found.group(1) if found else None
            if pending and run_id is not None and now >= next_status:
                pending = self.run_status(run_id) == "pending"
                if pending and time.monotonic() - begin > start_timeout:
                    raise self._never_started(run_id, time.monotonic() - begin)
                next_status = time.monotonic() + STATUS_EVERY_S
            if popen.poll() is not None and not summary.exists():
                time.sleep(2.0)
                if not summary.exists():
                    raise LaunchError(
                        f"the run ended without a summary; see {out / 'deploy.log'} and "
                        f"{self.root / 'logs' / 'superlink.log'}"
                    )
            time.sleep(1.0)
        data: dict[str, Any] = json.loads(summary.read_text())
        return data

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):
            p.stop()
        self._stop_warm()

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def deploy_local(
    cfg: RunConfig, n_clients: int, out: Path, *, timeout: float = 3600.0
) -> dict[str, Any]:
    """Run ``cfg`` on a local federation of ``n_clients`` and return its summary."""
    from fedrec.experiment.pipeline import prepare

    out = Path(out).resolve()
    fed = LocalFederation(cfg, out / "deploy", n_clients)
    fed.prepare(prepare(cfg).split)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with fed:
            fed.start()
            popen = fed.submit(fed.root / "run-config.toml", out)
            return fed.wait(out, popen, timeout)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so the federation's processes are stopped on the way out."""
    raise SystemExit(128 + signum)
