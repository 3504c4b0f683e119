"""In-process driver for simulation: every client and the server run the real protocol, and
every message really goes through ``to_bytes`` / ``from_bytes``, so byte counts and timings are
those of a deployment minus the network."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy.typing as npt

from fedrec.privacy.secagg.client import SecAggClient
from fedrec.privacy.secagg.config import RoundParams, SecAggConfig
from fedrec.privacy.secagg.errors import ClientExcludedError, StageError, UnknownClientError
from fedrec.privacy.secagg.messages import (
    AdvertiseKeys,
    ForwardedShares,
    Kind,
    MaskedInput,
    MaskingRequest,
    Message,
    NeighbourKeys,
    ShareKeys,
    ShareReceipt,
    UnmaskRequest,
    UnmaskShares,
)
from fedrec.privacy.secagg.server import SecAggResult, SecAggServer

__all__ = ["SecAggSession", "Traffic", "WireHook"]

WireHook = Callable[[Kind, int, bytes], bytes]
"""Sees every serialized message (kind, client id, bytes) and returns what is delivered: fault
injection for tests (flip a byte of a share ciphertext) and experiments."""

R = TypeVar("R")
ClientStep = Callable[[SecAggClient, bytes], Message]
ServerStep = Callable[[SecAggServer, bytes], None]


# What each side does with the bytes it receives: parse (validating), then act.
def client_advertise(c: SecAggClient, _: bytes) -> Message:
    return c.advertise_keys()


def client_share_keys(c: SecAggClient, data: bytes) -> Message:
    return c.share_keys(NeighbourKeys.from_bytes(data))


def client_receive_shares(c: SecAggClient, data: bytes) -> Message:
    return c.receive_shares(ForwardedShares.from_bytes(data))


def client_unmask(c: SecAggClient, data: bytes) -> Message:
    return c.unmask(UnmaskRequest.from_bytes(data))


def server_advertise(s: SecAggServer, data: bytes) -> None:
    s.receive_advertise_keys(AdvertiseKeys.from_bytes(data))


def server_share_keys(s: SecAggServer, data: bytes) -> None:
    s.receive_share_keys(ShareKeys.from_bytes(data))


def server_receipt(s: SecAggServer, data: bytes) -> None:
    s.receive_receipt(ShareReceipt.from_bytes(data))


def server_masked_input(s: SecAggServer, data: bytes) -> None:
    s.receive_masked_input(MaskedInput.from_bytes(data))


def server_unmask_shares(s: SecAggServer, data: bytes) -> None:
    s.receive_unmask_shares(UnmaskShares.from_bytes(data))


@dataclass
class Traffic:
    """Bytes one client sent (up) and received (down) over all stages, headers included."""

    up: int = 0
    down: int = 0


class SecAggSession:
    """One SecAgg+ round over ``client_ids``; stages 0 and 1 run in the constructor.

    ``finish`` returns a SecAggResult (not a bare array): ``result.total`` is the float64 sum
    and ``result.included`` says whose inputs it covers. ``min_inputs`` (distributed DP's m)
    is held by the server and by every client: with fewer masked inputs, ``finish`` raises
    :class:`TooFewInputsError` before any unmasking request is sent.
    """

    def __init__(
        self,
        client_ids: Sequence[int],
        dim: int,
        config: SecAggConfig | None = None,
        round_: int = 0,
        seed: bytes | int = 0,
        *,
        wire_hook: WireHook | None = None,
        min_inputs: int = 1,
    ) -> None:
        self._hook = wire_hook
        self.params = RoundParams.create(client_ids, dim, config or SecAggConfig(), round_, seed)
        self.min_inputs = min_inputs
        ids = self.params.client_ids
        self._client_s = dict.fromkeys(ids, 0.0)
        self._server_s = 0.0
        self._traffic = {c: Traffic() for c in ids}
        self._server = self._on_server(lambda: SecAggServer(self.params, min_inputs=min_inputs))
        self._clients: dict[int, SecAggClient] = {}
        for c in ids:
            make = partial(SecAggClient, c, self.params, min_inputs=min_inputs)
            self._clients[c] = self._on_client(c, make)
        self._finished = False
        self._submitted: set[int] = set()

        server = self._server
        # Stage 0: advertise keys.
        for c in ids:
            data = self._client_step(c, b"", client_advertise)
            self._up(c, Kind.ADVERTISE_KEYS, data, server_advertise)
        # Stage 1: share keys, forward them, collect receipts.
        for c, keys in self._on_server(server.neighbour_keys).items():
            reply = self._client_step(c, self._down(c, keys), client_share_keys)
            self._up(c, Kind.SHARE_KEYS, reply, server_share_keys)
        for c, shares in self._on_server(server.forward_shares).items():
            reply = self._client_step(c, self._down(c, shares), client_receive_shares)
            self._up(c, Kind.SHARE_RECEIPT, reply, server_receipt)
        self._requests = self._on_server(server.masking_requests)

    # Plumbing ----------------------------------------------------------------------------------
    def _on_client(self, c: int, fn: Callable[[], R]) -> R:
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self._client_s[c] += time.perf_counter() - t0

    def _on_server(self, fn: Callable[[], R]) -> R:
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self._server_s += time.perf_counter() - t0

    def _wire(self, kind: Kind, c: int, data: bytes) -> bytes:
        return data if self._hook is None else self._hook(kind, c, data)

    def _client_step(self, c: int, data: bytes, step: ClientStep) -> bytes:
        client = self._clients[c]
        return self._on_client(c, lambda: step(client, data).to_bytes())

    def _up(self, c: int, kind: Kind, data: bytes, deliver: ServerStep) -> None:
        data = self._wire(kind, c, data)
        self._traffic[c].up += len(data)
        server = self._server
        self._on_server(lambda: deliver(server, data))

    def _down(self, c: int, msg: Message) -> bytes:
        data = self._on_server(msg.to_bytes)
        data = self._wire(msg.KIND, c, data)
        self._traffic[c].down += len(data)
        return data

    # Public API --------------------------------------------------------------------------------
    @property
    def active(self) -> frozenset[int]:
        """Clients still allowed to submit (those not dropped during key sharing)."""
        return frozenset(self._requests)

    def submit(self, client_id: int, vector: npt.ArrayLike) -> int:
        """The client quantizes, masks and uploads; the server folds the upload into its running
        sum. Returns the bytes of that upload."""
        if self._finished:
            raise StageError("the round is finished; no more inputs")
        if client_id not in self._clients:
            raise UnknownClientError(f"client {client_id} is not in this round")
        request = self._requests.get(client_id)
        if request is None:
            raise ClientExcludedError(
                f"client {client_id} was dropped during key sharing (a neighbour rejected its "
                "share or its keys, or too few of its neighbours remained)"
            )
        if client_id in self._submitted:
            raise StageError(f"client {client_id} already submitted")
        data = self._down(client_id, request)
        reply = self._client_step(
            client_id, data, lambda cl, d: cl.masked_input(MaskingRequest.from_bytes(d), vector)
        )
        self._up(client_id, Kind.MASKED_INPUT, reply, server_masked_input)
        self._submitted.add(client_id)
        return len(reply)

    def finish(self, dropped: Collection[int] = ()) -> SecAggResult:
        """Unmask with every client that submitted and is not in ``dropped``.

        The sum covers every client whose masked input arrived (``submit`` was called), even if
        it is in ``dropped``: as in the paper, its self-mask is rebuilt from its neighbours'
        shares. Clients that never submitted are not in the sum; their pairwise masks are
        rebuilt from shares of their mask keys. Raises SecAggAbort when too few survive.
        """
        if self._finished:
            raise StageError("finish() was already called")
        gone = set(dropped)
        if gone - set(self._clients):
            raise UnknownClientError(
                f"dropped clients {sorted(gone - set(self._clients))} are not in this round"
            )
        self._finished = True
        for c, req in self._on_server(self._server.unmask_requests).items():
            if c in gone:
                continue
            reply = self._client_step(c, self._down(c, req), client_unmask)
            self._up(c, Kind.UNMASK_SHARES, reply, server_unmask_shares)
        return self._on_server(self._server.aggregate)

    @property
    def bytes_per_client(self) -> dict[int, Traffic]:
        return {c: Traffic(t.up, t.down) for c, t in self._traffic.items()}

    @property
    def client_seconds(self) -> dict[int, float]:
        """Each client's compute over all stages so far (parsing, crypto, masking, encoding)."""
        return dict(self._client_s)

    @property
    def server_seconds(self) -> float:
        """The server's compute so far (routing, parsing, summing, unmasking)."""
        return self._server_s
