"""SecAgg building blocks: Shamir sharing, quantization, the CSPRNG masks, the graph, the wire
format."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.privacy.secagg import shamir
from fedrec.privacy.secagg.config import RoundParams, SecAggConfig
from fedrec.privacy.secagg.errors import (
    MalformedMessageError,
    SecAggConfigError,
    SecAggInputError,
    StageError,
)
from fedrec.privacy.secagg.graph import neighbour_graph, valid_neighbours
from fedrec.privacy.secagg.keys import decrypt, encrypt, encryption_keys, mask_key, new_keypair
from fedrec.privacy.secagg.masks import MaskStream, keystream
from fedrec.privacy.secagg.messages import (
    CIPHERTEXT_BYTES,
    HEADER_BYTES,
    SHARE_BYTES,
    AdvertiseKeys,
    ForwardedShares,
    MaskedInput,
    MaskingRequest,
    NeighbourKeys,
    PeerKeys,
    ShareKeys,
    ShareReceipt,
    UnmaskRequest,
    UnmaskShares,
    decode,
)
from fedrec.privacy.secagg.quantize import Quantizer

P = shamir.PRIME


def _secrets(m: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(m, 32), dtype=np.uint8)


# Shamir -------------------------------------------------------------------------------------
def test_encode_decode_round_trip_and_rejects_garbage() -> None:
    rng = np.random.default_rng(0)
    sec = _secrets(5, rng)
    limbs = shamir.encode_secrets(sec)
    assert limbs.shape == (5, shamir.limbs_for(32)) and limbs.max() < 2**30
    np.testing.assert_array_equal(shamir.decode_secrets(limbs, 32), sec)
    bad = limbs.copy()
    bad[0, 0] = 2**30  # not a 30-bit limb
    with pytest.raises(ValueError, match="30 bits"):
        shamir.decode_secrets(bad, 32)
    bad = limbs.copy()
    bad[0, -1] |= 1 << 29  # beyond the 256 secret bits
    with pytest.raises(ValueError, match="padding"):
        shamir.decode_secrets(bad, 32)


@settings(max_examples=20, deadline=None)
@given(
    holders=st.integers(2, 25),
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_t_shares_reconstruct_and_t_minus_1_do_not(
    holders: int, data: st.DataObject, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    t = data.draw(st.integers(2, holders))
    xs = np.sort(rng.choice(np.arange(1, 10_000), size=holders, replace=False)).astype(np.uint64)
    sec = _secrets(3, rng)
    limbs = shamir.encode_secrets(sec)
    shares = shamir.split(limbs, xs, t)
    pick = np.sort(rng.choice(holders, size=t, replace=False))
    got = shamir.combine(np.tile(xs[pick], (3, 1)), shares[:, pick, :])
    np.testing.assert_array_equal(shamir.decode_secrets(got, 32), sec)
    # t - 1 shares interpolate to something else (with overwhelming probability).
    few = pick[:-1]
    if few.size:
        wrong = shamir.combine(np.tile(xs[few], (3, 1)), shares[:, few, :])
        assert not np.array_equal(wrong, limbs)


@settings(max_examples=15, deadline=None)
@given(t=st.integers(2, 8), seed=st.integers(0, 2**32 - 1))
def test_t_minus_1_shares_are_consistent_with_every_secret(t: int, seed: int) -> None:
    """Information-theoretic hiding: for t - 1 shares and ANY candidate secret there is a
    degree-(t-1) polynomial through both, so the shares rule nothing out."""
    rng = np.random.default_rng(seed)
    limbs = shamir.encode_secrets(_secrets(1, rng))
    xs = np.arange(1, t + 1, dtype=np.uint64)
    shares = shamir.split(limbs, xs, t)[0]  # (t, L)
    known_x, known = xs[: t - 1], shares[: t - 1]
    x_new = np.uint64(t + 5)
    for candidate in (np.zeros_like(limbs[0]), limbs[0], (limbs[0] + 12345) % P):
        # Lagrange through (0, candidate) and the t - 1 known points, evaluated at x_new.
        pts_x = np.concatenate([[0], known_x]).astype(np.uint64)
        pts_y = np.vstack([candidate, known])
        w = _lagrange_weights_at(pts_x, int(x_new))
        y_new = np.zeros_like(candidate)
        for wi, yi in zip(w, pts_y, strict=True):
            y_new = (y_new + np.uint64(wi) * yi) % np.uint64(P)
        completed = np.vstack([known, y_new])[None]
        rebuilt = shamir.combine(np.concatenate([known_x, [x_new]])[None], completed)
        np.testing.assert_array_equal(rebuilt[0], candidate)


def _lagrange_weights_at(xs: np.ndarray, x: int) -> list[int]:
    out = []
    for i, xi in enumerate(xs.tolist()):
        num, den = 1, 1
        for j, xj in enumerate(xs.tolist()):
            if j != i:
                num = num * (x - xj) % P
                den = den * (xi - xj) % P
        out.append(num * pow(den, P - 2, P) % P)
    return out


def test_single_share_is_uniform_whatever_the_secret() -> None:
    """With t = 2 one share is secret + a*x for uniform a: its distribution must not depend on
    the secret (chi-square on 16 buckets, fixed seed, loose bound)."""
    draws = 4000
    randbytes = np.random.default_rng(7).bytes  # seeded stand-in for os.urandom
    for value in (0, P - 1):
        limbs = np.full((draws, 1), value, dtype=np.uint64)
        s = shamir.split(limbs, [3, 4], 2, randbytes)[:, 0, 0]
        counts = np.bincount((s * 16 // P).astype(np.int64), minlength=16)
        chi2 = float(((counts - draws / 16) ** 2 / (draws / 16)).sum())
        assert chi2 < 50, chi2  # 15 dof: P(chi2 > 50) ~ 1e-5


def test_split_rejects_bad_parameters() -> None:
    limbs = shamir.encode_secrets(np.zeros((1, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(limbs, [1, 2], 3)
    with pytest.raises(ValueError, match="distinct"):
        shamir.split(limbs, [1, 1, 2], 2)
    with pytest.raises(ValueError, match="distinct"):
        shamir.split(limbs, [0, 1, 2], 2)
    with pytest.raises(ValueError, match="GF"):
        shamir.share_from_bytes(np.array([P], dtype="<u4").tobytes())


# Masks --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_masks_are_the_aes_ctr_keystream_and_differ_per_key(dtype: type) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    count = 1001
    width = np.dtype(dtype).itemsize
    stream = MaskStream(count, dtype)
    m1 = stream.fill(k1).copy()
    m2 = stream.fill(k2).copy()
    direct = (
        Cipher(algorithms.AES(k1), modes.CTR(bytes(16))).encryptor().update(bytes(count * width))
    )
    np.testing.assert_array_equal(m1, np.frombuffer(direct, dtype=dtype))
    assert keystream(k1, count * width) == direct
    assert np.mean(m1 == m2) < 0.01
    assert not np.array_equal(m1, np.random.RandomState(0).randint(0, 2**31, count))


def test_pairwise_masks_cancel_exactly_in_the_ring() -> None:
    n, count = 9, 257
    graph = neighbour_graph(n, 4, b"g")
    sks = [new_keypair() for _ in range(n)]
    stream = MaskStream(count, np.uint32)
    total = np.zeros(count, dtype=np.uint32)
    one = np.zeros(count, dtype=np.uint32)
    for u in range(n):
        for v in graph[u].tolist():
            key = mask_key(sks[u][0], sks[v][1], b"s" * 32, u, v)
            (stream.add if u < v else stream.subtract)(total, key)
            if u == 0:
                (stream.add if u < v else stream.subtract)(one, key)
    assert one.any() is not True  # one client's masks are far from zero ...
    np.testing.assert_array_equal(total, 0)  # ... but all of them cancel exactly


def test_key_agreement_is_symmetric_and_gcm_detects_tampering() -> None:
    (a, a_pub), (b, b_pub) = new_keypair(), new_keypair()
    sid = os.urandom(32)
    a_send, a_recv = encryption_keys(a, b_pub, sid, 1, 2)
    b_send, b_recv = encryption_keys(b, a_pub, sid, 2, 1)
    assert a_send == b_recv and a_recv == b_send and a_send != a_recv
    assert mask_key(a, b_pub, sid, 1, 2) == mask_key(b, a_pub, sid, 2, 1)
    assert mask_key(a, b_pub, sid, 1, 2) != mask_key(a, b_pub, os.urandom(32), 1, 2)
    blob = encrypt(a_send, b"share", b"aad")
    assert decrypt(b_recv, blob, b"aad") == b"share"
    for i in range(len(blob)):
        flipped = bytearray(blob)
        flipped[i] ^= 0x01
        assert decrypt(b_recv, bytes(flipped), b"aad") is None
    assert decrypt(b_recv, blob, b"other aad") is None


# Quantization -------------------------------------------------------------------------------
def test_stochastic_rounding_is_unbiased() -> None:
    q = Quantizer.for_clients(10, clip=1.0, bits=32, scale=10.0)  # step 0.1: coarse on purpose
    values = np.array([0.123, -0.456, 0.05, -0.999, 0.7, 0.0])
    reps = 40_000
    x = np.repeat(values, reps)
    out = q.quantize(x, bytes(range(32))).view(np.int32).astype(np.float64).reshape(-1, reps)
    frac = values * 10 - np.floor(values * 10)
    sigma = np.sqrt(frac * (1 - frac) / reps) + 1e-12
    err = out.mean(axis=1) - values * 10
    assert np.all(np.abs(err) <= 5 * sigma + 1e-9), err
    # Each value rounds only to its two neighbouring levels.
    assert np.all(np.abs(out - (values * 10)[:, None]) < 1)
    # Round-to-nearest would be biased here (0.123 -> 1.0, not 1.23): the test can tell.
    assert abs(out[0].mean() - 1.0) > 0.2


def test_quantizer_clips_and_never_wraps_at_the_extremes() -> None:
    n = 1000
    q = Quantizer.for_clients(n, clip=2.0, bits=32)
    assert q.levels * n <= 2**31 - 1
    for sign in (1.0, -1.0):
        one = q.quantize(np.array([sign * 5.0, sign * 2.0]), os.urandom(32))  # 5.0 clipped
        total = (one.astype(np.uint64) * n).astype(np.uint32)  # n copies, wrapped
        np.testing.assert_allclose(q.dequantize(total), [sign * 2.0 * n] * 2, rtol=1e-12)
    with pytest.raises(SecAggInputError, match="NaN"):
        q.quantize(np.array([0.0, np.nan]), os.urandom(32))
    with pytest.raises(SecAggInputError, match="1-D"):
        q.quantize(np.zeros((2, 2)), os.urandom(32))


def test_overflowing_configuration_raises() -> None:
    with pytest.raises(SecAggConfigError, match="overflow"):
        Quantizer.for_clients(1000, clip=1.0, bits=32, scale=2.0**22)
    ok = Quantizer.for_clients(1000, clip=1.0, bits=64, scale=2.0**22)
    assert ok.levels == 2**22
    with pytest.raises(SecAggConfigError, match="overflow"):
        RoundParams.create(range(600), 4, SecAggConfig(scale=2.0**22), 0, 0)
    with pytest.raises(SecAggConfigError, match="2\\^52"):
        Quantizer.for_clients(2, clip=1.0, bits=64, scale=2.0**60)
    with pytest.raises(SecAggConfigError, match="bits"):
        SecAggConfig(bits=16)
    with pytest.raises(SecAggConfigError, match="threshold"):
        SecAggConfig(threshold=0.0)
    with pytest.raises(SecAggConfigError, match="clip"):
        SecAggConfig(clip=math.inf)


# Graph --------------------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 300), k=st.integers(1, 40), seed=st.binary(min_size=1, max_size=8))
def test_graph_is_k_regular_symmetric_and_seeded(n: int, k: int, seed: bytes) -> None:
    g = neighbour_graph(n, k, seed)
    kk = valid_neighbours(n, k)
    assert g.shape == (n, kk)
    assert kk == n - 1 or kk % 2 == 0
    assert kk >= min(k, n - 1)
    edges = {(u, v) for u in range(n) for v in g[u].tolist()}
    assert all((v, u) in edges for u, v in edges)  # symmetric
    assert all(u != v for u, v in edges)
    assert all(len(set(row)) == kk for row in g.tolist())
    np.testing.assert_array_equal(g, neighbour_graph(n, k, seed))


def test_graph_depends_on_seed_and_degrees_are_even_or_complete() -> None:
    a, b = neighbour_graph(200, 8, b"a"), neighbour_graph(200, 8, b"b")
    assert not np.array_equal(a, b)
    assert valid_neighbours(5, 8) == 4  # complete graph
    assert valid_neighbours(100, 7) == 8


# Messages -----------------------------------------------------------------------------------
def _examples() -> list[object]:
    key = bytes(range(32))
    ct = bytes(CIPHERTEXT_BYTES)
    share = bytes(SHARE_BYTES)
    return [
        AdvertiseKeys(3, 7, key, key[::-1], bytes(32)),
        NeighbourKeys(3, 7, (PeerKeys(1, key, key), PeerKeys(9, key, key))),
        ShareKeys(3, 7, ((1, ct), (9, ct)), (4,)),
        ForwardedShares(3, 7, ((1, ct),)),
        ShareReceipt(3, 7, (9,)),
        MaskingRequest(3, 7, (1, 9)),
        MaskedInput(3, 7, 32, np.arange(5, dtype=np.uint32)),
        MaskedInput(3, 7, 64, np.arange(5, dtype=np.uint64) * 2**40),
        UnmaskRequest(3, 7, (1, 7), (9,)),
        UnmaskShares(3, 7, ((1, share), (7, share)), ((9, share),)),
    ]


@pytest.mark.parametrize("msg", _examples(), ids=lambda m: type(m).__name__)
def test_messages_round_trip_and_reject_malformed_bytes(msg: object) -> None:
    data = msg.to_bytes()  # type: ignore[attr-defined]
    cls = type(msg)
    again = cls.from_bytes(data)  # type: ignore[attr-defined]
    assert again == msg and decode(data) == msg
    with pytest.raises(MalformedMessageError, match=r"trailing|bytes"):
        cls.from_bytes(data + b"\x00")  # type: ignore[attr-defined]
    with pytest.raises(MalformedMessageError):
        cls.from_bytes(data[:-1])  # type: ignore[attr-defined]
    with pytest.raises(MalformedMessageError, match="magic"):
        cls.from_bytes(b"XX" + data[2:])  # type: ignore[attr-defined]
    with pytest.raises(MalformedMessageError, match="version"):
        cls.from_bytes(data[:2] + b"\x09" + data[3:])  # type: ignore[attr-defined]
    with pytest.raises(MalformedMessageError, match="kind"):
        decode(data[:3] + b"\x63" + data[4:])
    other = AdvertiseKeys if cls is not AdvertiseKeys else MaskingRequest
    with pytest.raises(StageError, match="expected"):
        other.from_bytes(data)


def test_message_fields_are_validated() -> None:
    with pytest.raises(MalformedMessageError, match="32 bytes"):
        AdvertiseKeys(0, 1, b"short", bytes(32), bytes(32))
    with pytest.raises(MalformedMessageError, match="duplicate"):
        MaskingRequest(0, 1, (2, 2))
    with pytest.raises(MalformedMessageError, match="expected"):
        ForwardedShares(0, 1, ((2, b"x" * 10),))
    with pytest.raises(MalformedMessageError, match="both shares"):
        UnmaskShares(0, 1, ((2, bytes(SHARE_BYTES)),), ((2, bytes(SHARE_BYTES)),))
    with pytest.raises(MalformedMessageError, match="outside"):
        MaskingRequest(0, -1, ())
    with pytest.raises(MalformedMessageError, match="1-D"):
        MaskedInput(0, 1, 32, np.zeros(3, dtype=np.uint64))
    # A count field that promises more entries than the message holds.
    data = bytearray(MaskingRequest(0, 1, (2, 3)).to_bytes())
    data[HEADER_BYTES : HEADER_BYTES + 4] = (10**6).to_bytes(4, "big")
    with pytest.raises(MalformedMessageError, match="overruns"):
        MaskingRequest.from_bytes(bytes(data))
