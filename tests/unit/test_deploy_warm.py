"""The warm ClientApp server forks Flower's own ``flwr-clientapp`` per request (arguments, stdio
and exit status pass through the shim), the shim falls back to a cold start without a server,
and the ServerApp's push/pull transport polls at its own short interval."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fedrec.deploy.server_app import FlowerTransport
from fedrec.deploy.warm_exec import SOCKET_ENV, write_shim

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture()
def warm(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    sock = Path("/tmp") / f"fedrec-test-warm-{os.getpid()}" / "sock"
    log = tmp_path / "warm.log"
    code = (
        "from pathlib import Path; from fedrec.deploy.warm_exec import serve; "
        f"serve(Path({str(sock)!r}), preload=())"
    )
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": SRC},
        )
    try:
        deadline = time.monotonic() + 120
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert (sock.stat().st_mode & 0o777) == 0o600
        yield write_shim(tmp_path / "bin"), sock, log
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(sock.parent, ignore_errors=True)


def _shim(shim: Path, sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, SOCKET_ENV: str(sock), "PYTHONPATH": SRC}
    return subprocess.run(
        [str(shim), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_shim_runs_flwr_clientapp_in_a_fork_with_its_stdio_and_status(
    warm: tuple[Path, Path, Path],
) -> None:
    shim, sock, log = warm
    ok = _shim(shim, sock, "--help")
    assert ok.returncode == 0 and "usage: flwr-clientapp" in ok.stdout
    bad = _shim(shim, sock, "--no-such-flag")
    assert bad.returncode == 2 and "--token" in bad.stderr
    assert "cold start" not in ok.stderr + bad.stderr
    assert log.read_text().count("forked flwr-clientapp") == 2


def test_shim_without_a_server_starts_flower_cold(tmp_path: Path) -> None:
    shim = write_shim(tmp_path / "bin")
    res = _shim(shim, tmp_path / "absent.sock", "--help")
    assert res.returncode == 0 and "usage: flwr-clientapp" in res.stdout
    assert "cold start" in res.stderr


class _Grid:
    """Replies become available after a number of pulls; records every pull."""

    def __init__(self, ready_after: dict[str, int]) -> None:
        self.ready_after = ready_after
        self.pulls = 0

    def push_messages(self, messages: Iterable[Any]) -> list[str]:
        return list(self.ready_after)

    def pull_messages(self, ids: Iterable[str]) -> list[Any]:
        self.pulls += 1
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
            for i in ids
            if self.ready_after[i] == self.pulls
        ]


def test_push_pull_collects_replies_until_all_arrive_or_timeout() -> None:
    grid = _Grid({"a": 1, "b": 4})
    t = FlowerTransport(grid, poll_s=0.01)  # type: ignore[arg-type]
    begin = time.monotonic()
    got = t._push_pull([], timeout=10.0)
    assert {m.metadata.reply_to_message_id for m in got} == {"a", "b"}
    assert grid.pulls == 4 and time.monotonic() - begin < 2.0
    late = _Grid({"a": 1, "b": 10_000})
    got = FlowerTransport(late, poll_s=0.01)._push_pull([], timeout=0.2)  # type: ignore[arg-type]
    assert [m.metadata.reply_to_message_id for m in got] == ["a"]
    assert 5 < late.pulls < 100
