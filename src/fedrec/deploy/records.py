"""Payloads as Flower records and back: arrays in an ``ArrayRecord``, metadata in a
``ConfigRecord``. The only module besides the two apps that imports Flower."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedrec.deploy.payload import Payload

ARRAYS, META = "arrays", "meta"

MESSAGE_TYPES = {
    "hello": "query.hello",
    "train": "train",
    "secagg": "query.secagg",
    "evaluate": "evaluate",
}
"""Our message kinds as Flower message types (category.action)."""


def to_records(p: Payload) -> RecordDict:
    arrays = ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in p.arrays.items()})
    return RecordDict({ARRAYS: arrays, META: ConfigRecord(dict(p.meta))})


def from_message(m: Message) -> Payload:
    """A reply's payload; an error reply becomes ``{"error": reason}`` for the server to log."""
    if m.has_error():
        return Payload(meta={"error": f"{m.error.code}: {m.error.reason}"})
    return from_records(m.content)


def from_records(rd: RecordDict) -> Payload:
    p = Payload()
    if ARRAYS in rd.array_records:
        p.arrays = {k: a.numpy() for k, a in rd.array_records[ARRAYS].items()}
    if META in rd.config_records:
        p.meta = dict(rd.config_records[META])
    return p
