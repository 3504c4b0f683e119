"""Additively homomorphic aggregation of client updates with CKKS (TenSEAL).

Scheme: CKKS (Cheon, Kim, Kim, Song, ASIACRYPT 2017) through TenSEAL (Benaissa et al. 2021,
arXiv:2104.03152) on Microsoft SEAL. Federated use as in e.g. Zhang et al., BatchCrypt
(USENIX ATC 2020) and Chai et al., Secure Federated Matrix Factorization (IEEE IS 2020).

Trust model
-----------
* A **key holder** (a committee, a trusted client, or a hardware enclave; never the aggregator)
  generates the keys and publishes a *public* context: encryption key and parameters, no
  secret key. :meth:`HEKeyHolder.public_context` serialises without the secret key and
  :class:`HEClient` / :class:`HEAggregator` refuse a context that holds one.
* **Clients** encrypt their update with the public context and upload ciphertexts. They must
  not collude with the key holder: a client that obtained the secret key could decrypt any
  other client's upload it intercepts.
* The **aggregator** holds only the public context; it adds ciphertexts and never decrypts.
  It sees sizes and timing of uploads, nothing about their values (IND-CPA of RLWE).
* The key holder decrypts only the **sum**. That it sees nothing else is a policy, not a
  cryptographic guarantee: a key holder that decrypts a single client's ciphertext learns that
  client's update. ``min_summands`` makes it refuse sums of fewer than that many vectors;
  the count travels with the ciphertext and is not authenticated, so it guards against
  mistakes by an honest-but-curious aggregator, not against a malicious one.
* Aggregation hides the individual update, not what the sum reveals (the privacy audit,
  ``fedrec audit``, attacks the sum); pair it with DP if the sum itself is sensitive.

Parameters and precision
------------------------
Poly modulus degree N = 8192 gives N/2 = 4096 slots per ciphertext. Coefficient modulus bit
sizes [60, 40, 40, 60] (200 bits, under SEAL's 218-bit bound for 128-bit security at
N = 8192, HomomorphicEncryption.org standard) and scale 2^40. Only additions are performed,
so ciphertexts stay at the top level (data modulus 140 bits) and the two 40-bit primes are
headroom that a later plaintext multiplication (e.g. weighting by client sample counts) can
consume. CKKS is approximate: decryption adds an *absolute* error independent of the
values' size, growing like sqrt(#summands); ``benchmarks/he.py`` measures it
(``benchmarks/results/he.md``). Per-client values are limited to
|x| <= 2^40 (:data:`MAX_ABS_VALUE`), which keeps sums of astronomically many clients below
the 2^99 wrap-around bound (q/2 / scale).

Encoding
--------
A vector is split into chunks of N/2 values, one ``ts.ckks_vector`` each: no slower than one
batched ``ts.ckks_tensor`` or TenSEAL's own multi-ciphertext ``ckks_vector``
(``benchmarks/he.py`` compares them), it avoids TenSEAL's "does not fit in a single
ciphertext" message and lets us check every chunk's size.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

try:
    import tenseal as ts
except ImportError as exc:
    raise ImportError(
        "fedrec.privacy.he needs TenSEAL for CKKS encryption: pip install 'fedrec[he]'"
    ) from exc

F64 = npt.NDArray[np.float64]

POLY_MODULUS_DEGREE = 8192
COEFF_MOD_BIT_SIZES: tuple[int, ...] = (60, 40, 40, 60)
SCALE_BITS = 40
MAX_ABS_VALUE = 2.0**40
"""Largest |value| a client may encrypt; see the module docstring."""

_MAGIC = b"FRHE\x01"
_HEADER = struct.Struct("<QQI")  # dim, n_summed, n_chunks
_LEN = struct.Struct("<Q")


def _load_public(context: bytes, n_threads: int | None, who: str) -> Any:
    """Deserialise a public context; a context with a secret key breaks the trust model."""
    if not isinstance(context, bytes | bytearray | memoryview):
        raise TypeError(f"{who} needs the serialized public context (bytes), got {type(context)}")
    try:
        ctx = (
            ts.context_from(bytes(context))
            if n_threads is None
            else ts.context_from(bytes(context), n_threads=n_threads)
        )
    except Exception as e:
        raise ValueError(f"{who}: cannot load the public context: {e}") from e
    if ctx.has_secret_key():
        raise ValueError(
            f"{who} was given a context holding the secret key; only the key holder may hold "
            "it. Pass HEKeyHolder.public_context()."
        )
    if not ctx.is_public():
        raise ValueError(f"{who}: context is not a public CKKS context")
    return ctx


def _slot_count(ctx: Any) -> int:
    """N/2 slots; read from the key's polynomial size so every party agrees on chunking."""
    n = int(ctx.seal_context().data.key_context_data().parms().poly_modulus_degree())
    return n // 2


