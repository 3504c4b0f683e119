"""A SecAgg+ client's round state as bytes, so a client process can stop between stages.

A deployed client (a Flower ClientApp) is a fresh process for every message it answers; its
round secrets (two X25519 private keys, the self-mask seed, the keys agreed with neighbours and
the shares it holds) must survive from one stage to the next on the device's own disk. They
never leave the device: callers write these bytes to the client's state directory (atomically,
owner-only permissions) and delete them when the round ends.

The format is a versioned, length-prefixed record (no pickle: loading a state file never runs
code). ``RoundParams`` are not stored; the caller rebuilds them from the round's public
parameters and they are checked against the stored session id.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedrec.privacy.secagg.client import SecAggClient, _Phase
from fedrec.privacy.secagg.config import RoundParams
from fedrec.privacy.secagg.errors import MalformedMessageError
from fedrec.privacy.secagg.keys import private_bytes, public_bytes

__all__ = ["export_client", "restore_client"]

_MAGIC = b"FRSA"
_VERSION = 2  # 2: stores the client's min_inputs


def _blob(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def _table(d: dict[int, bytes]) -> bytes:
    out = [struct.pack(">I", len(d))]
    for k in sorted(d):
        out.append(struct.pack(">Q", k) + _blob(d[k]))
    return b"".join(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise MalformedMessageError("secagg client state is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def blob(self) -> bytes:
        return self.take(self.u32())

    def table(self) -> dict[int, bytes]:
        return {self.u64(): self.blob() for _ in range(self.u32())}


def export_client(c: SecAggClient) -> bytes:
    """Everything ``c`` needs to answer its next stage."""
    parts = [
        _MAGIC,
        struct.pack(">BBQQ", _VERSION, int(c._phase), c.id, c.min_inputs),
        _blob(c.params.session_id),
        _blob(private_bytes(c._enc_sk)),
        _blob(private_bytes(c._mask_sk)),
        _blob(c._seed),
        _table(c._send_keys),
        _table(c._recv_keys),
        _table(c._mask_keys),
        _table(c._seed_shares),
        _table(c._key_shares),
        _table(dict.fromkeys(sorted(c._masked_with), b"")),
    ]
    return b"".join(parts)


def restore_client(params: RoundParams, data: bytes) -> SecAggClient:
    """The client saved by :func:`export_client`, for the round ``params`` describes."""
    r = _Reader(data)
    if r.take(4) != _MAGIC:
        raise MalformedMessageError("not a secagg client state")
    version, phase = struct.unpack(">BB", r.take(2))
    if version != _VERSION:
        raise MalformedMessageError(f"secagg client state version {version}, expected {_VERSION}")
    cid, min_inputs = struct.unpack(">QQ", r.take(16))
    if min_inputs < 1:
        raise MalformedMessageError("secagg client state has min_inputs 0")
    session = r.blob()
    if session != params.session_id:
        raise MalformedMessageError(
            "secagg client state belongs to another round or session (session ids differ)"
        )
    c = SecAggClient.__new__(SecAggClient)
    c.id = int(cid)
    c.params = params
    c.min_inputs = int(min_inputs)
    c._phase = _Phase(phase)
    c._neighbours = frozenset(params.neighbours(c.id))
    c._enc_sk = X25519PrivateKey.from_private_bytes(r.blob())
    c._enc_pk = public_bytes(c._enc_sk)
    c._mask_sk = X25519PrivateKey.from_private_bytes(r.blob())
    c._mask_pk = public_bytes(c._mask_sk)
    c._seed = r.blob()
    c._send_keys = r.table()
    c._recv_keys = r.table()
    c._mask_keys = r.table()
    c._seed_shares = r.table()
    c._key_shares = r.table()
    c._masked_with = frozenset(r.table())
    if r.pos != len(data):
        raise MalformedMessageError("secagg client state has trailing bytes")
    return c
