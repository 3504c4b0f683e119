"""Two ways to execute a round's clients in one process, with identical results.

``SequentialEngine`` calls :func:`fedrec.federated.client.client_update` once per client:
the reference, and exactly what a deployed client runs. ``BatchedEngine`` calls
:func:`fedrec.federated.client.train_clients` on large chunks of clients, which vmaps the
same per-client gradient over all of them, so thousands of clients cost about one pass
over their data.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from fedrec.federated.aggregate import Accumulator
from fedrec.federated.client import LocalTrainer, client_update, train_clients
from fedrec.federated.encoding import INDEX_BYTES, encode_decode, tensor_bytes
from fedrec.federated.partition import Partition
from fedrec.federated.plan import ClientGroup
from fedrec.federated.server import RoundOutcome

Params = dict[str, Tensor]
IntArray = npt.NDArray[np.int64]


class PrivateStore:
    """Every simulated client's private rows, as full user-indexed tables.

    This is client-side state: in a deployment each row lives on its own device. The
    simulator keeps them together only so it can evaluate and checkpoint cheaply.
    """

    def __init__(self, tables: Params) -> None:
        self.tables = {k: v.detach().clone() for k, v in tables.items()}

    def rows(self, users: Tensor) -> Params:
        return {k: v[users] for k, v in self.tables.items()}

    def write(self, users: Tensor, values: Params) -> None:
        for k, v in values.items():
            self.tables[k][users] = v.detach()


@dataclass(frozen=True)
class EngineSettings:
    seed: int
    weighting: str = "examples"
    """``examples``: a client's update weighs its number of training interactions; ``uniform``."""
    encoding: str = "float32"

    def __post_init__(self) -> None:
        if self.weighting not in ("examples", "uniform"):
            raise ValueError(f"weighting must be 'examples' or 'uniform', got {self.weighting!r}")


def _encode(x: Tensor, encoding: str, per_client_scalar: bool = False) -> Tensor:
    """The received value of an upload; a stacked scalar parameter keeps one scale per client."""
    if per_client_scalar:
        return encode_decode(x.reshape(-1, 1), encoding).reshape(x.shape)
    return encode_decode(x, encoding)


class _Engine:
    def __init__(
        self,
        trainer: LocalTrainer,
        group: ClientGroup,
        partition: Partition,
        store: PrivateStore,
        settings: EngineSettings,
    ) -> None:
        if not np.array_equal(group.client_ids, np.arange(len(group))):
            raise ValueError("the client group must hold clients 0..n-1 in order")
        self.trainer = trainer
        self.layout = trainer.layout
        self.group = group
        self.partition = partition
        self.store = store
        self.settings = settings

    def _weights(self, num_examples: IntArray) -> Tensor:
        if self.settings.weighting == "uniform":
            return torch.ones(len(num_examples), dtype=torch.float32)
        return torch.from_numpy(num_examples.astype(np.float32))

    def _accumulate(
        self,
        acc: Accumulator,
        item_ids: Tensor,
        item_offsets: IntArray,
        item_deltas: Params,
        dense_deltas: Params,
        num_examples: IntArray,
        losses: Tensor,
    ) -> None:
        """Add a batch of client uploads (flat item rows, stacked dense deltas), as encoded."""
        enc = self.settings.encoding
        w = self._weights(num_examples)
        row_w = torch.repeat_interleave(w, torch.from_numpy(np.diff(item_offsets)))
        acc.add_items(item_ids, {n: _encode(d, enc) for n, d in item_deltas.items()}, row_w)
        acc.add_dense({n: _encode(d, enc, d.dim() == 1) for n, d in dense_deltas.items()}, w)
        acc.add_clients(w, int(num_examples.sum()), float(losses.nansum()))

    def _bytes(self, shared: Params, n_slots: IntArray) -> tuple[IntArray, IntArray]:
        """(upload, download) bytes per client: sparse item rows with ids, dense tensors whole;
        the broadcast is the full shared model in float32."""
        enc = self.settings.encoding
        per_row = sum(
            tensor_bytes(tuple(shared[n].shape[1:]) or (1,), enc) for n in self.layout.item_rows
        )
        dense = sum(tensor_bytes(tuple(shared[n].shape), enc) for n in self.layout.dense)
        up = (n_slots * (per_row + INDEX_BYTES) + dense).astype(np.int64)
        full = sum(tensor_bytes(tuple(v.shape), "float32") for v in shared.values())
        return up, np.full(len(n_slots), full, dtype=np.int64)