class EncryptedVector:
    """A vector of ``dim`` values as ceil(dim / slots) CKKS ciphertexts; immutable."""

    __slots__ = ("_bytes", "_chunks", "_dim", "_n_summed")

    def __init__(self, chunks: Sequence[Any], dim: int, n_summed: int = 1) -> None:
        if not chunks:
            raise ValueError("an encrypted vector needs at least one ciphertext")
        sizes = [int(c.size()) for c in chunks]
        if sum(sizes) != dim:
            raise ValueError(f"ciphertext chunks hold {sum(sizes)} values but dim is {dim}")
        if n_summed < 1:
            raise ValueError(f"n_summed must be >= 1, got {n_summed}")
        self._chunks = tuple(chunks)
        self._dim = int(dim)
        self._n_summed = int(n_summed)
        self._bytes: bytes | None = None

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def n_summed(self) -> int:
        """How many client vectors this ciphertext is the sum of (unauthenticated metadata)."""
        return self._n_summed

    @property
    def n_ciphertexts(self) -> int:
        return len(self._chunks)

    @property
    def chunks(self) -> tuple[Any, ...]:
        """The TenSEAL ``CKKSVector`` per chunk (do not mutate)."""
        return self._chunks

    def to_bytes(self) -> bytes:
        """Wire format: magic, (dim, n_summed, n_chunks), then length-prefixed ciphertexts."""
        if self._bytes is None:
            parts = [_MAGIC, _HEADER.pack(self._dim, self._n_summed, len(self._chunks))]
            for c in self._chunks:
                blob = c.serialize()
                parts += [_LEN.pack(len(blob)), blob]
            self._bytes = b"".join(parts)
        return self._bytes

    @property
    def nbytes(self) -> int:
        """What a client uploads: the length of :meth:`to_bytes`."""
        return len(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, context: Any) -> EncryptedVector:
        """Parse :meth:`to_bytes` output; ``context`` is any party's ``.context``."""
        data = bytes(data)
        if not data.startswith(_MAGIC):
            raise ValueError("not an encrypted vector (bad magic bytes or version)")
        pos = len(_MAGIC)
        if len(data) < pos + _HEADER.size:
            raise ValueError("encrypted vector truncated in its header")
        dim, n_summed, n_chunks = _HEADER.unpack_from(data, pos)
        pos += _HEADER.size
        chunks = []
        for i in range(n_chunks):
            if len(data) < pos + _LEN.size:
                raise ValueError(f"encrypted vector truncated before ciphertext {i}")
            (n,) = _LEN.unpack_from(data, pos)
            pos += _LEN.size
            if len(data) < pos + n:
                raise ValueError(f"encrypted vector truncated inside ciphertext {i}")
            try:
                chunks.append(ts.ckks_vector_from(context, data[pos : pos + n]))
            except Exception as e:
                raise ValueError(f"ciphertext {i} does not load in this context: {e}") from e
            pos += n
        if pos != len(data):
            raise ValueError(f"{len(data) - pos} trailing bytes after the last ciphertext")
        out = cls(chunks, dim, n_summed)
        out._bytes = data
        return out

    def __repr__(self) -> str:
        return (
            f"EncryptedVector(dim={self._dim}, ciphertexts={len(self._chunks)}, "
            f"n_summed={self._n_summed})"
        )


class HEKeyHolder:
    """Generates the CKKS keys and is the only party that can decrypt (the sum)."""

    def __init__(
        self,
        poly_modulus_degree: int = POLY_MODULUS_DEGREE,
        coeff_mod_bit_sizes: Sequence[int] = COEFF_MOD_BIT_SIZES,
        scale_bits: int = SCALE_BITS,
        *,
        min_summands: int = 1,
        n_threads: int | None = None,
    ) -> None:
        n = poly_modulus_degree
        if n < 1024 or n & (n - 1):
            raise ValueError(f"poly_modulus_degree must be a power of two >= 1024, got {n}")
        bits = [int(b) for b in coeff_mod_bit_sizes]
        if len(bits) < 2:
            raise ValueError(f"coeff_mod_bit_sizes needs >= 2 primes, got {bits}")
        if not 20 <= scale_bits < bits[0]:
            # The first prime must exceed the scale, or decoded values have no integer bits.
            raise ValueError(f"scale_bits={scale_bits} must be in [20, first prime bits {bits[0]})")
        if min_summands < 1:
            raise ValueError(f"min_summands must be >= 1, got {min_summands}")
        kw = {} if n_threads is None else {"n_threads": n_threads}
        try:
            ctx = ts.context(ts.SCHEME_TYPE.CKKS, n, coeff_mod_bit_sizes=bits, **kw)
        except Exception as e:
            raise ValueError(
                f"invalid CKKS parameters N={n}, coeff_mod_bit_sizes={bits} "
                f"(SEAL's 128-bit security bound for N=8192 is 218 bits in total): {e}"
            ) from e
        ctx.global_scale = 2.0**scale_bits
        self._context = ctx
        self._secret_key = ctx.secret_key()
        self._min_summands = min_summands
        public = ctx.copy()
        public.make_context_public()
        # Addition needs neither relinearisation nor Galois (rotation) keys: 0.46 MB, not 1.9.
        self._public: bytes = public.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )

    @property
    def context(self) -> Any:
        """The private TenSEAL context (for :meth:`EncryptedVector.from_bytes`)."""
        return self._context

    @property
    def slot_count(self) -> int:
        return _slot_count(self._context)

    def public_context(self) -> bytes:
        """Serialized context without the secret key: what clients and the aggregator get."""
        return self._public

    def decrypt_sum(self, encrypted: EncryptedVector) -> F64:
        """Decrypt an aggregate; refuses sums of fewer than ``min_summands`` vectors."""
        if not isinstance(encrypted, EncryptedVector):
            raise TypeError(f"expected an EncryptedVector, got {type(encrypted).__name__}")
        if encrypted.n_summed < self._min_summands:
            raise PermissionError(
                f"refusing to decrypt a sum of {encrypted.n_summed} vector(s): this key holder "
                f"decrypts only aggregates of >= {self._min_summands}"
            )
        return decrypt(encrypted, self._context)


