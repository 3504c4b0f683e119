"""Key agreement and share encryption: X25519, then HKDF-SHA256 bound to the round's session id
and the two client ids, then AES-256-GCM, whose tag makes any tampering with a share visible."""

from __future__ import annotations

import hashlib
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "TAG_BYTES",
    "agree",
    "decrypt",
    "encrypt",
    "encryption_keys",
    "mask_key",
    "new_keypair",
    "private_bytes",
    "public_bytes",
    "seed_commitment",
    "share_aad",
]

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_ENC_LABEL = b"fedrec/secagg/v1/share-encryption"
_MASK_LABEL = b"fedrec/secagg/v1/pairwise-mask"


def new_keypair() -> tuple[X25519PrivateKey, bytes]:
    private = X25519PrivateKey.generate()
    return private, public_bytes(private)


def public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(private: X25519PrivateKey) -> bytes:
    return private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def agree(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """Raw X25519 secret; raises ValueError for a malformed or low-order peer key."""
    if len(peer_public) != KEY_BYTES:
        raise ValueError("X25519 public keys are 32 bytes")
    return private.exchange(X25519PublicKey.from_public_bytes(peer_public))


def _hkdf(secret: bytes, session_id: bytes, info: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, salt=session_id, info=info).derive(secret)


def encryption_keys(
    private: X25519PrivateKey, peer_public: bytes, session_id: bytes, me: int, peer: int
) -> tuple[bytes, bytes]:
    """(key for me -> peer, key for peer -> me): one key per direction, so each AES-GCM key
    encrypts a single message and both ends derive the same pair."""
    lo, hi = min(me, peer), max(me, peer)
    okm = _hkdf(
        agree(private, peer_public), session_id, _ENC_LABEL + struct.pack(">QQ", lo, hi), 64
    )
    up, down = okm[:32], okm[32:]  # up: lo -> hi
    return (up, down) if me == lo else (down, up)


def mask_key(
    private: X25519PrivateKey, peer_public: bytes, session_id: bytes, a: int, b: int
) -> bytes:
    """AES key of the pairwise mask between clients ``a`` and ``b`` (symmetric in a, b)."""
    lo, hi = min(a, b), max(a, b)
    info = _MASK_LABEL + struct.pack(">QQ", lo, hi)
    return _hkdf(agree(private, peer_public), session_id, info, KEY_BYTES)


def seed_commitment(session_id: bytes, client_id: int, seed: bytes) -> bytes:
    """SHA-256 commitment to a self-mask seed, bound to the round and the client."""
    return hashlib.sha256(
        b"fedrec/secagg/v1/seed-commitment" + session_id + struct.pack(">Q", client_id) + seed
    ).digest()


def share_aad(session_id: bytes, round_: int, src: int, dst: int) -> bytes:
    """Binds a ciphertext to its round, sender and recipient: a share replayed into another
    round or re-addressed by the server fails authentication."""
    return session_id + struct.pack(">QQQ", round_, src, dst)


def encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, blob: bytes, aad: bytes) -> bytes | None:
    """Plaintext, or None when the ciphertext, nonce or tag was altered."""
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        return None
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        return None
