"""Where simulated uploads go: straight into the server's sums, or through the protections a
run configures (clipping and noise on each client, secure aggregation, homomorphic encryption).

A *sink* receives a chunk of clients' updates at a time (whatever the engine) and, at the end
of the round, hands the server an :class:`~fedrec.federated.aggregate.Accumulator` of sums,
plus the bytes each client uploaded. Every client-side step is keyed by the client's id, so
the batched and the sequential engine produce the same result. The client-side code is
:class:`fedrec.privacy.upload.ClientProtection`, the same a deployed client runs.

An optional *observer* sees exactly what the server receives from each client (sparse rows,
a plain dense vector) or, under secure aggregation or encryption, only the sum; the privacy
audit attacks that view.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from fedrec.config import RunConfig
from fedrec.federated.aggregate import Accumulator
from fedrec.federated.configure import make_server_privacy as make_server_privacy
from fedrec.federated.configure import secagg_config as secagg_of
from fedrec.federated.encoding import INDEX_BYTES, encode_decode, tensor_bytes
from fedrec.federated.layout import ParamLayout
from fedrec.federated.server import SECAGG_ABORTED, RoundAbortedError
from fedrec.privacy.server import ServerPrivacy
from fedrec.privacy.upload import ClientProtection, UploadVector, client_generator

Params = dict[str, Tensor]
IntArray = npt.NDArray[np.int64]


@dataclass
class Observation:
    """What the server received from one client (None fields: not visible to it)."""

    client: int
    item_ids: Tensor | None = None
    rows: Params | None = None
    dense: Params | None = None
    vector: Tensor | None = None


@dataclass
class AggregateObservation:
    """What the server learns under secure aggregation or encryption: the sum, and who."""

    clients: IntArray
    vector: Tensor
    layout: UploadVector


class Observer(Protocol):
    def client(self, obs: Observation) -> None: ...

    def aggregate(self, obs: AggregateObservation) -> None: ...


@dataclass
class Chunk:
    """A chunk of clients' uploads in the engines' flat form."""

    clients: IntArray
    """Global client ids, in the order of the flat arrays."""
    item_ids: Tensor
    item_offsets: IntArray
    item_deltas: Params
    dense_deltas: Params
    """Stacked per client on dim 0."""
    num_examples: IntArray
    losses: Tensor

    def rows_of(self, k: int) -> tuple[Tensor, Params, Params]:
        a, b = int(self.item_offsets[k]), int(self.item_offsets[k + 1])
        return (
            self.item_ids[a:b],
            {n: v[a:b] for n, v in self.item_deltas.items()},
            {n: v[k] for n, v in self.dense_deltas.items()},
        )


class Sink:
    """Collects one round's uploads; ``finish`` returns (sums, bytes up per client)."""

    def add(self, chunk: Chunk) -> None:
        raise NotImplementedError

    def finish(self) -> tuple[Accumulator, IntArray]:
        raise NotImplementedError


@dataclass
class _Bytes:
    order: dict[int, int]
    up: IntArray

    @staticmethod
    def of(clients: IntArray) -> _Bytes:
        return _Bytes({int(c): i for i, c in enumerate(clients)}, np.zeros(len(clients), np.int64))

    def set(self, client: int, n: int) -> None:
        self.up[self.order[client]] = n


