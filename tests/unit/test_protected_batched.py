"""The batched client steps of the simulation give exactly what one client at a time gives."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest
import torch

from fedrec.privacy.ldp import LocalDP
from fedrec.privacy.secagg.masks import MaskStream
from fedrec.privacy.secagg.quantize import Quantizer
from fedrec.privacy.upload import ClientProtection, UploadVector, client_generator
from fedrec.simulation import protected
from fedrec.simulation.protected import Chunk, PlainSum, VectorSink

N_ITEMS = 11
VECTOR = UploadVector(
    item_names=("item_emb", "item_bias"),
    item_row_shapes=((3,), ()),
    frozen_items=(),
    n_items=N_ITEMS,
    dense_names=("global_bias", "w"),
    dense_shapes=((), (2, 2)),
    count_scale=0.5,
)
NO_COUNTS = dataclasses.replace(VECTOR, count_scale=None)
"""Rows averaged over a public denominator: no per-row count segment."""
WEIGHTED = dataclasses.replace(VECTOR, weights=(("global_bias", 0.0), ("item_bias", 3.0)))
"""DP clip weights: item biases count three times, the global bias not at all."""


def _chunk(n: int, seed: int = 0) -> Chunk:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, n)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    ids = np.concatenate(
        [rng.choice(N_ITEMS, s, replace=False) for s in sizes] + [np.zeros(0, np.int64)]
    )
    rows = int(offsets[-1])
    return Chunk(
        clients=np.arange(100, 100 + n, dtype=np.int64),
        item_ids=torch.from_numpy(ids.astype(np.int64)),
        item_offsets=offsets,
        item_deltas={"item_emb": torch.randn(rows, 3) * 2, "item_bias": torch.randn(rows)},
        dense_deltas={"global_bias": torch.randn(n), "w": torch.randn(n, 2, 2)},
        num_examples=np.full(n, 3, dtype=np.int64),
        losses=torch.ones(n),
    )


@pytest.mark.parametrize(
    "vector", [VECTOR, NO_COUNTS, WEIGHTED], ids=["counts", "no-counts", "weighted"]
)
def test_build_many_rows_are_exactly_the_per_client_vectors(vector: UploadVector) -> None:
    chunk = _chunk(9)
    n = len(chunk.clients)
    scales = [1.0, 0.3, 1 / 7, 0.999, 1.0, 2.5, 0.1, 1.0, 0.77]
    belows = [0.5, -0.5, 0.0, 0.5, 0.5, -0.5, 0.5, 0.0, -0.5]
    sizes = np.diff(chunk.item_offsets)
    many = vector.build_many(
        chunk.item_ids,
        sizes,
        chunk.item_deltas,
        chunk.dense_deltas,
        scales=scales,
        belows=belows,
    )
    buffer = torch.full((n, vector.dim), float("nan"), dtype=torch.float64)
    reused = vector.build_many(
        chunk.item_ids,
        sizes,
        chunk.item_deltas,
        chunk.dense_deltas,
        scales=scales,
        belows=belows,
        out=buffer,
    )
    assert reused.data_ptr() == buffer.data_ptr()
    for k in range(n):
        ids, rows, dense = chunk.rows_of(k)
        one = vector.build(ids, rows, dense, scale=scales[k], below=belows[k])
        assert torch.equal(many[k], one)
        assert torch.equal(reused[k], one)


@pytest.mark.parametrize("vector", [VECTOR, NO_COUNTS], ids=["counts", "no-counts"])
def test_split_gives_back_what_build_put_in(vector: UploadVector) -> None:
    chunk = _chunk(4, seed=2)
    total = torch.zeros(vector.dim, dtype=torch.float64)
    for k in range(4):
        ids, rows, dense = chunk.rows_of(k)
        vec = vector.build(ids, rows, dense, scale=0.5, below=0.5)
        assert math.isclose(
            float(vec[: vector.payload_dim].norm()), 0.5 * vector.payload_norm(rows, dense)
        )
        total += vec
    got = vector.split(total)
    emb = torch.zeros(N_ITEMS, 3, dtype=torch.float64)
    touched = torch.zeros(N_ITEMS, dtype=torch.float64)
    for k in range(4):
        ids, rows, _ = chunk.rows_of(k)
        emb[ids] += 0.5 * rows["item_emb"].to(torch.float64)
        touched[ids] += 0.5
    assert torch.allclose(got.item_sum["item_emb"], emb.float())
    assert torch.allclose(got.dense_sum["w"], 0.5 * chunk.dense_deltas["w"].sum(0))
    assert got.clients == 4.0 and got.below_centred == 2.0
    if vector.count_scale is None:
        assert vector.payload_dim == VECTOR.payload_dim - N_ITEMS
        assert torch.equal(got.counts, torch.zeros(N_ITEMS))
    else:
        assert torch.allclose(got.counts, touched.float())


def test_build_many_checks_its_arguments() -> None:
    chunk = _chunk(3)
    sizes = np.diff(chunk.item_offsets)
    args = (chunk.item_ids, sizes, chunk.item_deltas, chunk.dense_deltas)
    with pytest.raises(ValueError, match="scales"):
        VECTOR.build_many(*args, scales=[1.0], belows=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="out must be"):
        VECTOR.build_many(*args, scales=[1.0] * 3, belows=[0.0] * 3, out=torch.zeros(3, VECTOR.dim))
    with pytest.raises(ValueError, match="rows"):
        VECTOR.build_many(
            chunk.item_ids, sizes + 1, chunk.item_deltas, chunk.dense_deltas,
            scales=[1.0] * 3, belows=[0.0] * 3,
        )  # fmt: skip


@pytest.mark.parametrize(
    "protection",
    [
        ClientProtection(clip=1.0, noise_std=0.3, count_noise_std=0.2),
        ClientProtection(ldp=LocalDP("gaussian", 2.0, 1e-5, 1.0)),
        ClientProtection(),
    ],
)
def test_noise_into_a_scratch_buffer_draws_the_same_noise(protection: ClientProtection) -> None:
    base = torch.randn(VECTOR.dim, dtype=torch.float64)
    scratch = torch.full((VECTOR.payload_dim + 5,), float("nan"), dtype=torch.float64)
    a = protection.noise(base.clone(), VECTOR.payload_dim, client_generator(3, 2, 7))
    b = protection.noise(
        base.clone(), VECTOR.payload_dim, client_generator(3, 2, 7), scratch=scratch
    )
    assert torch.equal(a, b)


def _reference_quantize(q: Quantizer, x: np.ndarray, key: bytes) -> np.ndarray:
    """The quantizer as first written: fresh arrays at every step."""
    y = np.clip(x, -q.clip, q.clip)
    y *= q.scale
    y += np.multiply(MaskStream(x.size, np.uint32).fill(key), 2.0**-32)
    np.floor(y, out=y)
    return y.astype(np.int32 if q.bits == 32 else np.int64).view(q.dtype)


@pytest.mark.parametrize("bits", [32, 64])
def test_quantize_with_reused_buffers_matches_the_reference_and_returns_fresh_arrays(
    bits: int,
) -> None:
    q = Quantizer.for_clients(50, clip=1.0, bits=bits)
    rng = np.random.default_rng(4)
    xs = [rng.normal(0, 0.7, 1000) for _ in range(3)] + [rng.normal(0, 0.7, 17)]
    keys = [os.urandom(32) for _ in xs]
    out = [q.quantize(x, k) for x, k in zip(xs, keys, strict=True)]
    for x, k, got in zip(xs, keys, out, strict=True):  # earlier outputs were not overwritten
        assert np.array_equal(got, _reference_quantize(q, x, k))


def test_mask_apply_adds_and_subtracts_each_keystream() -> None:
    stream = MaskStream(257, np.uint32)
    plus, minus = [os.urandom(32) for _ in range(3)], [os.urandom(32) for _ in range(2)]
    start = np.arange(257, dtype=np.uint32) * np.uint32(7919)
    expected = start.copy()
    for k in plus:
        stream.add(expected, k)
    for k in minus:
        stream.subtract(expected, k)
    got = start.copy()
    stream.apply(got, plus=plus, minus=minus)
    assert np.array_equal(got, expected)


def test_vector_sink_in_batches_equals_one_client_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(protected, "BUILD_BATCH", 3)  # 7 clients: batches of 3, 3 and 1
    chunk = _chunk(7, seed=1)
    protection = ClientProtection(clip=1.5, noise_std=0.1, count_noise_std=0.05)
    clients = chunk.clients
    backend = PlainSum(VECTOR.dim)
    sink = VectorSink(
        None,  # type: ignore[arg-type]  # only finish() reads the layout
        {},
        N_ITEMS,
        clients,
        np.zeros(0, np.int64),
        vector=VECTOR,
        protection=protection,
        backend=backend,
        seed=5,
        round_=3,
    )
    sink.add(chunk)
    expected = torch.zeros(VECTOR.dim, dtype=torch.float64)
    for k, c in enumerate(clients):
        ids, rows, dense = chunk.rows_of(k)
        norm = VECTOR.payload_norm(rows, dense)
        vec = VECTOR.build(
            ids, rows, dense, scale=protection.scale(norm), below=protection.below(norm)
        )
        vec = protection.noise(vec, VECTOR.payload_dim, client_generator(5, 3, int(c)))
        expected += vec.to(torch.float32).to(torch.float64)
    total, included = backend.total(np.zeros(0, np.int64))
    assert torch.equal(total, expected)
    assert included.tolist() == clients.tolist()


def test_weighted_vectors_clip_the_weighted_norm_and_read_back_unweighted() -> None:
    chunk = _chunk(1, seed=3)
    ids, rows, dense = chunk.rows_of(0)
    vec = WEIGHTED.build(ids, rows, dense)
    payload = vec[: WEIGHTED.payload_dim]
    assert WEIGHTED.payload_norm(rows, dense) == pytest.approx(float(payload.norm()))
    assert WEIGHTED.payload_norm(rows, dense) != pytest.approx(VECTOR.payload_norm(rows, dense))
    back = WEIGHTED.split(vec)
    torch.testing.assert_close(back.item_sum["item_bias"][ids], rows["item_bias"])
    torch.testing.assert_close(back.item_sum["item_emb"][ids], rows["item_emb"])
    torch.testing.assert_close(back.dense_sum["w"], dense["w"])
    assert float(back.dense_sum["global_bias"]) == 0.0
