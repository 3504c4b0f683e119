"""Two ways to execute a round's clients in one process, with identical results.

``SequentialEngine`` calls :func:`fedrec.federated.client.client_update` once per client:
the reference, and exactly what a deployed client runs. ``BatchedEngine`` calls
:func:`fedrec.federated.client.train_clients` on large chunks of clients, which takes every
client's gradient of a step in one pass, so thousands of clients cost about one pass over
their data.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from fedrec.federated.client import LocalTrainer, client_update, train_clients
from fedrec.federated.encoding import tensor_bytes
from fedrec.federated.partition import Partition
from fedrec.federated.plan import ClientGroup
from fedrec.federated.server import RoundOutcome
from fedrec.simulation.protected import Chunk, Sink, SinkFactory, SparseSink

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


class _Engine:
    def __init__(
        self,
        trainer: LocalTrainer,
        group: ClientGroup,
        partition: Partition,
        store: PrivateStore,
        settings: EngineSettings,
        sinks: SinkFactory | None = None,
    ) -> None:
        if not np.array_equal(group.client_ids, np.arange(len(group))):
            raise ValueError("the client group must hold clients 0..n-1 in order")
        self.trainer = trainer
        self.layout = trainer.layout
        self.group = group
        self.partition = partition
        self.store = store
        self.settings = settings
        self.sinks = sinks
        """Where uploads go (None: plain sparse uploads into the server's sums)."""

    def _sink(self, clients: IntArray, dropped: IntArray, shared: Params, round_: int) -> Sink:
        if self.sinks is not None:
            return self.sinks(clients, dropped, shared, round_)
        return SparseSink(
            self.layout,
            shared,
            self.group.n_items,
            clients,
            encoding=self.settings.encoding,
            uniform=self.settings.weighting == "uniform",
        )

    @staticmethod
    def _download(shared: Params, n: int) -> IntArray:
        """The broadcast: the full shared model in float32, to every participant."""
        full = sum(tensor_bytes(tuple(v.shape), "float32") for v in shared.values())
        return np.full(n, full, dtype=np.int64)


class SequentialEngine(_Engine):
    """One client at a time through :func:`client_update`: the reference implementation."""

    def run(
        self, clients: IntArray, shared: Params, round_: int, dropped: IntArray | None = None
    ) -> RoundOutcome:
        sink = self._sink(clients, _none(dropped), shared, round_)
        for c in clients:
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
            sink.add(
                Chunk(
                    clients=np.array([c], dtype=np.int64),
                    item_ids=upd.item_ids,
                    item_offsets=np.array([0, len(upd.item_ids)], dtype=np.int64),
                    item_deltas=upd.item_deltas,
                    dense_deltas={n: d[None] for n, d in upd.dense_deltas.items()},
                    num_examples=np.array([upd.num_examples], dtype=np.int64),
                    losses=torch.tensor([upd.loss]),
                )
            )
        acc, up = sink.finish()
        return RoundOutcome(
            accumulator=acc, bytes_up=up, bytes_down=self._download(shared, len(up))
        )


def _none(dropped: IntArray | None) -> IntArray:
    return np.zeros(0, dtype=np.int64) if dropped is None else dropped


class BatchedEngine(_Engine):
    """Large chunks of clients trained together by :func:`train_clients`.

    ``chunk_samples`` bounds the local samples per chunk, which bounds memory (each chunk holds
    its clients' item rows and samples). Clients are chunked largest first: a chunk runs as
    many steps as its busiest client, so grouping clients of similar size cuts the steps
    (and their fixed cost) of a round by about a third. Neither changes any client's update;
    only the order in which the server sums them.
    """

    def __init__(
        self,
        trainer: LocalTrainer,
        group: ClientGroup,
        partition: Partition,
        store: PrivateStore,
        settings: EngineSettings,
        chunk_samples: int = 2_000_000,
        sinks: SinkFactory | None = None,
    ) -> None:
        super().__init__(trainer, group, partition, store, settings, sinks)
        if chunk_samples < 1:
            raise ValueError(f"chunk_samples must be >= 1, got {chunk_samples}")
        self.chunk_samples = chunk_samples

    def _chunks(self, clients: IntArray) -> list[IntArray]:
        if len(clients) == 0:
            return []
        s = self.trainer.s
        per = 1 if s.loss == "mse" else (s.negatives if s.loss == "bpr" else 1 + s.negatives)
        clients = clients[np.argsort(-self.group.sizes[clients], kind="stable")]
        est = np.maximum(self.group.sizes[clients] * per * s.epochs, 1)
        ends = np.cumsum(est)
        cut = np.searchsorted(
            ends, np.arange(1, int(ends[-1] // self.chunk_samples) + 1) * self.chunk_samples
        )
        bounds = np.unique(np.concatenate([[0], cut + 1, [len(clients)]]).clip(0, len(clients)))
        return [clients[a:b] for a, b in itertools.pairwise(bounds) if b > a]

    def run(
        self, clients: IntArray, shared: Params, round_: int, dropped: IntArray | None = None
    ) -> RoundOutcome:
        sink = self._sink(clients, _none(dropped), shared, round_)
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
            sink.add(
                Chunk(
                    clients=chunk,
                    item_ids=upd.item_ids,
                    item_offsets=upd.item_offsets,
                    item_deltas=upd.item_deltas,
                    dense_deltas=upd.dense_deltas,
                    num_examples=upd.num_examples,
                    losses=upd.losses,
                )
            )
        acc, up = sink.finish()
        return RoundOutcome(
            accumulator=acc, bytes_up=up, bytes_down=self._download(shared, len(up))
        )