class SparseSink(Sink):
    """Plain uploads: the rows each client touched, with their ids, as encoded.

    With user-level DP (``protection.clip``) each client's upload is scaled to the clip before
    it leaves; the server adds the noise (:class:`fedrec.privacy.server.ServerPrivacy`).
    """

    def __init__(
        self,
        layout: ParamLayout,
        shared: Params,
        n_items: int,
        clients: IntArray,
        *,
        encoding: str,
        uniform: bool,
        protection: ClientProtection | None = None,
        vector: UploadVector | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.acc = Accumulator.zeros(layout, shared, n_items)
        self.layout = layout
        self.encoding = encoding
        self.uniform = uniform
        self.protection = protection
        self.vector = vector
        self.observer = observer
        self.bytes = _Bytes.of(clients)
        lay = layout
        self.per_row = sum(
            tensor_bytes(tuple(shared[n].shape[1:]) or (1,), encoding)
            for n in lay.trained(lay.item_rows)
        )
        self.dense_bytes = sum(
            tensor_bytes(tuple(shared[n].shape), encoding) for n in lay.trained(lay.dense)
        )

    def add(self, chunk: Chunk) -> None:
        enc = self.encoding
        n_clients = len(chunk.clients)
        if self.uniform:
            w = torch.ones(n_clients, dtype=torch.float32)
        else:
            w = torch.from_numpy(chunk.num_examples.astype(np.float32))
        below = 0.0
        items = {n: _encode(d, enc) for n, d in chunk.item_deltas.items()}
        dense = {n: _encode(d, enc, d.dim() == 1) for n, d in chunk.dense_deltas.items()}
        clip = None if self.protection is None else self.protection.clip
        if clip is not None:
            assert self.vector is not None and self.protection is not None
            # The clip bounds what is summed, so it is measured on the encoded upload:
            # rounding can lift a row clipped before encoding back above C.
            scales = torch.ones(n_clients, dtype=torch.float64)
            enc_chunk = replace(chunk, item_deltas=items, dense_deltas=dense)
            for k in range(n_clients):
                _, rows, dense_k = enc_chunk.rows_of(k)
                norm = self.vector.payload_norm(rows, dense_k)
                scales[k] = self.protection.scale(norm)
                below += self.protection.below(norm)
            w = (w.to(torch.float64) * scales).to(torch.float32)
        slots = torch.from_numpy(np.diff(chunk.item_offsets))
        row_w = torch.repeat_interleave(w, slots)
        self.acc.add_items(chunk.item_ids, items, row_w)
        self.acc.add_dense(dense, w)
        self.acc.add_clients(w, int(chunk.num_examples.sum()), float(chunk.losses.nansum()))
        self.acc.below_centred += below
        for k, c in enumerate(chunk.clients):
            self.bytes.set(int(c), int(slots[k]) * (self.per_row + INDEX_BYTES) + self.dense_bytes)
        if self.observer is not None:
            for k, c in enumerate(chunk.clients):
                a, b = int(chunk.item_offsets[k]), int(chunk.item_offsets[k + 1])
                self.observer.client(
                    Observation(
                        client=int(c),
                        item_ids=chunk.item_ids[a:b],
                        rows={n: v[a:b] for n, v in items.items()},
                        dense={n: v[k] for n, v in dense.items()},
                    )
                )

    def finish(self) -> tuple[Accumulator, IntArray]:
        return self.acc, self.bytes.up


def _encode(x: Tensor, encoding: str, per_client_scalar: bool = False) -> Tensor:
    """The received value of an upload; a stacked scalar parameter keeps one scale per client."""
    if per_client_scalar:
        return encode_decode(x.reshape(-1, 1), encoding).reshape(x.shape)
    return encode_decode(x, encoding)


class SumBackend(Protocol):
    """How fixed-shape client vectors become one sum the server can read."""

    def submit(self, client: int, vector: Tensor) -> int:
        """Upload one client's vector; returns the bytes it sent."""
        ...

    def total(self, dropped: IntArray) -> tuple[Tensor, IntArray]:
        """(sum, clients whose input it covers)."""
        ...

    @property
    def visible(self) -> bool:
        """Whether the server sees each client's vector (no secure aggregation)."""
        ...


@dataclass
class PlainSum:
    """Vectors sent in the clear (float32 on the wire), e.g. local DP without SecAgg."""

    dim: int
    acc: Tensor = field(init=False)
    included: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.acc = torch.zeros(self.dim, dtype=torch.float64)

    def submit(self, client: int, vector: Tensor) -> int:
        self.acc += vector.to(torch.float32).to(torch.float64)
        self.included.append(client)
        return 4 * self.dim

    def total(self, dropped: IntArray) -> tuple[Tensor, IntArray]:
        return self.acc, np.array(sorted(self.included), dtype=np.int64)

    @property
    def visible(self) -> bool:
        return True


class SecAggSum:
    """SecAgg+: every client runs the real protocol; the server unmasks only the sum."""

    def __init__(
        self, clients: IntArray, dim: int, config: Any, round_: int, seed: int, min_inputs: int = 1
    ) -> None:
        """``min_inputs``: distributed DP's m; the session aborts before unmasking a sum over
        fewer masked inputs (server and clients both check)."""
        from fedrec.privacy.secagg import SecAggSession

        self.session = SecAggSession(
            [int(c) for c in clients], dim, config, round_, seed, min_inputs=min_inputs
        )

    def submit(self, client: int, vector: Tensor) -> int:
        return int(self.session.submit(client, vector.numpy()))

    def total(self, dropped: IntArray) -> tuple[Tensor, IntArray]:
        from fedrec.privacy.secagg import SecAggAbort

        try:
            result = self.session.finish([int(c) for c in dropped])
        except SecAggAbort as err:
            raise RoundAbortedError(f"{SECAGG_ABORTED}: {err}") from err
        return (
            torch.from_numpy(np.asarray(result.total, dtype=np.float64)),
            np.array(sorted(result.included), dtype=np.int64),
        )

    def traffic(self) -> dict[int, int]:
        """Bytes each client uploaded over all stages (keys, shares, input, unmasking)."""
        return {c: t.up for c, t in self.session.bytes_per_client.items()}

    @property
    def visible(self) -> bool:
        return False


class HESum:
    """CKKS: clients encrypt under the key holder's public key; the server adds ciphertexts."""

    def __init__(self, key_holder: Any, dim: int) -> None:
        from fedrec.privacy.he import HEAggregator, HEClient

        public = key_holder.public_context()
        self.key_holder = key_holder
        self.client = HEClient(public)
        self.aggregator = HEAggregator(public)
        self.dim = dim
        self.included: list[int] = []

    def submit(self, client: int, vector: Tensor) -> int:
        enc = self.client.encrypt(vector.numpy())
        self.aggregator.add(enc)
        self.included.append(client)
        return int(enc.nbytes)

    def total(self, dropped: IntArray) -> tuple[Tensor, IntArray]:
        out = self.key_holder.decrypt_sum(self.aggregator.total())
        return (
            torch.from_numpy(np.asarray(out, dtype=np.float64)),
            np.array(sorted(self.included), dtype=np.int64),
        )

    @property
    def visible(self) -> bool:
        return False


BUILD_BATCH = 32
"""Clients whose vectors VectorSink builds together (32 x dim float64: 31 MB on ML-1M)."""


class VectorSink(Sink):
    """Protected uploads: each client's fixed-shape vector, clipped and noised on the client,
    summed by ``backend``; the server reads the sum back into an Accumulator."""

    def __init__(
        self,
        layout: ParamLayout,
        shared: Params,
        n_items: int,
        clients: IntArray,
        dropped: IntArray,
        *,
        vector: UploadVector,
        protection: ClientProtection,
        backend: SumBackend,
        seed: int,
        round_: int,
        observer: Observer | None = None,
    ) -> None:
        self.layout, self.shared, self.n_items = layout, shared, n_items
        self.vector = vector
        self.protection = protection
        self.backend = backend
        self.seed, self.round = seed, round_
        self.observer = observer
        self.dropped = dropped
        self.bytes = _Bytes.of(clients)
        self.examples = 0
        self.loss_sum = 0.0
        self._build: Tensor | None = None
        self._scratch: Tensor | None = None

    def add(self, chunk: Chunk) -> None:
        """Each client's steps, as :class:`ClientProtection` defines them: clip (its own norm),
        build, noise (its own stream), submit. Vectors are built ``BUILD_BATCH`` clients at a
        time into one reused buffer (each row exactly what ``UploadVector.build`` gives), and
        a backend consumes each before the next is built."""
        pd = self.vector.payload_dim
        offsets = chunk.item_offsets
        for a in range(0, len(chunk.clients), BUILD_BATCH):
            b = min(a + BUILD_BATCH, len(chunk.clients))
            scales, belows = [], []
            for k in range(a, b):
                _, rows, dense = chunk.rows_of(k)
                norm = self.vector.payload_norm(rows, dense)
                scales.append(self.protection.scale(norm))
                belows.append(self.protection.below(norm))
            lo, hi = int(offsets[a]), int(offsets[b])
            vecs = self.vector.build_many(
                chunk.item_ids[lo:hi],
                np.diff(offsets[a : b + 1]),
                {n: v[lo:hi] for n, v in chunk.item_deltas.items()},
                {n: v[a:b] for n, v in chunk.dense_deltas.items()},
                scales=scales,
                belows=belows,
                out=self._buffers(b - a),
            )
            for j, k in enumerate(range(a, b)):
                c = int(chunk.clients[k])
                gen = client_generator(self.seed, self.round, c)
                vec = self.protection.noise(vecs[j], pd, gen, scratch=self._scratch)
                self.bytes.set(c, self.backend.submit(c, vec))
                if self.observer is not None and self.backend.visible:
                    self.observer.client(Observation(client=c, vector=vec.to(torch.float32)))
        self.examples += int(chunk.num_examples.sum())
        self.loss_sum += float(chunk.losses.nansum())

    def _buffers(self, rows: int) -> Tensor:
        """The first ``rows`` rows of this round's build buffer (allocated on first use)."""
        if self._build is None:
            self._build = torch.empty(BUILD_BATCH, self.vector.dim, dtype=torch.float64)
            self._scratch = torch.empty(self.vector.payload_dim, dtype=torch.float64)
        return self._build[:rows]

    def finish(self) -> tuple[Accumulator, IntArray]:
        total, included = self.backend.total(self.dropped)
        if isinstance(self.backend, SecAggSum):
            for c, up in self.backend.traffic().items():
                if c in self.bytes.order:
                    self.bytes.set(c, up)
        if self.observer is not None and not self.backend.visible:
            self.observer.aggregate(AggregateObservation(included, total, self.vector))
        acc = self.vector.split(total).accumulator(
            self.layout,
            self.shared,
            self.n_items,
            clients=len(included),
            examples=self.examples,
            loss_sum=self.loss_sum,
        )
        return acc, self.bytes.up


SinkFactory = Callable[[IntArray, IntArray, Params, int], Sink]
"""(uploading clients, clients that drop after key set-up, shared, round) -> a fresh sink."""


def make_sinks(
    cfg: RunConfig,
    layout: ParamLayout,
    shared: Params,
    n_items: int,
    privacy: ServerPrivacy | None,
    observer: Observer | None = None,
) -> SinkFactory | None:
    """The sink factory a run's ``[privacy]`` section asks for (None: plain sparse uploads)."""
    priv, fed = cfg.privacy, cfg.federated
    if not priv.any and observer is None:
        return None
    vector = UploadVector.of(layout, shared, n_items, cfg.upload_count_scale, cfg.upload_weights)
    uniform = fed.weighting == "uniform"
    key_holder = None
    if priv.he.enabled:
        from fedrec.privacy.he import HEKeyHolder

        key_holder = HEKeyHolder(priv.he.poly_modulus_degree)
    secagg_config = secagg_of(cfg) if priv.secagg.enabled else None

    distributed = privacy is not None and privacy.dp is not None and privacy.dp.distributed
    min_inputs = privacy.min_survivors() if privacy is not None and distributed else 1

    def protection() -> ClientProtection:
        return privacy.client_protection() if privacy is not None else ClientProtection()

    def factory(clients: IntArray, dropped: IntArray, shared_now: Params, round_: int) -> Sink:
        if not priv.dense_uploads:
            return SparseSink(
                layout,
                shared_now,
                n_items,
                clients,
                encoding=fed.encoding,
                uniform=uniform,
                protection=protection(),
                vector=vector,
                observer=observer,
            )
        backend: SumBackend
        if secagg_config is not None:
            everyone = np.union1d(clients, dropped)
            backend = SecAggSum(
                everyone, vector.dim, secagg_config, round_, cfg.seed, min_inputs=min_inputs
            )
        elif key_holder is not None:
            backend = HESum(key_holder, vector.dim)
        else:
            backend = PlainSum(vector.dim)
        return VectorSink(
            layout,
            shared_now,
            n_items,
            clients,
            dropped,
            vector=vector,
            protection=protection(),
            backend=backend,
            seed=cfg.seed,
            round_=round_,
            observer=observer,
        )

    return factory
