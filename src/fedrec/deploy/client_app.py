"""The Flower ClientApp: one fedrec client per SuperNode.

The node's configuration names its shard and its state directory::

    flower-supernode ... --node-config 'shard-dir="/data/client-00003" state-dir="/var/fedrec"'

Each message is answered by :func:`fedrec.deploy.node.handle`; a refusal (a message this
client will not act on) becomes a Flower error reply naming the reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedrec.deploy.node import NodeDirs, handle
from fedrec.deploy.records import from_records, to_records

log = logging.getLogger("fedrec.deploy")
app = ClientApp()
answered: list[str] = []
"""The stages this process answered (one in Flower's process per message): the warm server
reports each process's CPU time under it."""


def _device(context: Context) -> NodeDirs:
    cfg = context.node_config
    missing = [k for k in ("shard-dir", "state-dir") if k not in cfg]
    if missing:
        raise ValueError(
            f'SuperNode --node-config lacks {missing}: give it shard-dir="..." and state-dir="..."'
        )
    return NodeDirs(Path(str(cfg["shard-dir"])), Path(str(cfg["state-dir"])))


def _answer(kind: str, msg: Message, context: Context) -> Message:
    req = from_records(msg.content)
    answered.append(f"{kind}/{req.meta.get('stage')}" if kind == "secagg" else kind)
    reply = handle(_device(context), kind, req)
    return Message(to_records(reply), reply_to=msg)


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    return _answer("hello", msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _answer("train", msg, context)


@app.query("secagg")
def secagg(msg: Message, context: Context) -> Message:
    return _answer("secagg", msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _answer("evaluate", msg, context)
