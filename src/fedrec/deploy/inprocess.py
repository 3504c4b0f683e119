"""A transport that calls each client's handler in this process: the deployment's logic
(validation, SecAgg+ stages, client state on disk) without Flower or a network. For tests and
for debugging a configuration before deploying it."""

from __future__ import annotations

import copy
from collections.abc import Callable

from fedrec.deploy.client import Device
from fedrec.deploy.node import handle
from fedrec.deploy.payload import Meta, Payload

Tamper = Callable[[str, int, Payload], Payload | None]
"""(kind, client, reply) -> the reply delivered (None: lost). For fault-injection tests."""


class InProcessTransport:
    def __init__(self, devices: dict[int, Device], tamper: Tamper | None = None) -> None:
        self.devices = devices
        self.tamper = tamper
        self.offline: set[int] = set()

    def clients(self) -> dict[int, Meta]:
        return {c: d.hello() for c, d in self.devices.items() if c not in self.offline}

    def exchange(
        self, kind: str, requests: dict[int, Payload], timeout: float
    ) -> dict[int, Payload]:
        out = {}
        for c, req in requests.items():
            if c in self.offline or c not in self.devices:
                continue
            reply: Payload | None = handle(self.devices[c], kind, copy.deepcopy(req))
            if self.tamper is not None and reply is not None:
                reply = self.tamper(kind, c, reply)
            if reply is not None:
                out[c] = reply
        return out
