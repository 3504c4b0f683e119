"""CKKS aggregation: sums match plaintext, chunking, who can decrypt, wire format, errors."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import tenseal as ts  # the dev install includes the extra (make: '.[dev,he]'); never skip

from fedrec.privacy.he import (
    MAX_ABS_VALUE,
    EncryptedVector,
    HEAggregator,
    HEClient,
    HEKeyHolder,
    decrypt,
    he_sum,
)

# Measured: max |error| ~1e-8 for one ciphertext, ~8e-8 for a sum of 100 (N=8192, scale 2^40).
# 1e-6 leaves a margin of >10x for the small sums here while any scale/encoding bug (errors of
# order 1e-3 and up) still fails.
ATOL = 1e-6
SLOTS = 4096
DIM = 2 * SLOTS + 123  # three ciphertexts, the last one partly filled


@pytest.fixture(scope="module")
def holder() -> HEKeyHolder:
    return HEKeyHolder()


@pytest.fixture(scope="module")
def client(holder: HEKeyHolder) -> HEClient:
    return HEClient(holder.public_context())


def test_sum_of_encrypted_vectors_matches_plaintext(holder: HEKeyHolder, client: HEClient) -> None:
    rng = np.random.default_rng(0)
    xs = rng.normal(0.0, 1.0, size=(5, DIM))
    agg = HEAggregator(holder.public_context())
    for x in xs:
        agg.add(client.encrypt(x))
    assert agg.count == 5
    total = agg.total()
    assert total.n_summed == 5 and total.dim == DIM
    out = holder.decrypt_sum(total)
    assert out.shape == (DIM,) and out.dtype == np.float64
    np.testing.assert_allclose(out, xs.sum(axis=0), rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    ("dim", "sizes"),
    [(1, [1]), (SLOTS, [SLOTS]), (2 * SLOTS, [SLOTS, SLOTS]), (DIM, [SLOTS, SLOTS, 123])],
)
def test_chunking(holder: HEKeyHolder, client: HEClient, dim: int, sizes: list[int]) -> None:
    x = np.linspace(-3.0, 3.0, dim)
    enc = client.encrypt(x)
    assert client.slot_count == SLOTS
    assert enc.n_ciphertexts == len(sizes)
    assert [c.size() for c in enc.chunks] == sizes
    np.testing.assert_allclose(holder.decrypt_sum(enc), x, rtol=0, atol=ATOL)


def test_public_context_cannot_decrypt(holder: HEKeyHolder, client: HEClient) -> None:
    public = holder.public_context()
    assert not ts.context_from(public).has_secret_key()
    enc = client.encrypt(np.ones(10))
    with pytest.raises(PermissionError, match="no secret key"):
        decrypt(enc, client.context)
    agg = HEAggregator(public)
    agg.add(enc)
    with pytest.raises(PermissionError, match="no secret key"):
        decrypt(agg.total(), agg.context)
    # And not merely our wrapper: TenSEAL itself has no key to decrypt with.
    with pytest.raises(ValueError, match="secret"):
        enc.chunks[0].decrypt()
    np.testing.assert_allclose(decrypt(enc, holder.context), np.ones(10), atol=ATOL)


def test_parties_refuse_a_context_with_the_secret_key(holder: HEKeyHolder) -> None:
    private = holder.context.serialize(save_secret_key=True)
    with pytest.raises(ValueError, match="secret key"):
        HEClient(private)
    with pytest.raises(ValueError, match="secret key"):
        HEAggregator(private)
    with pytest.raises(ValueError, match="cannot load the public context"):
        HEClient(b"not a context")


def test_serialization_round_trip(holder: HEKeyHolder, client: HEClient) -> None:
    x = np.random.default_rng(1).normal(size=DIM)
    enc = client.encrypt(x)
    blob = enc.to_bytes()
    assert enc.nbytes == len(blob)
    # Measured ~83 bytes per slot (zstd-compressed by SEAL), paid for every slot of a ciphertext.
    assert 75 * SLOTS * 3 < len(blob) < 90 * SLOTS * 3
    agg = HEAggregator(holder.public_context())
    back = EncryptedVector.from_bytes(blob, agg.context)
    assert (back.dim, back.n_summed, back.n_ciphertexts) == (DIM, 1, 3)
    assert back.to_bytes() == blob
    agg.add(back)
    agg.add(blob)  # the aggregator also takes the raw upload
    total = agg.total()
    round_tripped = EncryptedVector.from_bytes(total.to_bytes(), holder.context)
    assert round_tripped.n_summed == 2
    np.testing.assert_allclose(holder.decrypt_sum(round_tripped), 2 * x, rtol=0, atol=ATOL)


def test_malformed_bytes(holder: HEKeyHolder, client: HEClient) -> None:
    blob = client.encrypt(np.arange(5.0)).to_bytes()
    ctx = holder.context
    with pytest.raises(ValueError, match="magic"):
        EncryptedVector.from_bytes(b"XXXX" + blob[4:], ctx)
    with pytest.raises(ValueError, match="truncated in its header"):
        EncryptedVector.from_bytes(blob[:10], ctx)
    with pytest.raises(ValueError, match="truncated inside ciphertext 0"):
        EncryptedVector.from_bytes(blob[:-1], ctx)
    with pytest.raises(ValueError, match="trailing bytes"):
        EncryptedVector.from_bytes(blob + b"\x00", ctx)


def test_total_is_a_snapshot(holder: HEKeyHolder, client: HEClient) -> None:
    x = np.arange(6.0)
    enc = client.encrypt(x)
    agg = HEAggregator(holder.public_context())
    agg.add(enc)
    first = agg.total()
    agg.add(enc)
    second = agg.total()
    agg.add(enc)
    np.testing.assert_allclose(holder.decrypt_sum(first), x, atol=ATOL)
    np.testing.assert_allclose(holder.decrypt_sum(second), 2 * x, atol=ATOL)
    np.testing.assert_allclose(holder.decrypt_sum(agg.total()), 3 * x, atol=ATOL)
    # The client's own ciphertext was shared, never added into.
    np.testing.assert_allclose(holder.decrypt_sum(enc), x, atol=ATOL)


def test_aggregation_errors(holder: HEKeyHolder, client: HEClient) -> None:
    agg = HEAggregator(holder.public_context())
    with pytest.raises(ValueError, match="empty sum"):
        agg.total()
    agg.add(client.encrypt(np.zeros(10)))
    with pytest.raises(ValueError, match=r"dimension mismatch.*dim 10.*dim 11"):
        agg.add(client.encrypt(np.zeros(11)))
    with pytest.raises(TypeError, match="EncryptedVector or bytes"):
        agg.add(np.zeros(10))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty sum"):
        he_sum([], key_holder=holder)


def test_chunking_mismatch_between_contexts(holder: HEKeyHolder) -> None:
    small = HEKeyHolder(4096, (40, 20, 40), scale_bits=25)
    other = HEClient(small.public_context())
    assert other.slot_count == 2048
    agg = HEAggregator(holder.public_context())
    agg.add(HEClient(holder.public_context()).encrypt(np.zeros(SLOTS)))
    with pytest.raises(ValueError, match="chunking mismatch"):
        agg.add(other.encrypt(np.zeros(SLOTS)))


def test_encrypt_rejects_bad_input(client: HEClient) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        client.encrypt(np.array([1.0, np.nan, np.inf]))
    with pytest.raises(ValueError, match="1-D"):
        client.encrypt(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="empty"):
        client.encrypt(np.zeros(0))
    with pytest.raises(ValueError, match="exceeds the CKKS limit"):
        client.encrypt(np.array([2 * MAX_ABS_VALUE]))


def test_key_holder_parameters_and_policy(client: HEClient, holder: HEKeyHolder) -> None:
    with pytest.raises(ValueError, match="power of two"):
        HEKeyHolder(5000)
    with pytest.raises(ValueError, match="invalid CKKS parameters"):
        HEKeyHolder(4096, (60, 40, 40, 60))  # 200 bits > SEAL's 109-bit bound at N=4096
    with pytest.raises(ValueError, match="scale_bits"):
        HEKeyHolder(scale_bits=60)
    strict = HEKeyHolder(min_summands=3)
    c = HEClient(strict.public_context())
    agg = HEAggregator(strict.public_context())
    enc = c.encrypt(np.ones(4))
    with pytest.raises(PermissionError, match="sum of 1 vector"):
        strict.decrypt_sum(enc)
    for _ in range(3):
        agg.add(enc)
    np.testing.assert_allclose(strict.decrypt_sum(agg.total()), 3 * np.ones(4), atol=ATOL)


def test_he_sum_matches_plaintext_and_reports_costs(holder: HEKeyHolder) -> None:
    rng = np.random.default_rng(2)
    xs = [rng.normal(0, 0.01, size=DIM) for _ in range(4)]
    out, stats = he_sum(iter(xs), key_holder=holder)
    np.testing.assert_allclose(out, np.sum(xs, axis=0), rtol=0, atol=ATOL)
    assert (stats.n_clients, stats.dim, stats.n_ciphertexts) == (4, DIM, 3)
    assert stats.max_abs_error == pytest.approx(np.abs(out - np.sum(xs, axis=0)).max())
    assert stats.max_abs_error < ATOL
    assert stats.bytes_per_value == pytest.approx(stats.bytes_per_client / DIM)
    assert 75 * SLOTS * 3 < stats.bytes_per_client < 90 * SLOTS * 3
    assert min(stats.encrypt_s_per_client, stats.add_s, stats.decrypt_s) > 0
    assert stats.serialize_s_per_client > 0 and stats.deserialize_s > 0
    _, fast = he_sum(xs, key_holder=holder, through_bytes=False)
    assert fast.serialize_s_per_client == 0 and fast.deserialize_s == 0
    assert fast.bytes_per_client == pytest.approx(stats.bytes_per_client, rel=0.01)


def test_missing_tenseal_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tenseal", None)  # makes `import tenseal` fail
    monkeypatch.delitem(sys.modules, "fedrec.privacy.he")
    with pytest.raises(ImportError, match=r"pip install 'fedrec\[he\]'"):
        importlib.import_module("fedrec.privacy.he")
