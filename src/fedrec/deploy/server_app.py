"""The Flower ServerApp: :func:`fedrec.deploy.server.serve` over Flower's Grid.

Run configuration (``[tool.flwr.app.config]`` of the app, or ``flwr run --run-config``):
``config-path`` (the fedrec TOML on the server machine), ``out`` (the run directory) and
``resume`` (continue from the run directory's last checkpoint).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from fedrec.config import load_config
from fedrec.deploy.payload import Meta, Payload
from fedrec.deploy.records import MESSAGE_TYPES, from_message, to_records
from fedrec.deploy.server import serve
from fedrec.experiment.outputs import RunDirectory

log = logging.getLogger("fedrec.deploy")
app = ServerApp()
HELLO_TIMEOUT_S = 120.0
PULL_EVERY_S = 0.1
"""How often the ServerApp asks the SuperLink for replies (each ask is one local request)."""


class FlowerTransport:
    """Clients are SuperNodes; each says which fedrec client it is in a ``hello`` exchange
    when it first appears, and is forgotten when the SuperLink stops listing it."""

    def __init__(
        self, grid: Grid, hello_timeout: float = HELLO_TIMEOUT_S, poll_s: float = PULL_EVERY_S
    ) -> None:
        self.grid = grid
        self.hello_timeout = hello_timeout
        self.poll_s = poll_s
        self.client_of: dict[int, int] = {}
        self.node_of: dict[int, int] = {}
        self.info: dict[int, Meta] = {}

    def _send(self, kind: str, requests: dict[int, Payload], timeout: float) -> dict[int, Payload]:
        """By node id."""
        msgs = [
            Message(
                to_records(p),
                dst_node_id=node,
                message_type=MESSAGE_TYPES[kind],
                ttl=max(timeout, 10.0),
                group_id=str(p.meta.get("round", "")),
            )
            for node, p in requests.items()
        ]
        out = {}
        for m in self._push_pull(msgs, timeout):
            out[int(m.metadata.src_node_id)] = from_message(m)
        return out

    def _push_pull(self, msgs: list[Message], timeout: float) -> list[Message]:
        """``Grid.send_and_receive`` with a short poll: Flower's sleeps 3 s between pulls,
        which every exchange of a round would wait for."""
        pending = set(self.grid.push_messages(msgs))
        end = time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            got = list(self.grid.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending or time.monotonic() >= end:
                break
            time.sleep(self.poll_s)
        return replies

    def clients(self) -> dict[int, Meta]:
        nodes = set(int(n) for n in self.grid.get_node_ids())
        for node in list(self.client_of):
            if node not in nodes:
                c = self.client_of.pop(node)
                self.node_of.pop(c, None)
                self.info.pop(c, None)
                log.warning("client %d (node %d) left the federation", c, node)
        new = nodes - set(self.client_of)
        if new:
            replies = self._send("hello", {n: Payload() for n in new}, self.hello_timeout)
            for node, p in replies.items():
                if "error" in p.meta:
                    log.warning("node %d: hello failed: %s", node, p.meta["error"])
                    continue
                cid = p.meta.get("client_id")
                if not isinstance(cid, int):
                    log.warning("node %d answered hello without a client id", node)
                    continue
                c = cid
                if c in self.node_of and self.node_of[c] != node:
                    other = self.node_of[c]
                    log.warning("node %d claims client %d, already node %d", node, c, other)
                    continue
                self.client_of[node], self.node_of[c], self.info[c] = c, node, p.meta
                log.info("client %d joined as node %d", c, node)
        return dict(self.info)

    def exchange(
        self, kind: str, requests: dict[int, Payload], timeout: float
    ) -> dict[int, Payload]:
        by_node = {self.node_of[c]: p for c, p in requests.items() if c in self.node_of}
        replies = self._send(kind, by_node, timeout)
        return {self.client_of[n]: p for n, p in replies.items() if n in self.client_of}


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    cfg_path, out = Path(str(rc["config-path"])), Path(str(rc["out"]))
    resume = bool(rc.get("resume", False))
    cfg = load_config(cfg_path)
    run_dir = RunDirectory(out, overwrite=not resume)
    handler = logging.FileHandler(out / "deploy.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("fedrec").addHandler(handler)
    logging.getLogger("fedrec").setLevel(logging.INFO)
    start = time.perf_counter()
    try:
        transport = FlowerTransport(grid, hello_timeout=cfg.deploy.wait_clients_s)
        summary = serve(cfg, transport, run_dir, resume=resume)
        log.info("run finished in %.1f s: test %s", time.perf_counter() - start, summary["test"])
    except Exception:
        log.exception("the run failed")
        raise
    finally:
        logging.getLogger("fedrec").removeHandler(handler)
        handler.close()
