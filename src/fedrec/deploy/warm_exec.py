"""Warm ClientApp processes: Flower's process per message, forked from a parent that has already
imported fedrec, torch and flwr, instead of a fresh interpreter importing them every time.

Flower 1.42's SuperExec starts ``flwr-clientapp --token ...`` (looked up on ``PATH``) for every
message a SuperNode receives. :func:`write_shim` writes a ``flwr-clientapp`` to put first on
the SuperNode's ``PATH``: a standard-library-only script that hands its arguments, environment
and stdio to the warm server over a Unix socket and waits for the exit status. The warm server
(:func:`serve`, ``python -m fedrec.deploy.warm_exec serve --socket PATH``) forks one child per
request; the child runs Flower's own ``flwr-clientapp`` entry point with those arguments, so it
pulls its one message from the SuperNode, answers it and exits, exactly as a cold process does.
Isolation between messages is kept (each is its own process, nothing of one survives into the
next); Flower is used through its public command-line contract and is not patched.

One warm server may serve every SuperNode on a machine: it holds no node's state, and the socket
(mode 0600, in a private folder) admits only the user running the nodes. Without a server the
shim falls back to the real ``flwr-clientapp``, so a node keeps working, only slower.

Shared by many nodes on one machine (``fedrec deploy local``, load tests), it differs from one
device per client: the forks share the parent's memory pages and the machine's CPUs, all of the
machine's ClientApps depend on one server process, and they run under one user, so the
isolation between clients is that of processes, not of devices. Each client still has its own
SuperNode, node key, connection, shard and state directory.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

SOCKET_ENV = "FEDREC_WARM_SOCKET"
"""Where the shim finds the warm server; unset or unreachable: a cold ``flwr-clientapp``."""
PRELOAD = (
    "flwr.supernode.cli.flwr_clientapp",
    "fedrec.deploy.client_app",
    "fedrec.deploy.client",
    # imported lazily on a client's first torch.load / key agreement
    "torch.utils.serialization",
    "cryptography.hazmat.backends.openssl",
)
"""What every forked child inherits already imported (``deploy.client`` brings torch)."""
STATS_PREFIX = "message "
"""Each child's line on the server's output: ``message {"stage": ..., "cpu_ms": ...}``."""
_HEADER = struct.Struct("!I")
_STATUS = struct.Struct("!i")
MAX_REQUEST = 1 << 20

SHIM = '''\
#!{python} -IS
"""flwr-clientapp, forked from fedrec's warm server ({socket_env}); see fedrec.deploy.warm_exec.
Standard library only, so that this process itself starts in milliseconds."""
import json, os, signal, socket, struct, sys

REAL = {real!r}
path = os.environ.get({socket_env!r}, "")
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    sock.connect(path)
except OSError as exc:
    print(f"fedrec warm server unreachable at {{path!r}} ({{exc}}): cold start", file=sys.stderr)
    os.execv(REAL, [REAL, *sys.argv[1:]])
body = json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
socket.send_fds(sock, [struct.pack("!I", len(body)) + body], [0, 1, 2])


def read(n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            sys.exit("fedrec warm server closed the connection")
        buf += chunk
    return buf


child = struct.unpack("!i", read(4))[0]
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda s, f: os.kill(child, s))
status = struct.unpack("!i", read(4))[0]
sys.exit(128 - status if status < 0 else status)
'''


def write_shim(directory: Path) -> Path:
    """A ``flwr-clientapp`` in ``directory``; put that folder first on the SuperNode's PATH
    (its SuperExec inherits it) and set ``FEDREC_WARM_SOCKET``."""
    from fedrec.utils.atomic import atomic_write_text

    directory.mkdir(parents=True, exist_ok=True)
    real = Path(sys.executable).parent / "flwr-clientapp"
    path = directory / "flwr-clientapp"
    atomic_write_text(
        path, SHIM.format(python=sys.executable, socket_env=SOCKET_ENV, real=str(real))
    )
    path.chmod(0o755)
    return path


def _read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
    if len(data) < _HEADER.size:
        raise ValueError("short request")
    (size,) = _HEADER.unpack_from(data)
    if size > MAX_REQUEST:
        raise ValueError(f"request of {size} bytes")
    body = data[_HEADER.size :]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ValueError("truncated request")
        body += chunk
    request: dict[str, Any] = json.loads(body)
    return request, list(fds)


def _child(request: dict[str, Any], fds: list[int], listener: socket.socket) -> int:
    """In the fork: become ``flwr-clientapp`` with the shim's arguments, stdio and env, then
    report its CPU and wall time on the server's own output."""
    listener.close()
    begin = time.perf_counter()
    report = os.dup(1)
    code = _become_clientapp(request, fds)
    sys.stdout.flush()
    sys.stderr.flush()
    cpu = os.times()  # a fork starts its own CPU clock at zero
    app = sys.modules.get("fedrec.deploy.client_app")
    stats = {
        "pid": os.getpid(),
        "stage": ",".join(getattr(app, "answered", [])) or "none",
        "cpu_ms": round((cpu.user + cpu.system) * 1000, 1),
        "wall_ms": round((time.perf_counter() - begin) * 1000, 1),
        "status": code,
    }
    os.write(report, f"{STATS_PREFIX}{json.dumps(stats)}\n".encode())
    return code


