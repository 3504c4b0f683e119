"""The client side of SecAgg+: a state machine that only sees server messages."""

from __future__ import annotations

import os
from collections import Counter
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from fedrec.privacy.secagg.config import RoundParams
from fedrec.privacy.secagg.errors import (
    MalformedMessageError,
    RoundMismatchError,
    SecAggAbort,
    SecAggInputError,
    StageError,
    UnknownClientError,
)
from fedrec.privacy.secagg.keys import (
    decrypt,
    encrypt,
    encryption_keys,
    mask_key,
    new_keypair,
    private_bytes,
    seed_commitment,
    share_aad,
)
from fedrec.privacy.secagg.masks import mask_stream
from fedrec.privacy.secagg.messages import (
    SECRET_BYTES,
    SHARE_BYTES,
    AdvertiseKeys,
    ForwardedShares,
    MaskedInput,
    MaskingRequest,
    Message,
    NeighbourKeys,
    ShareKeys,
    ShareReceipt,
    UnmaskRequest,
    UnmaskShares,
)
from fedrec.privacy.secagg.shamir import encode_secrets, share_bytes, shares_from_bytes, split

__all__ = ["SecAggClient"]


class _Phase(IntEnum):
    NEW = 0
    ADVERTISED = 1
    SHARED = 2
    RECEIVED = 3
    MASKED = 4
    DONE = 5
    ABORTED = 6


