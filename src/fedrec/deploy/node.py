"""A client's answer to one message, payload in, payload out (the ClientApp's whole logic).

Kinds: ``hello`` (who am I, what data do I hold), ``train`` (local update; under secure
aggregation also the round's key advertisement), ``secagg`` (the later SecAgg+ stages) and
``evaluate`` (``which``: validation, keeping the selected round's rows, or the final test).
Every reply echoes the request's round and nonce, which the server checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedrec.deploy.payload import Meta, Payload
from fedrec.deploy.pending import PendingRound
from fedrec.deploy.secagg_params import round_params
from fedrec.deploy.shards import describe
from fedrec.privacy.secagg import SecAggAbort, SecAggClient
from fedrec.privacy.secagg.messages import (
    ForwardedShares,
    MaskingRequest,
    NeighbourKeys,
    UnmaskRequest,
)
from fedrec.privacy.secagg.persist import export_client, restore_client

if TYPE_CHECKING:
    from fedrec.deploy.client import Device

KINDS = ("hello", "train", "secagg", "evaluate")


@dataclass(frozen=True)
class NodeDirs:
    """A device's shard and state directories, without :class:`Device`'s torch imports: the
    ClientApp builds this for every message, and most messages never train."""

    shard_dir: Path
    state_dir: Path


class RefusedError(RuntimeError):
    """A request this client will not act on; the message says why."""


def _echo(req: Payload) -> Meta:
    return {k: req.meta[k] for k in ("round", "nonce") if k in req.meta}


def _text(req: Payload, key: str) -> str:
    v = req.meta.get(key)
    if not isinstance(v, str):
        raise RefusedError(f"request lacks {key!r}")
    return v


def _round(req: Payload) -> int:
    r = req.meta.get("round")
    if not isinstance(r, int) or r < 0:
        raise RefusedError(f"request has no valid round ({r!r})")
    return r


def handle(device: NodeDirs | Device, kind: str, req: Payload) -> Payload:
    # "hello" and the SecAgg+ stages are torch-free: their processes start small and fast.
    if kind == "hello":
        return Payload(meta=describe(device.shard_dir))
    if kind == "secagg":
        return _secagg(device.state_dir, req)
    from fedrec.deploy.client import Device

    device = Device(device.shard_dir, device.state_dir, _run(req))
    if kind == "train":
        return _train(device, req)
    if kind == "evaluate":
        return _evaluate(device, req)
    raise RefusedError(f"unknown message kind {kind!r} (known: {', '.join(KINDS)})")


def _run(req: Payload) -> str:
    run = req.meta.get("run")
    if not isinstance(run, str) or not re.fullmatch(r"[0-9a-f]{1,32}", run):
        raise RefusedError(f"request has no valid run id ({str(run)[:40]!r})")
    return run


def _train(device: Device, req: Payload) -> Payload:
    round_ = _round(req)
    protection = None
    if req.meta.get("dense"):
        protection = {
            k.split("/", 1)[1]: float(v) for k, v in req.meta.items() if k.startswith("protection/")
        }
    out = device.train(_text(req, "config"), round_, req.params("shared"), protection)
    reply = Payload(meta={**_echo(req), "n_examples": out["n_examples"], "loss": out["loss"]})
    if "item_ids" in out:
        reply.arrays["item_ids"] = out["item_ids"].numpy().astype("int64")
        reply.put_params("item_deltas", {k: v.float() for k, v in out["item_deltas"].items()})
        reply.put_params("dense", {k: v.float() for k, v in out["dense"].items()})
    elif "vector" in out:
        reply.arrays["vector"] = out["vector"].numpy()
    if "secagg/ids" in req.meta:
        params = round_params(req.meta, round_, held=out["server_model"])
        cid = int(describe(device.shard_dir)["client_id"])
        client = SecAggClient(cid, params, min_inputs=int(out["min_inputs"]))
        reply.meta["message"] = client.advertise_keys().to_bytes()
        PendingRound(device.run_dir).put_secrets(round_, export_client(client))
    return reply


def _secagg(state_dir: Path, req: Payload) -> Payload:
    round_ = _round(req)
    params = round_params(req.meta, round_)
    stage = req.meta.get("stage")
    data = req.meta.get("message")
    if not isinstance(data, bytes):
        raise RefusedError("secagg request lacks its message bytes")
    pending = PendingRound(state_dir / f"run-{_run(req)}")
    client = restore_client(params, pending.secrets(round_))
    reply: bytes
    if stage == "share":
        reply = client.share_keys(NeighbourKeys.from_bytes(data)).to_bytes()
    elif stage == "receipt":
        reply = client.receive_shares(ForwardedShares.from_bytes(data)).to_bytes()
    elif stage == "mask":
        vec = pending.vector(round_)
        forwarded = req.meta.get("forwarded")
        if isinstance(forwarded, bytes):
            # Shares and masking request in one message (SecAggServer.forward_and_request_masks):
            # mask only if every neighbour's share decrypts, else drop out of the round.
            receipt = client.receive_shares(ForwardedShares.from_bytes(forwarded))
            if receipt.rejected:
                pending.clear()
                raise RefusedError(
                    f"shares from {list(receipt.rejected)} failed authentication: not masking"
                )
        reply = client.masked_input(MaskingRequest.from_bytes(data), vec).to_bytes()
    elif stage == "unmask":
        try:
            reply = client.unmask(UnmaskRequest.from_bytes(data)).to_bytes()
        except SecAggAbort:
            pending.clear()  # refused for good: no later request of this round gets a share
            raise
    else:
        raise RefusedError(f"unknown secure-aggregation stage {stage!r}")
    if stage == "unmask":
        pending.clear()
    else:
        pending.put_secrets(round_, export_client(client))
    return Payload(meta={**_echo(req), "message": reply})


def _evaluate(device: Device, req: Payload) -> Payload:
    which = req.meta.get("which", "valid")
    tag = req.meta.get("tag", -1)
    if not isinstance(which, str) or not isinstance(tag, int):
        raise RefusedError("evaluate request has a bad 'which' or 'tag'")
    out = device.evaluate(_text(req, "config"), req.params("shared"), which, tag)
    meta: Meta = dict(_echo(req))
    for which, metrics in out.items():
        for name, (s, n) in metrics.items():
            meta[f"{which}/{name}/sum"] = s
            meta[f"{which}/{name}/count"] = n
    return Payload(meta=meta)
