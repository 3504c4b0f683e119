"""Per-user item sets (CSR) and uniform negative sampling over what a user has not interacted with.

Training negatives exclude ONLY the user's training positives. Several public federated-rec
code bases also exclude the held-out validation/test items, which tells the model which
items it must never push down and inflates HR@10; we do not.

Sampling is rejection first, exact after: draws are checked against the user's set (a
packed bitmap, or ``np.searchsorted`` over sorted ``user * n_items + item`` keys when the id
space is huge) and only collisions are redrawn, for a few rounds. Slots still colliding
(users who hold most items) are drawn exactly: with ``P_u`` the user's sorted items and
``m_u`` the number they lack, a uniform rank ``r`` in ``[0, m_u)`` maps to the ``r``-th item
not in ``P_u``, which is ``r + #{k : P_u[k] - k <= r}`` (``P_u[k] - k`` is non-decreasing),
one ``np.searchsorted`` for all users. So the cost never blows up for dense users.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedrec.data.table import IntArray, Interactions


@dataclass(frozen=True)
class UserItemCSR:
    """Each user's distinct items, sorted: row ``u`` is ``indices[indptr[u]:indptr[u + 1]]``."""

    indptr: IntArray
    """Shape ``(n_users + 1,)``."""
    indices: IntArray
    n_items: int

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    def row(self, user: int) -> IntArray:
        return self.indices[self.indptr[user] : self.indptr[user + 1]]

    def counts(self) -> IntArray:
        """Number of distinct items per user."""
        return np.diff(self.indptr)

    def keys(self) -> IntArray:
        """``user * n_items + item`` for every entry; globally sorted, so searchable."""
        rows = np.repeat(np.arange(self.n_users, dtype=np.int64), self.counts())
        return rows * self.n_items + self.indices

    def contains(self, users: IntArray, items: IntArray) -> npt.NDArray[np.bool_]:
        """Elementwise: does ``users[i]`` have ``items[i]``? Any matching shapes."""
        keys = self.keys()
        q = np.asarray(users, dtype=np.int64) * self.n_items + np.asarray(items, dtype=np.int64)
        if len(keys) == 0:
            return np.zeros(q.shape, dtype=bool)
        pos = np.searchsorted(keys, q)
        found: npt.NDArray[np.bool_] = keys[np.minimum(pos, len(keys) - 1)] == q
        return found


def user_item_csr(users: IntArray, items: IntArray, n_users: int, n_items: int) -> UserItemCSR:
    """Build the CSR of distinct (user, item) pairs; duplicates collapse to one entry."""
    u = np.asarray(users, dtype=np.int64)
    it = np.asarray(items, dtype=np.int64)
    if u.shape != it.shape or u.ndim != 1:
        raise ValueError(f"users and items must be 1-D of equal length, got {u.shape}, {it.shape}")
    if len(u):
        if u.min() < 0 or u.max() >= n_users:
            bad = int(u[(u < 0) | (u >= n_users)][0])
            raise ValueError(f"user id {bad} is outside [0, {n_users})")
        if it.min() < 0 or it.max() >= n_items:
            bad = int(it[(it < 0) | (it >= n_items)][0])
            raise ValueError(f"item id {bad} is outside [0, {n_items})")
    keys = _sorted_unique(u * n_items + it)
    rows = keys // n_items
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_users), out=indptr[1:])
    return UserItemCSR(indptr=indptr, indices=keys % n_items, n_items=n_items)


def raw_id(ids: npt.NDArray[np.generic], index: int) -> object:
    """A raw id as a plain Python value, so messages read ``'ann'``, not ``np.str_('ann')``."""
    return ids[index : index + 1].tolist()[0]


def _sorted_unique(keys: IntArray) -> IntArray:
    """Sorted distinct values; ``np.unique`` is ~40x slower on 1M int64 with numpy 2.4."""
    out = np.sort(keys)
    if len(out) > 1:
        out = out[np.concatenate(([True], out[1:] != out[:-1]))]
    return out