class SequentialEngine(_Engine):
    """One client at a time through :func:`client_update`: the reference implementation."""

    def run(self, clients: IntArray, shared: Params, round_: int) -> RoundOutcome:
        acc = Accumulator.zeros(self.layout, shared, self.group.n_items)
        slots = np.zeros(len(clients), dtype=np.int64)
        for pos, c in enumerate(clients):
            users = torch.from_numpy(self.partition.users_of(int(c)))
            upd = client_update(
                self.trainer,
                shared,
                self.store.rows(users),
                self.group.select(np.array([c])),
                seed=self.settings.seed,
                round_=round_,
            )
            self.store.write(users, upd.private)
            slots[pos] = len(upd.item_ids)
            self._accumulate(
                acc,
                upd.item_ids,
                np.array([0, slots[pos]]),
                upd.item_deltas,
                {n: d[None] for n, d in upd.dense_deltas.items()},
                np.array([upd.num_examples]),
                torch.tensor([upd.loss]),
            )
        up, down = self._bytes(shared, slots)
        return RoundOutcome(accumulator=acc, bytes_up=up, bytes_down=down)


class BatchedEngine(_Engine):
    """Large chunks of clients trained together by :func:`train_clients`.

    ``chunk_samples`` bounds the local samples per chunk, which bounds memory (each chunk holds
    its clients' item rows and samples); it does not change results.
    """

    def __init__(
        self,
        trainer: LocalTrainer,
        group: ClientGroup,
        partition: Partition,
        store: PrivateStore,
        settings: EngineSettings,
        chunk_samples: int = 2_000_000,
    ) -> None:
        super().__init__(trainer, group, partition, store, settings)
        if chunk_samples < 1:
            raise ValueError(f"chunk_samples must be >= 1, got {chunk_samples}")
        self.chunk_samples = chunk_samples

    def _chunks(self, clients: IntArray) -> list[IntArray]:
        s = self.trainer.s
        per = 1 if s.loss == "mse" else (s.negatives if s.loss == "bpr" else 1 + s.negatives)
        est = np.maximum(self.group.sizes[clients] * per * s.epochs, 1)
        ends = np.cumsum(est)
        cut = np.searchsorted(
            ends, np.arange(1, int(ends[-1] // self.chunk_samples) + 1) * self.chunk_samples
        )
        bounds = np.unique(np.concatenate([[0], cut + 1, [len(clients)]]).clip(0, len(clients)))
        return [clients[a:b] for a, b in itertools.pairwise(bounds) if b > a]

    def run(self, clients: IntArray, shared: Params, round_: int) -> RoundOutcome:
        acc = Accumulator.zeros(self.layout, shared, self.group.n_items)
        slots = np.zeros(len(clients), dtype=np.int64)
        start = 0
        for chunk in self._chunks(clients):
            users = torch.from_numpy(self.partition.members_of(chunk))
            upd = train_clients(
                self.trainer,
                shared,
                self.store.rows(users),
                self.group.select(chunk),
                seed=self.settings.seed,
                round_=round_,
            )
            self.store.write(users, upd.private)
            slots[start : start + len(chunk)] = upd.n_slots
            start += len(chunk)
            self._accumulate(
                acc,
                upd.item_ids,
                upd.item_offsets,
                upd.item_deltas,
                upd.dense_deltas,
                upd.num_examples,
                upd.losses,
            )
        up, down = self._bytes(shared, slots)
        return RoundOutcome(accumulator=acc, bytes_up=up, bytes_down=down)
