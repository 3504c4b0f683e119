"""The server side of SecAgg+: routes encrypted shares, keeps one running sum of masked inputs
(O(dim) memory) and, at the end, removes the masks it can reconstruct from survivors' shares."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedrec.privacy.secagg.config import RoundParams
from fedrec.privacy.secagg.errors import (
    ClientExcludedError,
    MalformedMessageError,
    RoundMismatchError,
    SecAggAbort,
    StageError,
    TooFewInputsError,
    UnknownClientError,
)
from fedrec.privacy.secagg.keys import mask_key, public_bytes, seed_commitment
from fedrec.privacy.secagg.masks import mask_stream
from fedrec.privacy.secagg.messages import (
    SECRET_BYTES,
    AdvertiseKeys,
    ForwardedShares,
    MaskedInput,
    MaskingRequest,
    Message,
    NeighbourKeys,
    PeerKeys,
    ShareKeys,
    ShareReceipt,
    UnmaskRequest,
    UnmaskShares,
)
from fedrec.privacy.secagg.shamir import combine, decode_secrets, limbs_for, shares_from_bytes

__all__ = ["SecAggResult", "SecAggServer"]

_LIMBS = limbs_for(SECRET_BYTES)


@dataclass(frozen=True, eq=False)
class SecAggResult:
    """What the server learns: the sum over ``included`` and who was in which set.

    ``included`` are the clients whose masked input reached the server before unmasking
    (Bonawitz et al.'s U3), including those that went offline afterwards: their self-masks are
    rebuilt from their neighbours' shares. ``unmasking_survivors`` (U4) answered the unmasking
    request. ``ring_sum`` is the exact sum of the quantized inputs in Z_{2^bits}.
    """

    total: npt.NDArray[np.float64]
    included: tuple[int, ...]
    unmasking_survivors: tuple[int, ...]
    excluded: tuple[int, ...]
    ring_sum: npt.NDArray[np.unsignedinteger]


class _Phase(IntEnum):
    ADVERTISE = 0
    SHARE = 1
    RECEIPT = 2
    MASKED = 3
    UNMASK = 4
    DONE = 5


def _names(ids: Iterable[int], limit: int = 8) -> str:
    ids = sorted(ids)
    head = ", ".join(map(str, ids[:limit]))
    return head + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


class SecAggServer:
    """The server of one round. Semi-honest: it follows the protocol, and what it stores is
    exactly what an honest-but-curious server would see."""

    def __init__(self, params: RoundParams, *, min_inputs: int = 1) -> None:
        """``min_inputs``: the fewest masked inputs a sum may cover before anyone is asked to
        unmask it (distributed DP's m: fewer inputs carry too little noise)."""
        if isinstance(min_inputs, bool) or not isinstance(min_inputs, int) or min_inputs < 1:
            raise ValueError(f"min_inputs must be an integer >= 1, got {min_inputs!r}")
        self.params = params
        self.min_inputs = min_inputs
        self._phase = _Phase.ADVERTISE
        self._keys: dict[int, tuple[bytes, bytes]] = {}  # U1: (enc, mask) public keys
        self._commitments: dict[int, bytes] = {}
        self._offered: dict[int, frozenset[int]] = {}
        self._inbox: dict[int, list[tuple[int, bytes]]] = {}
        self._shared: set[int] = set()
        self._accused: set[int] = set()
        self._forwarded: dict[int, frozenset[int]] = {}
        self._receipts: set[int] = set()
        self._masked_with: dict[int, tuple[int, ...]] = {}  # U2, and whom each masked with
        self._sum = np.zeros(params.dim, dtype=params.quantizer.dtype)
        self._submitted: set[int] = set()  # U3
        self._requests: dict[int, UnmaskRequest] = {}
        self._seed_shares: dict[int, list[tuple[int, bytes]]] = {}
        self._key_shares: dict[int, list[tuple[int, bytes]]] = {}
        self._responded: set[int] = set()  # U4

    @property
    def active(self) -> frozenset[int]:
        """Clients allowed to submit a masked input (U2), once stage 1 is closed."""
        return frozenset(self._masked_with)

    def _accept(self, msg: Message, phase: _Phase) -> None:
        if self._phase != phase:
            raise StageError(
                f"server: {type(msg).__name__} (stage {msg.STAGE.value}) from client "
                f"{msg.client_id} arrived while the server is at {self._phase.name}"
            )
        if msg.round_ != self.params.round_:
            raise RoundMismatchError(
                f"server: message from client {msg.client_id} is for round {msg.round_}, this "
                f"is round {self.params.round_}"
            )
        if msg.client_id not in self.params.index:
            raise UnknownClientError(f"server: client {msg.client_id} is not in this round")

    def _close(self, phase: _Phase, nxt: _Phase, what: str) -> None:
        if self._phase != phase:
            raise StageError(f"server: cannot {what} at {self._phase.name}")
        self._phase = nxt

    # Stage 0 -------------------------------------------------------------------------------
    def receive_advertise_keys(self, msg: AdvertiseKeys) -> None:
        self._accept(msg, _Phase.ADVERTISE)
        if msg.client_id in self._keys:
            raise MalformedMessageError(f"server: second AdvertiseKeys from {msg.client_id}")
        self._keys[msg.client_id] = (msg.enc_key, msg.mask_key)
        self._commitments[msg.client_id] = msg.seed_commitment

    def neighbour_keys(self) -> dict[int, NeighbourKeys]:
        """Close stage 0: each client gets the keys of its neighbours that advertised."""
        self._close(_Phase.ADVERTISE, _Phase.SHARE, "send neighbour keys")
        out = {}
        for u in self._keys:
            peers = tuple(
                PeerKeys(v, *self._keys[v]) for v in self.params.neighbours(u) if v in self._keys
            )
            self._offered[u] = frozenset(p.client_id for p in peers)
            out[u] = NeighbourKeys(self.params.round_, u, peers)
        return out

    # Stage 1 -------------------------------------------------------------------------------
    def receive_share_keys(self, msg: ShareKeys) -> None:
        self._accept(msg, _Phase.SHARE)
        u = msg.client_id
        if u not in self._offered:
            raise UnknownClientError(f"server: client {u} did not advertise keys")
        if u in self._shared:
            raise MalformedMessageError(f"server: second ShareKeys from {u}")
        dsts = {v for v, _ in msg.ciphertexts}
        named = dsts | set(msg.rejected)
        if named - self._offered[u]:
            raise UnknownClientError(
                f"server: client {u} addressed {_names(named - self._offered[u])}, which are "
                "not its advertised neighbours"
            )
        if dsts & set(msg.rejected) or named != self._offered[u]:
            raise MalformedMessageError(
                f"server: ShareKeys from {u} must cover each neighbour exactly once"
            )
        self._shared.add(u)
        self._accused.update(msg.rejected)
        for v, ct in msg.ciphertexts:
            self._inbox.setdefault(v, []).append((u, ct))

    def forward_shares(self) -> dict[int, ForwardedShares]:
        """Route each ciphertext to its recipient (the server cannot read them). Clients whose
        keys a neighbour refused are out of the round already: nothing goes to or from them."""
        self._close(_Phase.SHARE, _Phase.RECEIPT, "forward shares")
        ok = self._shared - self._accused
        out = {}
        for v in sorted(ok):
            entries = tuple(e for e in self._inbox.get(v, []) if e[0] in ok)
            self._forwarded[v] = frozenset(src for src, _ in entries)
            out[v] = ForwardedShares(self.params.round_, v, entries)
        self._inbox.clear()
        return out

    def receive_receipt(self, msg: ShareReceipt) -> None:
        self._accept(msg, _Phase.RECEIPT)
        v = msg.client_id
        if v not in self._forwarded:
            raise UnknownClientError(f"server: client {v} was sent no shares")
        if v in self._receipts:
            raise MalformedMessageError(f"server: second ShareReceipt from {v}")
        if set(msg.rejected) - self._forwarded[v]:
            raise UnknownClientError(
                f"server: client {v} rejects shares from {_names(set(msg.rejected))}, which "
                "were not forwarded to it"
            )
        self._receipts.add(v)
        self._accused.update(msg.rejected)

    def masking_requests(self) -> dict[int, MaskingRequest]:
        """Close stage 1. U2 = clients that shared keys and acknowledged theirs, minus those a
        neighbour rejected, minus (repeatedly) those left with fewer than t share holders,
        whose masks could never be removed."""
        self._close(_Phase.RECEIPT, _Phase.MASKED, "request masked inputs")
        p = self.params
        active = (self._receipts & self._shared) - self._accused
        while True:
            thin = {u for u in active if sum(v in active for v in p.neighbours(u)) + 1 < p.t}
            if not thin:
                break
            active -= thin
        for u in sorted(active):
            self._masked_with[u] = tuple(v for v in p.neighbours(u) if v in active)
        return {u: MaskingRequest(p.round_, u, nb) for u, nb in self._masked_with.items()}

    def forward_and_request_masks(self) -> dict[int, tuple[ForwardedShares, MaskingRequest]]:
        """Stage 1's forwarding and stage 2's request in one message, without receipts (as
        Flower's SecAgg+ does): a round-trip fewer for a deployment.

        Privacy is unchanged. A client still masks only with neighbours whose shares it holds
        and can decrypt: a recipient whose ciphertext fails authentication refuses to mask and
        is a dropout (its pairwise masks are rebuilt from its mask-key shares, as for any
        client that sent no input), and the unmasking threshold checks are as before. What is
        lost is robustness only: a client that sends bad ciphertexts makes its recipients drop
        out, instead of being dropped before anyone masks (denial of service by malicious
        clients is out of scope, see the package docstring)."""
        forwarded = self.forward_shares()
        # Every recipient is taken to hold its shares; one that does not refuses to mask.
        self._receipts = set(forwarded)
        requests = self.masking_requests()
        return {u: (forwarded[u], requests[u]) for u in requests}

    # Stage 2 -------------------------------------------------------------------------------
    def receive_masked_input(self, msg: MaskedInput) -> None:
        """Add into the running sum at once: memory stays O(dim) whatever the number of
        clients."""
        self._accept(msg, _Phase.MASKED)
        u = msg.client_id
        if u not in self._masked_with:
            raise ClientExcludedError(f"server: client {u} was dropped at stage 1")
        if u in self._submitted:
            raise MalformedMessageError(f"server: second MaskedInput from {u}")
        if msg.bits != self.params.quantizer.bits or msg.vector.size != self.params.dim:
            raise MalformedMessageError(
                f"server: MaskedInput from {u} is {msg.vector.size} x {msg.bits} bits, expected "
                f"{self.params.dim} x {self.params.quantizer.bits}"
            )
        np.add(self._sum, msg.vector, out=self._sum)
        self._submitted.add(u)

    def unmask_requests(self) -> dict[int, UnmaskRequest]:
        """Close stage 2: U3 is fixed; each client in it is told U3 and which of its
        neighbours are in U3 and which dropped. Too small a U3 aborts here, before any share
        is asked for: no sum is ever unmasked."""
        self._close(_Phase.MASKED, _Phase.UNMASK, "request unmasking")
        p = self.params
        if len(self._submitted) < max(p.t, self.min_inputs):
            self._phase = _Phase.DONE  # the round is over: no share may be asked or accepted
        if len(self._submitted) < p.t:
            raise SecAggAbort(
                f"only {len(self._submitted)} of {p.n} clients submitted a masked input; "
                f"at least t={p.t} are needed"
            )
        if len(self._submitted) < self.min_inputs:
            raise TooFewInputsError(
                f"only {len(self._submitted)} of {p.n} clients submitted a masked input, fewer "
                f"than the {self.min_inputs} the round needs (distributed DP noise is "
                "calibrated for that many); aborted before unmasking, nothing was unmasked"
            )
        included = tuple(sorted(self._submitted))
        for u in included:
            nb = self._masked_with[u]
            survivors = tuple(sorted([u, *(v for v in nb if v in self._submitted)]))
            dropped = tuple(v for v in nb if v not in self._submitted)
            self._requests[u] = UnmaskRequest(p.round_, u, survivors, dropped, included)
        return dict(self._requests)

    # Stage 3 -------------------------------------------------------------------------------
    def receive_unmask_shares(self, msg: UnmaskShares) -> None:
        self._accept(msg, _Phase.UNMASK)
        u = msg.client_id
        req = self._requests.get(u)
        if req is None:
            raise UnknownClientError(f"server: client {u} was not asked to unmask")
        if u in self._responded:
            raise MalformedMessageError(f"server: second UnmaskShares from {u}")
        if (
            tuple(o for o, _ in msg.seed_shares) != req.survivors
            or tuple(o for o, _ in msg.key_shares) != req.dropped
        ):
            raise MalformedMessageError(
                f"server: UnmaskShares from {u} does not answer the request it was sent"
            )
        try:
            shares_from_bytes(b"".join(s for _, s in (*msg.seed_shares, *msg.key_shares)), _LIMBS)
        except ValueError as exc:
            raise MalformedMessageError(f"server: share from {u}: {exc}") from None
        x = self.params.x_coord(u)
        for owner, share in msg.seed_shares:
            self._seed_shares.setdefault(owner, []).append((x, share))
        for owner, share in msg.key_shares:
            self._key_shares.setdefault(owner, []).append((x, share))
        self._responded.add(u)

    def aggregate(self) -> SecAggResult:
        """Close the round: rebuild the self-mask seed of every client in U3 and the mask key of
        every client that dropped before submitting, strip their masks, decode the sum."""
        self._close(_Phase.UNMASK, _Phase.DONE, "aggregate")
        p = self.params
        u3 = self._submitted
        if len(self._responded) < p.t:
            raise SecAggAbort(
                f"only {len(self._responded)} of {len(u3)} clients survived unmasking; "
                f"reconstruction needs t={p.t}"
            )
        seed_owners = sorted(u3)
        key_owners = sorted(
            u
            for u in self._masked_with
            if u not in u3 and any(v in u3 for v in self._masked_with[u])
        )
        short = [
            (u, len(self._seed_shares.get(u, ())), "self-mask seed")
            for u in seed_owners
            if len(self._seed_shares.get(u, ())) < p.t
        ] + [
            (u, len(self._key_shares.get(u, ())), "mask key")
            for u in key_owners
            if len(self._key_shares.get(u, ())) < p.t
        ]
        if short:
            u, got, what = short[0]
            raise SecAggAbort(
                f"only {len(self._responded)} of {len(u3)} clients survived unmasking, and "
                f"{len(short)} secrets cannot be rebuilt: e.g. the {what} of client {u} has "
                f"{got} surviving share holders, t={p.t} are needed"
            )
        total = self._sum
        stream = mask_stream(p.dim, p.quantizer.dtype)
        seeds = self._rebuild(seed_owners, self._seed_shares)
        bad = [
            u
            for u, seed in zip(seed_owners, seeds, strict=True)
            if seed_commitment(p.session_id, u, seed) != self._commitments[u]
        ]
        if bad:
            raise SecAggAbort(
                f"the self-mask seeds rebuilt for clients {_names(bad)} do not match their "
                "commitments: a share was corrupted"
            )
        for seed in seeds:
            stream.subtract(total, seed)
        for u, raw in zip(key_owners, self._rebuild(key_owners, self._key_shares), strict=True):
            sk = X25519PrivateKey.from_private_bytes(raw)
            if public_bytes(sk) != self._keys[u][1]:
                raise SecAggAbort(
                    f"the mask key rebuilt for client {u} does not match its public key: a "
                    "share was corrupted"
                )
            for v in self._masked_with[u]:
                if v not in u3:
                    continue
                key = mask_key(sk, self._keys[v][1], p.session_id, u, v)
                if v < u:  # v added this mask; take it out
                    stream.subtract(total, key)
                else:
                    stream.add(total, key)
        self._sum = np.zeros(0, dtype=total.dtype)
        return SecAggResult(
            total=p.quantizer.dequantize(total),
            included=tuple(seed_owners),
            unmasking_survivors=tuple(sorted(self._responded)),
            excluded=tuple(c for c in p.client_ids if c not in u3),
            ring_sum=total,
        )

    def _rebuild(self, owners: list[int], store: dict[int, list[tuple[int, bytes]]]) -> list[bytes]:
        """Shamir-reconstruct the secrets of ``owners`` in one vectorised pass (t shares each)."""
        if not owners:
            return []
        t = self.params.t
        chosen = [sorted(store[u])[:t] for u in owners]
        xs = np.array([[x for x, _ in c] for c in chosen], dtype=np.uint64)
        blob = b"".join(s for c in chosen for _, s in c)
        shares = shares_from_bytes(blob, _LIMBS).reshape(len(owners), t, _LIMBS)
        limbs = combine(xs, shares)
        try:
            secrets = decode_secrets(limbs, SECRET_BYTES)
        except ValueError:
            bad = []
            for i, u in enumerate(owners):
                try:
                    decode_secrets(limbs[i : i + 1], SECRET_BYTES)
                except ValueError:
                    bad.append(u)
            raise SecAggAbort(
                f"the shares of clients {_names(bad)} are inconsistent: a share was corrupted"
            ) from None
        return [row.tobytes() for row in secrets]