def training_csr(train: Interactions) -> UserItemCSR:
    """Each user's training item set; the trainer, eval masks and federated clients share it."""
    return user_item_csr(train.users, train.items, train.n_users, train.n_items)


def sample_complement(
    csr: UserItemCSR, users: IntArray, ranks: IntArray, gap_keys: IntArray | None = None
) -> IntArray:
    """Map ranks ``r`` (same shape as ``users`` broadcast) to the ``r``-th item the user lacks.

    ``ranks`` must lie in ``[0, n_items - count[user])``; ``gap_keys`` may be passed to
    reuse :func:`complement_keys` across calls.
    """
    keys = complement_keys(csr) if gap_keys is None else gap_keys
    u = np.asarray(users, dtype=np.int64)
    r = np.asarray(ranks, dtype=np.int64)
    u_b = np.broadcast_to(u, r.shape) if u.shape != r.shape else u
    pos = np.searchsorted(keys, u_b * csr.n_items + r, side="right")
    return r + (pos - csr.indptr[u_b])


def complement_keys(csr: UserItemCSR) -> IntArray:
    """``user * n_items + (P_u[k] - k)``: globally non-decreasing (see the module docstring)."""
    counts = csr.counts()
    rows = np.repeat(np.arange(csr.n_users, dtype=np.int64), counts)
    local = np.arange(len(csr.indices), dtype=np.int64) - np.repeat(csr.indptr[:-1], counts)
    return rows * csr.n_items + (csr.indices - local)


_BITMAP_MAX_PAIRS = 1 << 28
"""Up to this many (user, item) pairs, membership uses a packed bitmap (<= 32 MiB)."""


