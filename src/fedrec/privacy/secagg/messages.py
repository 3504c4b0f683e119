"""The wire messages of the four SecAgg stages, one dataclass per message.

Framing: a 20-byte header (magic ``b"SA"``, version, kind, round u64, client id u64, all
big-endian) then a kind-specific body. ``from_bytes`` checks structure (magic, version, kind,
every length, duplicates, trailing bytes) and raises MalformedMessageError or StageError; whether
the round and the ids fit the receiver's state is checked by the receiver (client or server),
which raises RoundMismatchError or UnknownClientError. ``client_id`` is the sender of an upload
and the recipient of a download.

Stage 0, advertise keys:  AdvertiseKeys (up), NeighbourKeys (down)
Stage 1, share keys:      ShareKeys (up), ForwardedShares (down), ShareReceipt (up)
Stage 2, masked input:    MaskingRequest (down), MaskedInput (up)
Stage 3, unmasking:       UnmaskRequest (down), UnmaskShares (up)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, NamedTuple, Self, cast

import numpy as np
import numpy.typing as npt

from fedrec.privacy.secagg.config import MAX_CLIENT_ID
from fedrec.privacy.secagg.errors import MalformedMessageError, StageError
from fedrec.privacy.secagg.keys import KEY_BYTES, NONCE_BYTES, TAG_BYTES
from fedrec.privacy.secagg.shamir import limbs_for

__all__ = [
    "CIPHERTEXT_BYTES",
    "COMMITMENT_BYTES",
    "HEADER_BYTES",
    "SECRET_BYTES",
    "SHARE_BYTES",
    "AdvertiseKeys",
    "ForwardedShares",
    "Kind",
    "MaskedInput",
    "MaskingRequest",
    "Message",
    "NeighbourKeys",
    "PeerKeys",
    "ShareKeys",
    "ShareReceipt",
    "Stage",
    "UnmaskRequest",
    "UnmaskShares",
    "decode",
]

MAGIC = b"SA"
VERSION = 2  # 2: UnmaskRequest carries the included set
_HEADER = struct.Struct(">2sBBQQ")
HEADER_BYTES = _HEADER.size
SECRET_BYTES = 32  # an X25519 private key or a self-mask seed
COMMITMENT_BYTES = 32
SHARE_BYTES = 4 * limbs_for(SECRET_BYTES)
CIPHERTEXT_BYTES = NONCE_BYTES + 2 * SHARE_BYTES + TAG_BYTES


class Stage(IntEnum):
    ADVERTISE_KEYS = 0
    SHARE_KEYS = 1
    MASKED_INPUT = 2
    UNMASKING = 3


class Kind(IntEnum):
    ADVERTISE_KEYS = 1
    NEIGHBOUR_KEYS = 2
    SHARE_KEYS = 3
    FORWARDED_SHARES = 4
    SHARE_RECEIPT = 5
    MASKING_REQUEST = 6
    MASKED_INPUT = 7
    UNMASK_REQUEST = 8
    UNMASK_SHARES = 9


class PeerKeys(NamedTuple):
    client_id: int
    enc_key: bytes
    mask_key: bytes


Entry = tuple[int, bytes]


def _check_id(value: int, what: str) -> None:
    if not 0 <= value <= MAX_CLIENT_ID:
        raise MalformedMessageError(f"{what} {value} is outside 0..2^63-1")


def _check_ids(ids: tuple[int, ...], what: str) -> None:
    if ids and (min(ids) < 0 or max(ids) > MAX_CLIENT_ID):
        raise MalformedMessageError(f"an id in {what} is outside 0..2^63-1")
    if len(set(ids)) != len(ids):
        raise MalformedMessageError(f"duplicate ids in {what}")


def _check_entries(entries: tuple[Entry, ...], blob: int, what: str) -> None:
    _check_ids(tuple(i for i, _ in entries), what)
    for i, b in entries:
        if len(b) != blob:
            raise MalformedMessageError(f"{what} for {i} is {len(b)} bytes, expected {blob}")


class _Reader:
    def __init__(self, data: bytes, pos: int) -> None:
        self._data = data
        self._pos = pos

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise MalformedMessageError(
                f"truncated message: needs {end} bytes, has {len(self._data)}"
            )
        out = self._data[self._pos : end]
        self._pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def _count(self, item: int) -> int:
        count = self.u32()
        if count * item > len(self._data) - self._pos:
            raise MalformedMessageError(f"count {count} overruns the message")
        return count

    def ids(self) -> tuple[int, ...]:
        count = self._count(8)
        return struct.unpack(f">{count}Q", self.take(8 * count))

    def entries(self, blob: int) -> tuple[Entry, ...]:
        count = self._count(8 + blob)
        raw = self.take(count * (8 + blob))
        return tuple(struct.iter_unpack(f">Q{blob}s", raw))

    def rest(self) -> int:
        return len(self._data) - self._pos

    def end(self) -> None:
        if self._pos != len(self._data):
            raise MalformedMessageError(f"{len(self._data) - self._pos} trailing bytes")


def _ids(ids: tuple[int, ...]) -> bytes:
    return struct.pack(f">I{len(ids)}Q", len(ids), *ids)


def _entries(entries: tuple[Entry, ...]) -> bytes:
    parts = [struct.pack(">I", len(entries))]
    for i, blob in entries:
        parts += (i.to_bytes(8, "big"), blob)
    return b"".join(parts)


@dataclass(frozen=True)
class _Base:
    KIND: ClassVar[Kind]
    STAGE: ClassVar[Stage]
    round_: int
    client_id: int

    def __post_init__(self) -> None:
        if not 0 <= self.round_ <= MAX_CLIENT_ID:
            raise MalformedMessageError(f"round {self.round_} is outside 0..2^63-1")
        _check_id(self.client_id, "client id")

    def _header(self) -> bytes:
        return _HEADER.pack(MAGIC, VERSION, self.KIND, self.round_, self.client_id)

    @classmethod
    def _open(cls, data: bytes) -> tuple[int, int, _Reader]:
        round_, client_id, kind = _parse_header(data)
        if kind != cls.KIND:
            raise StageError(
                f"expected a {cls.KIND.name} message (stage {cls.STAGE.value}), got "
                f"{kind.name} (stage {_STAGE_OF[kind].value})"
            )
        return round_, client_id, _Reader(data, HEADER_BYTES)


def _parse_header(data: bytes) -> tuple[int, int, Kind]:
    if len(data) < HEADER_BYTES:
        raise MalformedMessageError(f"{len(data)} bytes is shorter than the header")
    magic, version, kind, round_, client_id = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise MalformedMessageError(f"bad magic {magic!r}: not a SecAgg message")
    if version != VERSION:
        raise MalformedMessageError(f"unsupported version {version} (expected {VERSION})")
    try:
        return round_, client_id, Kind(kind)
    except ValueError:
        raise MalformedMessageError(f"unknown message kind {kind}") from None


@dataclass(frozen=True)
class AdvertiseKeys(_Base):
    """Stage 0, client -> server: its two X25519 public keys (share encryption, masking) and a
    hash commitment to its self-mask seed, so that a seed rebuilt from corrupted shares is
    caught rather than silently returning a wrong sum (the seed is a uniform 256-bit key, so
    its SHA-256 reveals nothing)."""

    KIND = Kind.ADVERTISE_KEYS
    STAGE = Stage.ADVERTISE_KEYS
    enc_key: bytes
    mask_key: bytes
    seed_commitment: bytes

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.enc_key) != KEY_BYTES or len(self.mask_key) != KEY_BYTES:
            raise MalformedMessageError("X25519 public keys are 32 bytes")
        if len(self.seed_commitment) != COMMITMENT_BYTES:
            raise MalformedMessageError("the seed commitment is a 32-byte SHA-256 digest")

    def to_bytes(self) -> bytes:
        return self._header() + self.enc_key + self.mask_key + self.seed_commitment

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        round_, cid, r = cls._open(data)
        enc, mask, commitment = r.take(KEY_BYTES), r.take(KEY_BYTES), r.take(COMMITMENT_BYTES)
        r.end()
        return cls(round_, cid, enc, mask, commitment)


@dataclass(frozen=True)
class NeighbourKeys(_Base):
    """Stage 0, server -> client: the keys of the neighbours that advertised."""

    KIND = Kind.NEIGHBOUR_KEYS
    STAGE = Stage.ADVERTISE_KEYS
    peers: tuple[PeerKeys, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ids(tuple(p.client_id for p in self.peers), "neighbour keys")
        for p in self.peers:
            if len(p.enc_key) != KEY_BYTES or len(p.mask_key) != KEY_BYTES:
                raise MalformedMessageError(f"keys of client {p.client_id} are not 32 bytes")

    def to_bytes(self) -> bytes:
        body = [struct.pack(">I", len(self.peers))]
        for p in self.peers:
            body += [struct.pack(">Q", p.client_id), p.enc_key, p.mask_key]
        return self._header() + b"".join(body)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        round_, cid, r = cls._open(data)
        peers = tuple(
            PeerKeys(i, blob[:KEY_BYTES], blob[KEY_BYTES:]) for i, blob in r.entries(2 * KEY_BYTES)
        )
        r.end()
        return cls(round_, cid, peers)


@dataclass(frozen=True)
class ShareKeys(_Base):
    """Stage 1, client -> server: one AES-GCM ciphertext of its two shares per neighbour, and
    the neighbours whose public keys it refused (a complaint)."""

    KIND = Kind.SHARE_KEYS
    STAGE = Stage.SHARE_KEYS
    ciphertexts: tuple[Entry, ...]
    rejected: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_entries(self.ciphertexts, CIPHERTEXT_BYTES, "share ciphertext")
        _check_ids(self.rejected, "rejected neighbours")

    def to_bytes(self) -> bytes:
        return self._header() + _entries(self.ciphertexts) + _ids(self.rejected)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        round_, cid, r = cls._open(data)
        cts = r.entries(CIPHERTEXT_BYTES)
        rejected = r.ids()
        r.end()
        return cls(round_, cid, cts, rejected)


@dataclass(frozen=True)
class ForwardedShares(_Base):
    """Stage 1, server -> client: the ciphertexts addressed to it, by sender."""

    KIND = Kind.FORWARDED_SHARES
    STAGE = Stage.SHARE_KEYS
    ciphertexts: tuple[Entry, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_entries(self.ciphertexts, CIPHERTEXT_BYTES, "share ciphertext")

    def to_bytes(self) -> bytes:
        return self._header() + _entries(self.ciphertexts)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        round_, cid, r = cls._open(data)
        cts = r.entries(CIPHERTEXT_BYTES)
        r.end()
        return cls(round_, cid, cts)


@dataclass(frozen=True)
class ShareReceipt(_Base):
    """Stage 1, client -> server: senders whose ciphertext failed authentication."""

    KIND = Kind.SHARE_RECEIPT
    STAGE = Stage.SHARE_KEYS
    rejected: tuple[int, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ids(self.rejected, "rejected senders")

    def to_bytes(self) -> bytes:
        return self._header() + _ids(self.rejected)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        round_, cid, r = cls._open(data)
        rejected = r.ids()
        r.end()
        return cls(round_, cid, rejected)


@dataclass(frozen=True)
class MaskingRequest(_Base):
    """Stage 2, server -> client: the neighbours still in the round, to mask with."""

    KIND = Kind.MASKING_REQUEST
    STAGE = Stage.MASKED_INPUT
    neighbours: tuple[int, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ids(self.neighbours, "masking neighbours")

    def to_bytes(self) -> bytes:
        return self._header() + _ids(self.neighbours)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        round_, cid, r = cls._open(data)
        neighbours = r.ids()
        r.end()
        return cls(round_, cid, neighbours)


@dataclass(frozen=True, eq=False)
class MaskedInput(_Base):
    """Stage 2, client -> server: the quantized, double-masked vector in Z_{2^bits}."""

    KIND = Kind.MASKED_INPUT
    STAGE = Stage.MASKED_INPUT
    bits: int
    vector: npt.NDArray[np.unsignedinteger]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bits not in (32, 64):
            raise MalformedMessageError(f"ring bits must be 32 or 64, got {self.bits}")
        want = np.dtype(np.uint32 if self.bits == 32 else np.uint64)
        if self.vector.dtype != want or self.vector.ndim != 1:
            raise MalformedMessageError(f"masked vector must be 1-D {want}")

    def to_bytes(self) -> bytes:
        le = np.ascontiguousarray(self.vector, dtype=f"<u{self.bits // 8}")
        return b"".join([self._header(), struct.pack(">BI", self.bits, le.size), le.data])

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        round_, cid, r = cls._open(data)
        bits = r.u8()
        dim = r.u32()
        if bits not in (32, 64):
            raise MalformedMessageError(f"ring bits must be 32 or 64, got {bits}")
        width = bits // 8
        if r.rest() != dim * width:
            raise MalformedMessageError(
                f"masked vector has {r.rest()} bytes, expected {dim} x {width}"
            )
        vec = np.frombuffer(data, dtype=f"<u{width}", offset=HEADER_BYTES + 5, count=dim)
        native = vec.astype(np.uint32 if bits == 32 else np.uint64, copy=False)
        return cls(round_, cid, bits, cast(npt.NDArray[np.unsignedinteger], native))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MaskedInput) and self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class UnmaskRequest(_Base):
    """Stage 3, server -> client: which neighbours' inputs arrived (send their self-mask seed
    share, and your own) and which did not (send their mask-key share). Disjoint by design.

    ``included`` is every client whose masked input the server holds (U3), i.e. whose input
    the unmasked sum would contain: a client checks it against its own neighbourhood and
    refuses to unmask a sum over fewer inputs than its minimum (distributed DP's m)."""

    KIND = Kind.UNMASK_REQUEST
    STAGE = Stage.UNMASKING
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    included: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ids(self.survivors, "survivors")
        _check_ids(self.dropped, "dropped")
        _check_ids(self.included, "included")

    def to_bytes(self) -> bytes:
        return self._header() + _ids(self.survivors) + _ids(self.dropped) + _ids(self.included)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        round_, cid, r = cls._open(data)
        survivors = r.ids()
        dropped = r.ids()
        included = r.ids()
        r.end()
        return cls(round_, cid, survivors, dropped, included)


@dataclass(frozen=True)
class UnmaskShares(_Base):
    """Stage 3, client -> server: the shares the UnmaskRequest asked for, by owner."""

    KIND = Kind.UNMASK_SHARES
    STAGE = Stage.UNMASKING
    seed_shares: tuple[Entry, ...]
    key_shares: tuple[Entry, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_entries(self.seed_shares, SHARE_BYTES, "self-mask seed share")
        _check_entries(self.key_shares, SHARE_BYTES, "mask key share")
        if {i for i, _ in self.seed_shares} & {i for i, _ in self.key_shares}:
            raise MalformedMessageError("both shares of one client's secrets in one message")

    def to_bytes(self) -> bytes:
        return self._header() + _entries(self.seed_shares) + _entries(self.key_shares)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        round_, cid, r = cls._open(data)
        seed = r.entries(SHARE_BYTES)
        key = r.entries(SHARE_BYTES)
        r.end()
        return cls(round_, cid, seed, key)


Message = (
    AdvertiseKeys
    | NeighbourKeys
    | ShareKeys
    | ForwardedShares
    | ShareReceipt
    | MaskingRequest
    | MaskedInput
    | UnmaskRequest
    | UnmaskShares
)

_CLASSES: dict[Kind, type[Message]] = {
    Kind.ADVERTISE_KEYS: AdvertiseKeys,
    Kind.NEIGHBOUR_KEYS: NeighbourKeys,
    Kind.SHARE_KEYS: ShareKeys,
    Kind.FORWARDED_SHARES: ForwardedShares,
    Kind.SHARE_RECEIPT: ShareReceipt,
    Kind.MASKING_REQUEST: MaskingRequest,
    Kind.MASKED_INPUT: MaskedInput,
    Kind.UNMASK_REQUEST: UnmaskRequest,
    Kind.UNMASK_SHARES: UnmaskShares,
}
_STAGE_OF: dict[Kind, Stage] = {k: c.STAGE for k, c in _CLASSES.items()}


def decode(data: bytes) -> Message:
    """Parse any message, dispatching on the kind byte of the header."""
    _, _, kind = _parse_header(data)
    return _CLASSES[kind].from_bytes(data)