def _become_clientapp(request: dict[str, Any], fds: list[int]) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in request["env"].items()})
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.chdir(str(request["cwd"]))
    sys.argv = ["flwr-clientapp", *[str(a) for a in request["argv"]]]
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    try:
        flwr_clientapp()
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except BaseException:  # the child reports any failure as its exit status
        import traceback

        traceback.print_exc()
        return 1
    return 0


def serve(socket_path: Path, *, preload: tuple[str, ...] = PRELOAD) -> None:
    """Fork one ``flwr-clientapp`` per shim request until SIGTERM/SIGINT.

    Single-threaded on purpose: forking a process that runs other threads can leave a lock
    held in the child. Children are reaped in the same loop and their status is sent back."""
    import importlib

    for name in preload:
        importlib.import_module(name)
    # Objects that exist now are never collected: the collector would otherwise write to every
    # page it scans in each child, copying the parent's memory instead of sharing it.
    gc.collect()
    gc.freeze()
    socket_path = Path(socket_path)
    socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(socket_path))
    finally:
        os.umask(old_umask)
    listener.listen(256)
    stop = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    waiting: dict[int, socket.socket] = {}
    print(f"fedrec warm server ready on {socket_path} (pid {os.getpid()})", flush=True)
    try:
        while not stop:
            with contextlib.suppress(InterruptedError):
                ready, _, _ = select.select([listener], [], [], 0.02)
                if ready:
                    _accept(listener, waiting)
            _reap(waiting)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        for conn in waiting.values():
            conn.close()


def _accept(listener: socket.socket, waiting: dict[int, socket.socket]) -> None:
    conn, _ = listener.accept()
    fds: list[int] = []
    try:
        request, fds = _read_request(conn)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                conn.close()
                code = _child(request, fds, listener)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        conn.sendall(_STATUS.pack(pid))
        waiting[pid] = conn
        print(f"forked flwr-clientapp {pid}", flush=True)
    except (OSError, ValueError, KeyError) as exc:
        print(f"fedrec warm server: bad request ({exc})", file=sys.stderr, flush=True)
        conn.close()
    finally:
        for fd in fds:
            os.close(fd)


def _reap(waiting: dict[int, socket.socket]) -> None:
    while waiting:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = waiting.pop(pid, None)
        if conn is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(OSError):
            conn.sendall(_STATUS.pack(code))
        conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedrec.deploy.warm_exec")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the warm server (one per machine is enough)")
    s.add_argument("--socket", type=Path, required=True)
    w = sub.add_parser("shim", help="write the flwr-clientapp shim into a folder")
    w.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    if args.cmd == "serve":
        serve(args.socket)
    else:
        print(write_shim(args.directory))


if __name__ == "__main__":
    main()
