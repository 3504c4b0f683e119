"""What each client trains on in one round: its samples in step order and its local item set.

Computed for a whole group of clients at once (arrays concatenated client after client), and
a group of one is exactly what a single client computes for itself: every random draw comes
from :mod:`fedrec.federated.rng` keyed by the client's own id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedrec.federated import rng

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


def concat_ranges(starts: IntArray, ends: IntArray) -> IntArray:
    """Concatenation of ``arange(s, e)`` for each pair, without a Python loop."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    out: IntArray = (np.repeat(starts, lengths) + np.arange(total) - offsets).astype(np.int64)
    return out


@dataclass(frozen=True)
class ClientGroup:
    """Training interactions of several clients, concatenated client after client.

    ``users`` are indices into the client's own private rows (always 0 cross-device, one per
    member user cross-silo); ``items`` are global item ids.
    """

    client_ids: IntArray
    offsets: IntArray
    """Rows of client ``c`` are ``offsets[c]:offsets[c+1]``."""
    users: IntArray
    items: IntArray
    ratings: FloatArray
    n_local_users: IntArray
    n_items: int

    def __post_init__(self) -> None:
        if len(self.offsets) != len(self.client_ids) + 1:
            raise ValueError("offsets must have one entry more than client_ids")

    def __len__(self) -> int:
        return len(self.client_ids)

    @property
    def sizes(self) -> IntArray:
        return np.diff(self.offsets)

    def select(self, positions: IntArray) -> ClientGroup:
        """The sub-group of the clients at ``positions`` (in that order)."""
        sizes = self.sizes[positions]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        rows = concat_ranges(self.offsets[positions], self.offsets[positions + 1])
        return ClientGroup(
            client_ids=self.client_ids[positions],
            offsets=offsets,
            users=self.users[rows],
            items=self.items[rows],
            ratings=self.ratings[rows],
            n_local_users=self.n_local_users[positions],
            n_items=self.n_items,
        )