class ComplementSampler:
    """Uniform draws from the items NOT in each user's set of ``csr``.

    Most draws are accepted at once (ML-1M is 4.5 % dense), so a few rejection rounds with a
    cheap membership test (a packed bitmap, or a binary search for huge id spaces) come
    first; slots still colliding after them (users holding most items) are drawn exactly
    from the complement by rank. Each slot ends up uniform either way.
    """

    rejection_rounds = 3

    def __init__(
        self,
        csr: UserItemCSR,
        rng: np.random.Generator,
        user_ids: npt.NDArray[np.generic] | None = None,
        what: str = "recorded interaction",
    ) -> None:
        self.csr = csr
        self.n_items = csr.n_items
        self._rng = rng
        self._user_ids = user_ids
        self._what = what
        self._gap_keys = complement_keys(csr)
        self.n_free = self.n_items - csr.counts()
        self._keys = csr.keys()
        self._bitmap: npt.NDArray[np.uint8] | None = None
        n_pairs = csr.n_users * self.n_items
        if n_pairs <= _BITMAP_MAX_PAIRS:
            dense = np.zeros(n_pairs, dtype=bool)
            dense[self._keys] = True
            self._bitmap = np.packbits(dense, bitorder="little")

    def _name(self, user: int) -> str:
        if self._user_ids is None:
            return f"user {user}"
        return f"user {user} (raw id {raw_id(self._user_ids, user)!r})"

    def _check(self, u: IntArray, need: int) -> None:
        if u.ndim != 1:
            raise ValueError(f"users must be 1-D, got shape {u.shape}")
        if len(u) == 0:
            return
        if u.min() < 0 or u.max() >= self.csr.n_users:
            bad = int(u[(u < 0) | (u >= self.csr.n_users)][0])
            raise ValueError(f"user id {bad} is outside [0, {self.csr.n_users})")
        free = self.n_free[u]
        if free.min() < need:
            bad = int(u[free < need][0])
            if need == 1:
                raise ValueError(
                    f"{self._name(bad)} has a {self._what} for every one of the "
                    f"{self.n_items} items: no negative exists for them"
                )
            raise ValueError(
                f"{self._name(bad)} has only {int(self.n_free[bad])} items without a "
                f"{self._what}, fewer than the {need} distinct negatives asked for"
            )

    def _is_positive(self, keys: IntArray) -> npt.NDArray[np.bool_]:
        if self._bitmap is not None:
            bits = self._bitmap[keys >> 3] >> (keys & 7).astype(np.uint8)
            hit: npt.NDArray[np.bool_] = (bits & 1).astype(bool)
            return hit
        if len(self._keys) == 0:
            return np.zeros(keys.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        found: npt.NDArray[np.bool_] = self._keys[pos] == keys
        return found

    def _draw(self, u_flat: IntArray) -> IntArray:
        """One uniform complement item per entry of ``u_flat`` (users already checked)."""
        rng = self._rng
        base = u_flat * self.n_items
        out = rng.integers(0, self.n_items, size=len(base), dtype=np.int64)
        todo = np.flatnonzero(self._is_positive(base + out))
        for _ in range(self.rejection_rounds):
            if len(todo) == 0:
                break
            out[todo] = rng.integers(0, self.n_items, size=len(todo), dtype=np.int64)
            todo = todo[self._is_positive(base[todo] + out[todo])]
        if len(todo):
            tu = u_flat[todo]
            free = self.n_free[tu]
            ranks = np.minimum((rng.random(len(todo)) * free).astype(np.int64), free - 1)
            out[todo] = sample_complement(self.csr, tu, ranks, self._gap_keys)
        return out

    def sample(self, users: IntArray, n: int) -> IntArray:
        """``(len(users), n)`` independent draws (a row may repeat an item)."""
        u = np.asarray(users, dtype=np.int64)
        if n < 0:
            raise ValueError(f"number of negatives must be >= 0, got {n}")
        self._check(u, 1 if n > 0 else 0)
        if len(u) == 0 or n == 0:
            return np.zeros((len(u), n), dtype=np.int64)
        return self._draw(np.repeat(u, n)).reshape(len(u), n)

    def sample_distinct(self, users: IntArray, k: int) -> IntArray:
        """``(len(users), k)`` distinct items per row, a uniform k-subset; rows sorted.

        Repeats are redrawn until none is left. The procedure commutes with any relabelling
        of a user's complement, so the resulting subset is uniform. Rows whose complement
        is under 4k items (slow to fill that way) draw ranks without replacement directly.
        """
        u = np.asarray(users, dtype=np.int64)
        if k < 1:
            raise ValueError(f"number of negatives must be >= 1, got {k}")
        self._check(u, k)
        out = np.empty((len(u), k), dtype=np.int64)
        if len(u) == 0:
            return out
        hard = self.n_free[u] < 4 * k
        for r in np.flatnonzero(hard):
            ranks = np.sort(self._rng.choice(int(self.n_free[u[r]]), size=k, replace=False))
            out[r] = sample_complement(self.csr, np.full(k, u[r]), ranks, self._gap_keys)
        easy = np.flatnonzero(~hard)
        if len(easy) == 0:
            return out
        ue = u[easy]
        sub = self._draw(np.repeat(ue, k)).reshape(len(easy), k)
        sub.sort(axis=1)
        rows = np.arange(len(easy))
        while True:
            dup = sub[rows, 1:] == sub[rows, :-1]
            has = dup.any(axis=1)
            rows, dup = rows[has], dup[has]
            if len(rows) == 0:
                break
            block = sub[rows]
            redo = np.zeros(block.shape, dtype=bool)
            redo[:, 1:] = dup
            block[redo] = self._draw(np.repeat(ue[rows], redo.sum(axis=1)))
            block.sort(axis=1)
            sub[rows] = block
        out[easy] = sub
        return out


class TrainingNegativeSampler:
    """Uniform negatives among the items a user has no TRAINING positive for.

    Held-out (validation/test) items can and do come up as training negatives, exactly as
    they would for a real system that does not know the future.
    """

    def __init__(self, train: Interactions, seed: int | np.random.Generator) -> None:
        self.csr = training_csr(train)
        self.n_items = train.n_items
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self._sampler = ComplementSampler(self.csr, rng, train.user_ids, "training positive")

    def sample(self, users: IntArray, n: int) -> IntArray:
        """``(len(users), n)`` item ids; row ``i`` holds negatives for ``users[i]``."""
        return self._sampler.sample(users, n)
