"""Who the clients are: one per user (cross-device) or groups of users (cross-silo)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedrec.data.table import Interactions
from fedrec.federated.plan import ClientGroup, concat_ranges

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Partition:
    """Client ``c`` holds users ``members[offsets[c]:offsets[c+1]]`` (its private rows)."""

    offsets: IntArray
    members: IntArray
    kind: str

    @property
    def n_clients(self) -> int:
        return len(self.offsets) - 1

    def users_of(self, client: int) -> IntArray:
        return self.members[self.offsets[client] : self.offsets[client + 1]]

    def members_of(self, clients: IntArray) -> IntArray:
        """The users of the given clients, client after client."""
        return self.members[concat_ranges(self.offsets[clients], self.offsets[clients + 1])]

    def client_of_user(self, n_users: int) -> tuple[IntArray, IntArray]:
        """(client, local row) of every user; -1 for users in no client."""
        client = np.full(n_users, -1, dtype=np.int64)
        local = np.full(n_users, -1, dtype=np.int64)
        sizes = np.diff(self.offsets)
        client[self.members] = np.repeat(np.arange(self.n_clients, dtype=np.int64), sizes)
        local[self.members] = np.arange(len(self.members), dtype=np.int64) - np.repeat(
            self.offsets[:-1], sizes
        )
        return client, local


def _from_labels(labels: IntArray, kind: str) -> Partition:
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels)
    keep = counts > 0
    offsets = np.concatenate([[0], np.cumsum(counts[keep])]).astype(np.int64)
    return Partition(offsets=offsets, members=order.astype(np.int64), kind=kind)


def cross_device(users: IntArray) -> Partition:
    """One client per user that has training data."""
    members = np.unique(users).astype(np.int64)
    return Partition(
        offsets=np.arange(len(members) + 1, dtype=np.int64), members=members, kind="cross-device"
    )


def random_silos(users: IntArray, n_silos: int, seed: int) -> Partition:
    """Users with training data dealt at random into ``n_silos`` organisations."""
    present = np.unique(users)
    if not 1 <= n_silos <= len(present):
        raise ValueError(f"n_silos must be in [1, {len(present)}], got {n_silos}")
    perm = np.random.default_rng(seed).permutation(len(present))
    labels = np.full(int(present.max()) + 1, -1, dtype=np.int64)
    labels[present[perm]] = np.arange(len(present)) % n_silos
    part = _from_labels(labels[present], "cross-silo")
    return Partition(offsets=part.offsets, members=present[part.members], kind="cross-silo")


def by_column(users: IntArray, values: npt.NDArray[np.generic]) -> Partition:
    """Silos by a user feature column (``values[u]`` for every user id u), e.g. zip prefix."""
    present = np.unique(users)
    _, labels = np.unique(np.asarray(values)[present], return_inverse=True)
    part = _from_labels(labels.astype(np.int64), "cross-silo")
    return Partition(offsets=part.offsets, members=present[part.members], kind="cross-silo")


def client_groups(train: Interactions, partition: Partition) -> ClientGroup:
    """Every client's training rows, concatenated client after client (file order inside)."""
    client, local = partition.client_of_user(train.n_users)
    row_client = client[train.users]
    if (row_client < 0).any():
        raise ValueError("some training rows belong to users outside the partition")
    order = np.argsort(row_client, kind="stable")
    counts = np.bincount(row_client, minlength=partition.n_clients)
    return ClientGroup(
        client_ids=np.arange(partition.n_clients, dtype=np.int64),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        users=local[train.users[order]],
        items=train.items[order].astype(np.int64),
        ratings=train.ratings[order].astype(np.float32),
        n_local_users=np.diff(partition.offsets),
        n_items=train.n_items,
    )