class SecAggClient:
    """One client of one round. Its secrets (two X25519 keys, the self-mask seed, the rounding
    key) come from the OS CSPRNG and never leave it except as Shamir shares to neighbours."""

    def __init__(self, client_id: int, params: RoundParams, *, min_inputs: int = 1) -> None:
        """``min_inputs``: this client's own floor on the inputs a sum it helps unmask may
        cover (distributed DP's m, from its own configuration, not from the server)."""
        if client_id not in params.index:
            raise UnknownClientError(f"client {client_id} is not in round {params.round_}")
        if isinstance(min_inputs, bool) or not isinstance(min_inputs, int) or min_inputs < 1:
            raise ValueError(f"min_inputs must be an integer >= 1, got {min_inputs!r}")
        self.id = client_id
        self.params = params
        self.min_inputs = min_inputs
        self._phase = _Phase.NEW
        self._neighbours = frozenset(params.neighbours(client_id))
        self._enc_sk, self._enc_pk = new_keypair()
        self._mask_sk, self._mask_pk = new_keypair()
        self._seed = os.urandom(SECRET_BYTES)
        self._send_keys: dict[int, bytes] = {}
        self._recv_keys: dict[int, bytes] = {}
        self._mask_keys: dict[int, bytes] = {}
        self._seed_shares: dict[int, bytes] = {}  # owner -> this client's share of its seed
        self._key_shares: dict[int, bytes] = {}  # owner -> share of its mask private key
        self._masked_with: frozenset[int] = frozenset()

    def _accept(self, msg: Message, phase: _Phase) -> None:
        if self._phase != phase:
            raise StageError(
                f"client {self.id}: {type(msg).__name__} (stage {msg.STAGE.value}) arrived "
                f"while the client is at {self._phase.name}"
            )
        if msg.round_ != self.params.round_:
            raise RoundMismatchError(
                f"client {self.id}: message for round {msg.round_}, this is round "
                f"{self.params.round_}"
            )
        if msg.client_id != self.id:
            raise UnknownClientError(
                f"client {self.id}: received a message addressed to client {msg.client_id}"
            )

    def _abort(self, reason: str) -> SecAggAbort:
        self._phase = _Phase.ABORTED
        return SecAggAbort(f"client {self.id}: {reason}")

    # Stage 0 -------------------------------------------------------------------------------
    def advertise_keys(self) -> AdvertiseKeys:
        if self._phase != _Phase.NEW:
            raise StageError(f"client {self.id}: keys were already advertised")
        self._phase = _Phase.ADVERTISED
        commitment = seed_commitment(self.params.session_id, self.id, self._seed)
        return AdvertiseKeys(self.params.round_, self.id, self._enc_pk, self._mask_pk, commitment)

    # Stage 1 -------------------------------------------------------------------------------
    def share_keys(self, msg: NeighbourKeys) -> ShareKeys:
        """Agree keys with each neighbour and send it, encrypted, a share of the mask private
        key and of the self-mask seed. Neighbours with unusable keys are refused (reported)."""
        self._accept(msg, _Phase.ADVERTISED)
        p = self.params
        for peer in msg.peers:
            if peer.client_id not in self._neighbours:
                raise UnknownClientError(
                    f"client {self.id}: {peer.client_id} is not its neighbour in the public graph"
                )
        counts = Counter([self._enc_pk, self._mask_pk])
        counts.update(k for peer in msg.peers for k in (peer.enc_key, peer.mask_key))
        rejected: list[int] = []
        accepted: list[int] = []
        for peer in msg.peers:
            v = peer.client_id
            if counts[peer.enc_key] > 1 or counts[peer.mask_key] > 1:
                rejected.append(v)  # a reused key would make two "pairwise" secrets equal
                continue
            try:
                send, recv = encryption_keys(self._enc_sk, peer.enc_key, p.session_id, self.id, v)
                mkey = mask_key(self._mask_sk, peer.mask_key, p.session_id, self.id, v)
            except ValueError:  # low-order point: no secret can be agreed
                rejected.append(v)
                continue
            self._send_keys[v], self._recv_keys[v], self._mask_keys[v] = send, recv, mkey
            accepted.append(v)
        if len(accepted) + 1 < p.t:
            raise self._abort(
                f"only {len(accepted)} usable neighbours of {p.k}; its secrets need t={p.t} "
                "share holders including itself"
            )
        secrets = np.frombuffer(private_bytes(self._mask_sk) + self._seed, dtype=np.uint8)
        limbs = encode_secrets(secrets.reshape(2, SECRET_BYTES))
        xs = [p.x_coord(self.id)] + [p.x_coord(v) for v in accepted]
        shares = split(limbs, xs, p.t)  # (2 secrets, holders, limbs)
        self._key_shares[self.id] = share_bytes(shares[0, 0])
        self._seed_shares[self.id] = share_bytes(shares[1, 0])
        cts = []
        for i, v in enumerate(accepted, start=1):
            plaintext = share_bytes(shares[0, i]) + share_bytes(shares[1, i])
            aad = share_aad(p.session_id, p.round_, self.id, v)
            cts.append((v, encrypt(self._send_keys[v], plaintext, aad)))
        self._phase = _Phase.SHARED
        return ShareKeys(p.round_, self.id, tuple(cts), tuple(rejected))

    def receive_shares(self, msg: ForwardedShares) -> ShareReceipt:
        """Decrypt and keep the neighbours' shares; report senders whose ciphertext fails
        authentication, so that the server drops them before anyone masks with them."""
        self._accept(msg, _Phase.SHARED)
        p = self.params
        for src, _ in msg.ciphertexts:
            if src not in self._recv_keys:
                raise UnknownClientError(
                    f"client {self.id}: forwarded share from {src}, which is not an accepted "
                    "neighbour"
                )
        rejected: list[int] = []
        for src, ct in msg.ciphertexts:
            plaintext = decrypt(
                self._recv_keys[src], ct, share_aad(p.session_id, p.round_, src, self.id)
            )
            if plaintext is None or len(plaintext) != 2 * SHARE_BYTES:
                rejected.append(src)
                continue
            key_share, seed_share = plaintext[:SHARE_BYTES], plaintext[SHARE_BYTES:]
            try:
                shares_from_bytes(plaintext, SHARE_BYTES // 4)
            except ValueError:
                rejected.append(src)
                continue
            self._key_shares[src] = key_share
            self._seed_shares[src] = seed_share
        self._phase = _Phase.RECEIVED
        return ShareReceipt(p.round_, self.id, tuple(rejected))

    # Stage 2 -------------------------------------------------------------------------------
    def masked_input(self, msg: MaskingRequest, vector: npt.ArrayLike) -> MaskedInput:
        """y = q(x) + PRG(seed) + sum_{v > me} PRG(s_uv) - sum_{v < me} PRG(s_uv) in Z_2^bits."""
        self._accept(msg, _Phase.RECEIVED)
        p = self.params
        for v in msg.neighbours:
            if v == self.id or v not in self._seed_shares:
                raise UnknownClientError(
                    f"client {self.id}: asked to mask with {v}, whose shares it does not hold"
                )
        x = np.asarray(vector)
        if x.shape != (p.dim,):
            raise SecAggInputError(f"client {self.id}: expected shape ({p.dim},), got {x.shape}")
        if len(msg.neighbours) + 1 < p.t:
            raise self._abort(
                f"only {len(msg.neighbours)} neighbours remain of {p.k}; t={p.t} share holders "
                "are needed to unmask it"
            )
        q = p.quantizer.quantize(x, os.urandom(32))
        keys = self._mask_keys
        # The seed is a fresh 256-bit key, used once; the pair (u, v) adds its mask at the
        # smaller id and subtracts it at the larger, so it cancels in the sum.
        mask_stream(p.dim, p.quantizer.dtype).apply(
            q,
            plus=[self._seed, *(keys[v] for v in msg.neighbours if self.id < v)],
            minus=[keys[v] for v in msg.neighbours if self.id > v],
        )
        self._masked_with = frozenset(msg.neighbours)
        self._phase = _Phase.MASKED
        return MaskedInput(p.round_, self.id, p.quantizer.bits, q)

    # Stage 3 -------------------------------------------------------------------------------
    def unmask(self, msg: UnmaskRequest) -> UnmaskShares:
        """Send a seed share for each neighbour whose input arrived and a mask-key share for
        each that dropped; never both for one neighbour (that would reveal its input)."""
        self._accept(msg, _Phase.MASKED)
        p = self.params
        survivors, dropped = set(msg.survivors), set(msg.dropped)
        if survivors & dropped:
            raise MalformedMessageError(
                f"client {self.id}: unmasking request lists {sorted(survivors & dropped)} both "
                "as survived and as dropped; refusing to reveal both of their secrets"
            )
        if self.id not in survivors:
            raise MalformedMessageError(
                f"client {self.id}: unmasking request does not count it as a survivor"
            )
        expected = self._masked_with | {self.id}
        named = survivors | dropped
        if named - expected:
            raise UnknownClientError(
                f"client {self.id}: unmasking request names {sorted(named - expected)}, which "
                "it did not mask with"
            )
        if expected - named:
            raise MalformedMessageError(
                f"client {self.id}: unmasking request omits neighbours {sorted(expected - named)}"
            )
        if len(survivors) < p.t:
            raise self._abort(
                f"only {len(survivors)} of its neighbourhood submitted inputs; its self-mask "
                f"needs t={p.t}"
            )
        self._check_included(msg)
        seed = tuple((o, self._seed_shares[o]) for o in sorted(survivors))
        key = tuple((o, self._key_shares[o]) for o in sorted(dropped))
        self._phase = _Phase.DONE
        return UnmaskShares(p.round_, self.id, seed, key)

    def _check_included(self, msg: UnmaskRequest) -> None:
        """Defence in depth against a server that would unmask too small a sum: the announced
        U3 must be round members, agree with what this client sees of its neighbourhood, and
        hold at least ``min_inputs`` clients, or this client sends no share at all."""
        included = set(msg.included)
        if self.id not in included:
            raise MalformedMessageError(
                f"client {self.id}: unmasking request does not list it among the included "
                "inputs; refusing to unmask a sum whose members it cannot check"
            )
        strangers = included - set(self.params.index)
        if strangers:
            raise UnknownClientError(
                f"client {self.id}: unmasking request includes {sorted(strangers)[:8]}, which "
                "are not in this round"
            )
        mine = self._masked_with | {self.id}
        if included & mine != set(msg.survivors):
            raise MalformedMessageError(
                f"client {self.id}: the included set disagrees with its neighbourhood's "
                "survivors and dropouts in the same request"
            )
        if len(included) < self.min_inputs:
            raise self._abort(
                f"refusing to unmask: the sum would cover only {len(included)} inputs, fewer "
                f"than the {self.min_inputs} its distributed DP noise needs (its own "
                "configuration); no share sent"
            )