@dataclass(frozen=True)
class RoundPlan:
    """Samples of every client of a group, in the order its local steps consume them.

    Each client's samples are its local epochs one after the other, each epoch shuffled;
    a local step takes the next ``batch_size`` samples of the current epoch (the last batch of
    an epoch may be short). Items are local slots: ``local_items[item_offsets[c] + slot]`` is
    the global item id.
    """

    client_ids: IntArray
    sample_offsets: IntArray
    users: IntArray
    items: IntArray
    """Local item slot of each sample (the positive one, for BPR)."""
    items2: IntArray | None
    """BPR only: local slot of each sample's negative item."""
    labels: FloatArray
    item_offsets: IntArray
    local_items: IntArray
    epoch_sizes: IntArray
    """Samples per local epoch, per client."""
    epochs: int
    batch_size: int
    num_examples: IntArray
    """Training interactions per client (the FedAvg weight)."""
    pseudo_u: FloatArray | None = None
    """Obfuscation: a uniform draw per pseudo-item sample (its label is drawn from the model's
    own prediction at train time), -1 for real samples; None without pseudo-items."""

    @property
    def steps_per_epoch(self) -> IntArray:
        return -(-self.epoch_sizes // self.batch_size)

    @property
    def n_steps(self) -> IntArray:
        return self.steps_per_epoch * self.epochs

    @property
    def n_slots(self) -> IntArray:
        return np.diff(self.item_offsets)

    def step_rows(
        self, step: int, width: int, clients: IntArray | None = None
    ) -> tuple[IntArray, npt.NDArray[np.bool_]]:
        """Sample rows of the ``step``-th batch of the given clients (default all), padded to
        ``width``: (rows, valid)."""
        idx = np.arange(len(self.client_ids)) if clients is None else clients
        sizes = self.epoch_sizes[idx]
        spe = np.maximum(self.steps_per_epoch[idx], 1)
        epoch = step // spe
        b = step % spe
        base = self.sample_offsets[idx]
        start = base + epoch * sizes + b * self.batch_size
        end = np.minimum(start + self.batch_size, base + (epoch + 1) * sizes)
        rows = start[:, None] + np.arange(width)[None, :]
        valid = (rows < end[:, None]) & (step < self.n_steps[idx])[:, None]
        rows = np.where(valid, rows, 0)
        return rows.astype(np.int64), valid


class _KeySet:
    """Membership in a set of int64 keys: a bitmap when their range is small, else binary search
    (both far faster than np.isin at these sizes)."""

    def __init__(self, keys: IntArray, key_range: int) -> None:
        self.bitmap: npt.NDArray[np.bool_] | None = None
        self.keys = keys
        if key_range <= 1 << 28:
            self.bitmap = np.zeros(key_range, dtype=bool)
            self.bitmap[keys] = True
        else:
            self.keys = _sorted_unique(keys)

    def contains(self, query: IntArray) -> npt.NDArray[np.bool_]:
        if self.bitmap is not None:
            return np.asarray(self.bitmap[query])
        if len(self.keys) == 0:
            return np.zeros(query.shape, dtype=bool)
        pos = np.searchsorted(self.keys, query).clip(max=len(self.keys) - 1)
        return np.asarray(self.keys[pos] == query)


def _cat(parts: list[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    """``np.concatenate``, without the copy when there is one part (one local epoch)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _stable_argsort(keys: npt.NDArray[np.uint64]) -> IntArray:
    """``np.argsort(keys, kind="stable")``, faster when keys rarely tie.

    numpy's default sort is about twice as fast as its stable one on 64-bit keys; it can only
    differ on equal keys, so it is used when the sorted keys have no ties (the usual case:
    a tie needs two of a client's samples to share a 40-bit hash).
    """
    order = np.argsort(keys)
    ranked = keys[order]
    if len(ranked) > 1 and bool((ranked[1:] == ranked[:-1]).any()):
        order = np.argsort(keys, kind="stable")
    out: IntArray = order.astype(np.int64, copy=False)
    return out


def _sorted_unique(keys: IntArray) -> IntArray:
    """Sorted distinct keys (a sort and a mask: faster than np.unique's hashing here)."""
    k = np.sort(keys)
    if len(k) == 0:
        return k
    out: IntArray = k[np.concatenate([[True], k[1:] != k[:-1]])]
    return out


def _unique_with_index(keys: IntArray, key_range: int) -> tuple[IntArray, IntArray]:
    """(sorted unique keys, index of each key in them); a bitmap when the range is small."""
    if key_range <= 1 << 27:
        seen = np.zeros(key_range, dtype=bool)
        seen[keys] = True
        uniq = np.flatnonzero(seen).astype(np.int64)
        rank = np.empty(key_range, dtype=np.int32)  # only the entries of seen keys are read
        rank[uniq] = np.arange(len(uniq), dtype=np.int32)
        return uniq, rank[keys].astype(np.int64)
    uniq, inv = np.unique(keys, return_inverse=True)
    return uniq.astype(np.int64), inv.astype(np.int64).reshape(keys.shape)


def _negatives(
    group: ClientGroup,
    row_client: IntArray,
    row_key_user: IntArray,
    positives: _KeySet,
    k: int,
    seed: int,
    round_: int,
    epoch: int,
    row_in_client: IntArray,
    tag: int = rng.NEGATIVES,
) -> IntArray:
    """``k`` negatives per row: uniform over items the row's user has no training positive for.

    Only the client's own training positives are excluded: it knows nothing else, and
    excluding held-out items would leak them into training.
    """
    n = group.n_items
    client = np.repeat(row_client, k)
    counter = (row_in_client[:, None] * k + np.arange(k, dtype=np.int64)[None, :]).reshape(-1)
    user_key = np.repeat(row_key_user, k) * n
    # Draw j of client c is randint(n, seed, round, tag, epoch, attempt, c's id, j); the
    # prefix up to the client id is hashed once per client.
    prefix = rng.hash64(seed, round_, tag, epoch, 0, group.client_ids)
    out = rng.below(n, rng.extend(prefix[client], counter))
    todo = np.flatnonzero(positives.contains(user_key + out))
    attempt = 0
    while len(todo):
        attempt += 1
        if attempt > 1000:
            bad = np.unique(group.client_ids[client[todo]])
            raise ValueError(
                f"could not draw negatives for client(s) {bad[:5].tolist()}: "
                "a user has interacted with (almost) every item"
            )
        prefix = rng.hash64(seed, round_, tag, epoch, attempt, group.client_ids)
        redraw = rng.below(n, rng.extend(prefix[client[todo]], counter[todo]))
        out[todo] = redraw
        todo = todo[positives.contains(user_key[todo] + redraw)]
    return out.reshape(len(row_client), k)


def plan_round(
    group: ClientGroup,
    *,
    seed: int,
    round_: int,
    epochs: int,
    batch_size: int,
    negatives: int,
    loss: str,
    pseudo_items: int = 0,
    pseudo_labels: str = "positive",
) -> RoundPlan:
    """Every client's local samples for this round (see :class:`RoundPlan`).

    ``pseudo_items`` (obfuscation, Lin et al. 2020): per client and round, that many items it
    has no training positive for join every local epoch as extra samples, so the upload
    holds rows for them too. ``pseudo_labels``: ``positive`` gives them the virtual label 1
    (FedRec's virtual ratings: they look like the client's real positives, at the cost of
    training on false ones); ``model`` draws each label from the model's own prediction
    (zero-mean updates, but mostly negative-looking ones for unrated items).
    """
    if epochs < 1:
        raise ValueError(f"local epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"local batch_size must be >= 1, got {batch_size}")
    C = len(group)
    sizes = group.sizes
    row_client = np.repeat(np.arange(C, dtype=np.int64), sizes)
    row_in_client = np.arange(len(group.items), dtype=np.int64) - group.offsets[row_client]
    user_base = np.concatenate([[0], np.cumsum(group.n_local_users)]).astype(np.int64)
    key_user = user_base[row_client] + group.users
    positives = _KeySet(key_user * group.n_items + group.items, int(user_base[-1]) * group.n_items)
    pairwise = loss == "bpr"
    k = 0 if loss == "mse" else negatives
    if pairwise and k < 1:
        raise ValueError("BPR needs at least one negative per positive")
    P = pseudo_items
    if P and loss != "bce":
        raise ValueError("pseudo-item obfuscation needs loss = 'bce' (virtual 0/1 labels)")
    if pseudo_labels not in ("positive", "model"):
        raise ValueError(f"pseudo_labels must be 'positive' or 'model', got {pseudo_labels!r}")
    drawn = pseudo_labels == "model"
    pseudo = np.zeros((C, 0), dtype=np.int64)
    if P:
        # One fixed set per client and round, drawn like negatives on a stream of its own.
        first_user = user_base[:-1]
        pseudo = _negatives(
            group,
            np.arange(C, dtype=np.int64),
            first_user,
            positives,
            P,
            seed,
            round_,
            0,
            np.zeros(C, dtype=np.int64),
            tag=rng.PSEUDO_ITEMS,
        )
    # Cross-device groups (one user per client) have every local user index 0: not carried.
    one_user_each = bool((group.n_local_users == 1).all())
    # The shuffle counter of a row's t-th sample (t = k: its positive) is row * (k + 1) + t.
    row_counter = row_in_client * (k + 1)
    neg_t = np.arange(k, dtype=np.int64)
    p_client = np.repeat(np.arange(C, dtype=np.int64), P)
    p_idx = np.tile(np.arange(P, dtype=np.int64), C)
    parts_u: list[npt.NDArray[np.float32]] = []
    parts_key: list[tuple[IntArray, npt.NDArray[np.uint64]]] = []
    parts_user: list[IntArray] = []
    parts_item: list[IntArray] = []
    parts_item2: list[IntArray] = []
    parts_label: list[FloatArray] = []
    for e in range(epochs):
        neg = (
            _negatives(group, row_client, key_user, positives, k, seed, round_, e, row_in_client)
            if k
            else np.zeros((len(row_client), 0), dtype=np.int64)
        )
        s_user = group.users
        if pairwise:
            s_client = np.repeat(row_client, k)
            counter = (row_counter[:, None] + neg_t).reshape(-1)
            if not one_user_each:
                s_user = np.repeat(group.users, k)
            s_item = np.repeat(group.items, k)
            parts_item2.append(neg.reshape(-1))
            s_label = np.ones(len(s_item), dtype=np.float32)
        else:
            labels = group.ratings if loss == "mse" else np.ones(len(group.items), np.float32)
            s_client = np.concatenate([row_client, np.repeat(row_client, k)])
            counter = np.concatenate([row_counter + k, (row_counter[:, None] + neg_t).reshape(-1)])
            if not one_user_each:
                s_user = np.concatenate([group.users, np.repeat(group.users, k)])
            s_item = np.concatenate([group.items, neg.reshape(-1)])
            s_label = np.concatenate(
                [labels.astype(np.float32), np.zeros(len(row_client) * k, np.float32)]
            )
        s_u = np.full(len(s_client) if drawn else 0, -1.0, dtype=np.float32)
        if P:
            s_client = np.concatenate([s_client, p_client])
            counter = np.concatenate([counter, (sizes[p_client] + p_idx) * (k + 1)])
            if not one_user_each:
                s_user = np.concatenate([s_user, np.zeros(len(p_client), np.int64)])
            s_item = np.concatenate([s_item, pseudo.reshape(-1)])
            s_label = np.concatenate(
                [s_label, np.full(len(p_client), 0 if drawn else 1, np.float32)]
            )
            u01 = np.full(len(p_client), -1.0)
            if drawn:
                u = rng.hash64(
                    seed, round_, rng.PSEUDO_LABELS, e, group.client_ids[p_client], p_idx
                )
                u01 = (u >> np.uint64(11)).astype(np.float64) / float(1 << 53)
            s_u = np.concatenate([s_u, u01.astype(np.float32)])
        parts_u.append(s_u)
        prefix = rng.hash64(seed, round_, rng.SHUFFLE, e, group.client_ids)
        parts_key.append((s_client * epochs + e, rng.extend(prefix[s_client], counter)))
        parts_user.append(s_user)
        parts_item.append(s_item)
        parts_label.append(s_label)

    # Order: by client, then epoch, then the client's own shuffle hash.
    group_key = _cat([g for g, _ in parts_key])
    hashes = _cat([h for _, h in parts_key])
    if C * epochs < 1 << 24:
        combined = (group_key.astype(np.uint64) << np.uint64(40)) | (hashes >> np.uint64(24))
        order = _stable_argsort(combined)
    else:
        order = np.lexsort((hashes, group_key))
    n_samples = len(order)
    users = np.zeros(n_samples, np.int64) if one_user_each else _cat(parts_user)[order]
    items = _cat(parts_item)[order]
    items2 = _cat(parts_item2)[order] if pairwise else None
    labels_all = _cat(parts_label)[order]
    pseudo_u = _cat(parts_u)[order] if P and drawn else None

    epoch_sizes = sizes * (k if pairwise else 1 + k) + P
    sample_offsets = np.concatenate([[0], np.cumsum(epoch_sizes * epochs)]).astype(np.int64)
    client = np.repeat(np.arange(C, dtype=np.int64), epoch_sizes * epochs)  # sorted by client

    n = group.n_items
    keys = client * n + items
    if items2 is not None:
        keys = np.concatenate([keys, client * n + items2])
    slot_keys, slot_of = _unique_with_index(keys, C * n)
    item_offsets = np.searchsorted(slot_keys // n, np.arange(C + 1)).astype(np.int64)
    local_items = (slot_keys % n).astype(np.int64, copy=False)
    slot_of = (
        slot_of - item_offsets[np.concatenate([client, client]) if items2 is not None else client]
    )
    n_s = len(items)

    return RoundPlan(
        client_ids=group.client_ids,
        sample_offsets=sample_offsets,
        users=users.astype(np.int64, copy=False),
        items=slot_of[:n_s],
        items2=None if items2 is None else slot_of[n_s:],
        labels=labels_all.astype(np.float32, copy=False),
        item_offsets=item_offsets,
        local_items=local_items,
        epoch_sizes=epoch_sizes.astype(np.int64),
        epochs=epochs,
        batch_size=batch_size,
        num_examples=sizes.astype(np.int64),
        pseudo_u=pseudo_u,
    )