def decrypt(encrypted: EncryptedVector, context: Any) -> F64:
    """Decrypt with ``context``'s secret key; a public context raises ``PermissionError``."""
    if not context.has_secret_key():
        raise PermissionError(
            "this context has no secret key (it is a public context): only the key holder "
            "can decrypt"
        )
    sk = context.secret_key()
    parts = [np.asarray(c.decrypt(sk), dtype=np.float64) for c in encrypted.chunks]
    out = np.concatenate(parts)
    if out.shape != (encrypted.dim,):
        raise ValueError(f"decrypted {out.size} values, expected dim {encrypted.dim}")
    return out


class HEClient:
    """Encrypts updates with the public context; holds no secret key, so cannot decrypt."""

    def __init__(self, public_context: bytes, *, n_threads: int | None = None) -> None:
        self._context = _load_public(public_context, n_threads, "HEClient")
        self._slots = _slot_count(self._context)

    @property
    def context(self) -> Any:
        return self._context

    @property
    def slot_count(self) -> int:
        return self._slots

    def encrypt(self, vector: npt.ArrayLike) -> EncryptedVector:
        x = np.asarray(vector, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"encrypt expects a 1-D vector, got shape {x.shape}")
        if x.size == 0:
            raise ValueError("cannot encrypt an empty vector")
        if not np.isfinite(x).all():
            raise ValueError(f"vector has {int((~np.isfinite(x)).sum())} non-finite values")
        peak = float(np.abs(x).max())
        if peak > MAX_ABS_VALUE:
            raise ValueError(
                f"|value| up to {peak:.3g} exceeds the CKKS limit {MAX_ABS_VALUE:.3g} "
                "(rescale the update before encrypting)"
            )
        s = self._slots
        chunks = [ts.ckks_vector(self._context, x[i : i + s]) for i in range(0, x.size, s)]
        return EncryptedVector(chunks, x.size)


class HEAggregator:
    """Running sum of ciphertexts in O(dim) memory; holds only the public context."""

    def __init__(self, public_context: bytes, *, n_threads: int | None = None) -> None:
        self._context = _load_public(public_context, n_threads, "HEAggregator")
        self._sum: list[Any] | None = None
        self._owned = False  # True once the ciphertexts in _sum are ours to add into in place
        self._dim = 0
        self._count = 0

    @property
    def context(self) -> Any:
        return self._context

    @property
    def count(self) -> int:
        """How many client vectors have been added."""
        return self._count

    def add(self, encrypted: EncryptedVector | bytes) -> None:
        """Add one upload (an :class:`EncryptedVector` or its bytes) to the running sum."""
        if isinstance(encrypted, bytes | bytearray | memoryview):
            encrypted = EncryptedVector.from_bytes(bytes(encrypted), self._context)
        if not isinstance(encrypted, EncryptedVector):
            raise TypeError(f"expected an EncryptedVector or bytes, got {type(encrypted)}")
        if self._sum is None:
            # Share the upload's ciphertexts (EncryptedVector is immutable) instead of copying:
            # TenSEAL's copy() costs ~25 ms per ciphertext, 6x an encryption of the same size.
            self._sum, self._dim, self._owned = list(encrypted.chunks), encrypted.dim, False
        else:
            if encrypted.dim != self._dim:
                raise ValueError(
                    f"dimension mismatch: the running sum has dim {self._dim}, "
                    f"this upload has dim {encrypted.dim}"
                )
            acc = self._sum
            sizes = [int(c.size()) for c in encrypted.chunks]
            if sizes != [int(a.size()) for a in acc]:
                raise ValueError(
                    f"chunking mismatch: upload has ciphertexts of {sizes[:3]}... values, the "
                    "running sum was built with another slot count (different CKKS context?)"
                )
            # Validated before any addition. All chunks of one upload share their parameters,
            # so an incompatible upload fails on ciphertext 0, before the sum changes.
            for i, c in enumerate(encrypted.chunks):
                try:
                    if self._owned:
                        acc[i].add_(c)
                    else:  # copy-on-write: the first add out of place gives us our own sum
                        acc[i] = acc[i] + c
                except Exception as e:
                    raise ValueError(
                        f"ciphertext {i} cannot be added (different CKKS parameters or scale?): {e}"
                    ) from e
            self._owned = True
        self._count += encrypted.n_summed

    def total(self) -> EncryptedVector:
        """The encrypted sum so far; later adds do not change the returned vector."""
        if self._sum is None:
            raise ValueError("empty sum: no encrypted vector was added to the aggregator")
        self._owned = False  # the returned vector shares our ciphertexts: next add copies
        return EncryptedVector(list(self._sum), self._dim, self._count)


@dataclass(frozen=True)
class HEStats:
    """Costs of one encrypted aggregation (seconds are wall-clock on this machine)."""

    n_clients: int
    dim: int
    n_ciphertexts: int
    """Ciphertexts per client vector: ceil(dim / slots)."""
    encrypt_s_per_client: float
    serialize_s_per_client: float
    """Client side, to bytes (0 when ``through_bytes`` is False)."""
    deserialize_s: float
    """Aggregator side, total over clients (0 when ``through_bytes`` is False)."""
    add_s: float
    """Aggregator's homomorphic additions, total over clients."""
    decrypt_s: float
    bytes_per_client: float
    bytes_per_value: float
    max_abs_error: float
    """Largest |HE sum - float64 plaintext sum| over the vector: the CKKS approximation."""

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def he_sum(
    vectors: Iterable[npt.ArrayLike],
    *,
    key_holder: HEKeyHolder | None = None,
    through_bytes: bool = True,
    n_threads: int | None = None,
) -> tuple[F64, HEStats]:
    """Sum client vectors the way the protocol does, for the simulator: every vector is really
    encrypted under the public context, (by default) serialized and parsed as an upload, added
    under encryption, and only the sum is decrypted by the key holder.

    Vectors are consumed one at a time, so memory stays O(dim) for any number of clients. The
    clients share one :class:`HEClient` (encryption is identical for every holder of the
    public context); a fresh :class:`HEKeyHolder` is made unless one is given.
    """
    holder = key_holder if key_holder is not None else HEKeyHolder(n_threads=n_threads)
    public = holder.public_context()
    client = HEClient(public, n_threads=n_threads)
    agg = HEAggregator(public, n_threads=n_threads)
    enc_s = ser_s = deser_s = add_s = 0.0
    total_bytes = 0
    plain: F64 | None = None
    n = 0
    for v in vectors:
        x = np.asarray(v, dtype=np.float64)
        t0 = time.perf_counter()
        enc = client.encrypt(x)
        t1 = time.perf_counter()
        enc_s += t1 - t0
        if through_bytes:
            blob = enc.to_bytes()
            t2 = time.perf_counter()
            upload: EncryptedVector = EncryptedVector.from_bytes(blob, agg.context)
            t3 = time.perf_counter()
            ser_s += t2 - t1
            deser_s += t3 - t2
            total_bytes += len(blob)
        else:
            upload = enc
            if n == 0:
                total_bytes = enc.nbytes  # size is fixed by dim; measured on the first upload
        t4 = time.perf_counter()
        agg.add(upload)
        add_s += time.perf_counter() - t4
        plain = x.copy() if plain is None else plain + x
        n += 1
    if plain is None:
        raise ValueError("he_sum needs at least one vector (empty sum)")
    t5 = time.perf_counter()
    out = holder.decrypt_sum(agg.total())
    decrypt_s = time.perf_counter() - t5
    bytes_per_client = total_bytes / n if through_bytes else float(total_bytes)
    stats = HEStats(
        n_clients=n,
        dim=int(plain.size),
        n_ciphertexts=-(-int(plain.size) // client.slot_count),
        encrypt_s_per_client=enc_s / n,
        serialize_s_per_client=ser_s / n,
        deserialize_s=deser_s,
        add_s=add_s,
        decrypt_s=decrypt_s,
        bytes_per_client=bytes_per_client,
        bytes_per_value=bytes_per_client / plain.size,
        max_abs_error=float(np.abs(out - plain).max()),
    )
    return out, stats
