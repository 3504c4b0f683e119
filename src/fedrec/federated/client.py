"""The one client update: local epochs on a client's own data, from a round's shared model.

:func:`train_clients` trains a group of clients and :func:`client_update` is that same
function on a group of one. A deployed client calls ``client_update``; the simulator calls
``train_clients`` on thousands of clients at once. Their only difference is the group size,
and a test checks that batching never changes a client's result.

How a step is computed, and why: each client's gradient (:meth:`LocalTrainer.grads`) is taken
with respect to the embedding *rows a batch uses*, not whole tables, so a step costs O(batch)
rather than O(table); all active clients' gradients come from one call (see
:class:`LocalTrainer`). Rows are then updated with a scatter-add (SGD) or a row-sparse
("lazy") Adam, as ``torch.optim.SparseAdam`` does. All of a group's local item tables live in
one flat tensor per parameter (client ``c``'s rows at its own offset), so no client is padded
to another's size; per-client state (a cross-device client's user row, dense copies, Adam's
step count) is kept in order of decreasing step count, so the clients still training at a
step are a prefix and are sliced, not gathered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap

from fedrec.federated.layout import ParamLayout
from fedrec.federated.plan import ClientGroup, RoundPlan, plan_round
from fedrec.models.base import Recommender

Params = dict[str, Tensor]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class LocalSettings:
    """How a client trains locally in one round."""

    epochs: int = 1
    batch_size: int = 64
    lr: float = 0.1
    dense_lr: float | None = None
    """Step for dense (tower) parameters; None: ``lr``."""
    optimizer: str = "sgd"
    negatives: int = 4
    loss: str = "bce"
    weight_decay: float = 0.0
    """L2 on the embedding rows each sample uses (as in centralized training)."""
    prox_mu: float = 0.0
    """FedProx pull towards the round's broadcast model: on dense parameters, and on the
    item rows each sample uses (row-sparse, like the L2 term)."""
    pseudo_items: int = 0
    """Obfuscation: unrated items trained and uploaded per round (see ``plan_round``)."""
    pseudo_labels: str = "positive"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"local optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.loss not in ("bce", "bpr", "mse"):
            raise ValueError(f"local loss must be bce, bpr or mse, got {self.loss!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("local epochs and batch_size must be >= 1")
        if self.lr <= 0 or (self.dense_lr is not None and self.dense_lr <= 0):
            raise ValueError(f"local lr and dense_lr must be > 0, got {self.lr}, {self.dense_lr}")


@dataclass
class GroupUpdate:
    """What a group of clients produced. Per client: only item/dense deltas may be uploaded."""

    client_ids: IntArray
    num_examples: IntArray
    item_offsets: IntArray
    """Client ``c``'s item rows are ``item_offsets[c]:item_offsets[c+1]`` of the flat tensors."""
    item_ids: Tensor
    item_deltas: Params
    dense_deltas: Params
    """Stacked per client on dim 0."""
    user_offsets: IntArray
    private: Params
    """New private rows, flat (client ``c``'s at ``user_offsets[c]:user_offsets[c+1]``)."""
    losses: Tensor
    """Mean local loss of each client over its steps (NaN for a client with no data)."""

    @property
    def n_slots(self) -> IntArray:
        return np.diff(self.item_offsets)


@dataclass
class ClientUpdate:
    """One client's round. ``private`` stays on the device; the rest is its upload."""

    client_id: int
    num_examples: int
    item_ids: Tensor
    item_deltas: Params
    dense_deltas: Params
    private: Params
    loss: float


class _RowScorer(torch.nn.Module):
    """Calls ``model.score_rows`` so ``functional_call`` can swap in a client's dense tensors."""

    def __init__(self, model: Recommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, gathered: Params) -> Tensor:
        return self.model.score_rows(gathered)


class LocalTrainer:
    """A model's per-client loss and gradient, as functions of the rows a batch gathered.

    Two ways to get every active client's gradient in one call, with the same result. Models
    whose ``score_rows`` broadcasts over leading dimensions (``broadcast_rows``: MF, PFedRec),
    or that have no dense parameters, score all clients' rows in one plain pass: a row only
    enters its own client's loss, so the gradient of the clients' summed losses holds each
    client's own gradient. Other models (towers: every client has its own copy of each
    weight) vmap the one-client function, which costs more per step.
    """

    def __init__(self, model: Recommender, settings: LocalSettings) -> None:
        if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
            raise ValueError(
                "federated training does not support dropout > 0 yet (its randomness would "
                "differ between batched and one-client execution); set model.dropout = 0"
            )
        self.model = model.eval()
        self.layout = ParamLayout.of(model)
        self.s = settings
        self._item_names = set(self.layout.item_rows)
        self._rows_module = _RowScorer(model)
        self.flat = model.broadcast_rows or not self.layout.dense
        """True: one plain gradient pass over all clients; False: vmap over clients."""
        self._vmap_grads = vmap(grad_and_value(self._one, argnums=(0, 1), has_aux=True))

    def _score(self, rows: Params, dense: Params, n_clients: int, width: int) -> Tensor:
        """Scores ``(A, width)`` of rows ``(A, width or 1, *row)``, dense ``(A, *shape)``."""
        if self.model.broadcast_rows:
            lead = {f"model.{k}": v.reshape(n_clients, 1, *v.shape[1:]) for k, v in dense.items()}
            out: Tensor = functional_call(self._rows_module, lead, (rows,))
            return out
        # One row per pair, so only one client's dense values fit (under vmap, or none at all).
        flat = {
            k: v.expand(n_clients, width, *v.shape[2:]).reshape(n_clients * width, *v.shape[2:])
            for k, v in rows.items()
        }
        one = {f"model.{k}": v[0] for k, v in dense.items()}
        scores: Tensor = functional_call(self._rows_module, one, (flat,))
        return scores.view(n_clients, width)

    def loss(
        self,
        rows: Params,
        dense: Params,
        anchor_rows: Params,
        anchor_dense: Params,
        batch: dict[str, Tensor],
    ) -> Tensor:
        """Each client's mean loss over its batch's real samples (``mask``), plus L2 and
        proximal terms: shape ``(A,)``.

        Every tensor leads with the client dimension ``A``; ``batch`` holds ``(A, B)``
        tensors. ``rows[name]`` holds, per sample, the row of each table the sample uses:
        ``(A, B, *row)``, or ``(A, 1, *row)`` for a user table when each client is one user
        (its row serves every sample); for BPR the item rows are ``(A, 2B, *row)``, the
        positives' then the negatives'. The model scores them with ``score_rows``, the same
        function its ``forward`` uses.
        """
        mask, labels = batch["mask"], batch["labels"]
        A, B = mask.shape
        n = mask.sum(1).clamp_min(1.0)
        first = {k: (v[:, :B] if k in self._item_names else v) for k, v in rows.items()}
        s = self._score(first, dense, A, B)
        if self.s.loss == "bpr":
            second = {k: (v[:, B:] if k in self._item_names else v) for k, v in rows.items()}
            s2 = self._score(second, dense, A, B)
            per = F.softplus(s2 - s)
        elif self.s.loss == "bce":
            if "pseudo_u" in batch:
                # Pseudo-items: label ~ Bernoulli(model's own probability), so their expected
                # gradient is zero and their rows look like real positives or negatives.
                u = batch["pseudo_u"]
                drawn = (u < torch.sigmoid(s.detach())).to(s.dtype)
                labels = torch.where(u >= 0, drawn, labels)
            per = F.binary_cross_entropy_with_logits(s, labels, reduction="none")
        else:
            per = (s - labels) ** 2
        total = (per * mask).sum(1) / n
        item_mask = mask.repeat(1, 2) if self.s.loss == "bpr" else mask
        if self.s.weight_decay > 0:
            sq = s.new_zeros(A)
            for name in self.layout.trained(self.layout.private):
                sq = sq + (rows[name].pow(2).flatten(2).sum(2) * mask).sum(1)
            for name in self.layout.trained(self.layout.item_rows):
                sq = sq + (rows[name].pow(2).flatten(2).sum(2) * item_mask).sum(1)
            total = total + self.s.weight_decay * sq / n
        if self.s.prox_mu > 0:
            prox = s.new_zeros(A)
            for name in self.layout.trained(self.layout.item_rows):
                diff = (rows[name] - anchor_rows[name]).pow(2).flatten(2).sum(2)
                prox = prox + (diff * item_mask).sum(1) / n
            for name in self.layout.dense:
                prox = prox + (dense[name] - anchor_dense[name]).pow(2).reshape(A, -1).sum(1)
            total = total + 0.5 * self.s.prox_mu * prox
        return total

    def _flat_grads(
        self,
        rows: Params,
        dense: Params,
        anchor_rows: Params,
        anchor_dense: Params,
        batch: dict[str, Tensor],
    ) -> tuple[Params, Params, Tensor]:
        """All clients in one ordinary autograd pass over their summed losses.

        Plain ``torch.autograd`` rather than ``torch.func``: no per-call transform overhead,
        and no first-call import of ``torch._dynamo`` (seconds) that ``torch.func`` triggers.
        """
        r = {k: v.detach().requires_grad_() for k, v in rows.items()}
        d = {k: v.detach().requires_grad_() for k, v in dense.items()}
        with torch.enable_grad():
            per = self.loss(r, d, anchor_rows, anchor_dense, batch)
            leaves = [*r.values(), *d.values()]
            g = torch.autograd.grad(per.sum(), leaves, allow_unused=True, materialize_grads=True)
        g_rows = dict(zip(r, g[: len(r)], strict=True))
        g_dense = dict(zip(d, g[len(r) :], strict=True))
        return g_rows, g_dense, per.detach()

    def _one(
        self,
        rows: Params,
        dense: Params,
        anchor_rows: Params,
        anchor_dense: Params,
        batch: dict[str, Tensor],
    ) -> tuple[Tensor, Tensor]:
        """One client's loss, from its tensors without the client dimension (as vmap passes)."""

        def lead(p: Params) -> Params:
            return {k: v.unsqueeze(0) for k, v in p.items()}

        per = self.loss(lead(rows), lead(dense), lead(anchor_rows), lead(anchor_dense), lead(batch))
        return per[0], per[0].detach()

    def grads(
        self,
        rows: Params,
        dense: Params,
        anchor_rows: Params,
        anchor_dense: Params,
        batch: dict[str, Tensor],
    ) -> tuple[Params, Params, Tensor]:
        """Each client's gradients w.r.t. its gathered rows and dense parameters, and its loss
        (inputs as for :meth:`loss`; outputs lead with the client dimension too)."""
        if self.flat:
            return self._flat_grads(rows, dense, anchor_rows, anchor_dense, batch)
        (g_rows, g_dense), (_, loss) = self._vmap_grads(
            rows, dense, anchor_rows, anchor_dense, batch
        )
        return g_rows, g_dense, loss


def _add_rows(table: Tensor, keys: Tensor, values: Tensor) -> None:
    """``table[keys[i]] += values[i]`` for every ``i`` in order (repeated keys accumulate).

    ``scatter_add_`` with an expanded index rather than ``index_add_``: on CPU the latter
    dispatches a kernel per row and is 2-4x slower at these sizes; both add in row order.
    """
    index = keys.reshape((-1,) + (1,) * (values.dim() - 1)).expand_as(values)
    table.scatter_add_(0, index, values)


def _gather_rows(table: Tensor, ids: Tensor) -> Tensor:
    """``table[ids]`` in memory numpy allocates.

    numpy asks Linux for transparent huge pages on large arrays (PyTorch's CPU allocator does
    not by default). A group's local item table is hundreds of MB, gathered from and
    scattered into at random every step: huge pages halve the cost of filling it and of each
    step's gather (far fewer page faults and TLB misses).
    """
    dtype = torch.empty(0, dtype=table.dtype).numpy().dtype
    out = torch.from_numpy(np.empty((len(ids), *table.shape[1:]), dtype=dtype))
    return torch.index_select(table, 0, ids, out=out)


def _sub_rows_(out: Tensor, table: Tensor, ids: Tensor, block: int = 1 << 14) -> Tensor:
    """``out -= table[ids]`` in place, a block of rows at a time through one small buffer.

    A temporary as large as ``out`` (hundreds of MB for a big chunk), or a fresh one per
    block, costs more in page faults than the subtraction itself.
    """
    buf = torch.empty((min(block, len(ids)), *table.shape[1:]), dtype=table.dtype)
    for a in range(0, len(ids), block):
        part = buf[: len(ids[a : a + block])]
        torch.index_select(table, 0, ids[a : a + block], out=part)
        out[a : a + block].sub_(part)
    return out


class _RowOptimizer:
    """SGD, or row-sparse Adam, on row tables.

    Per-client state (Adam's step count, and rows updated through :meth:`prefix`) is indexed
    by position in ``train_clients``' step-count order, where the active clients are a prefix.
    """

    def __init__(self, s: LocalSettings, tables: Params, n_clients: int) -> None:
        self.s = s
        self.t = torch.zeros(n_clients)
        self.adam = s.optimizer == "adam"
        if self.adam:
            self.m = {k: torch.zeros_like(v) for k, v in tables.items()}
            self.v = {k: torch.zeros_like(v) for k, v in tables.items()}

    def tick(self, n_active: int) -> None:
        self.t[:n_active] += 1

    def rows(self, name: str, table: Tensor, keys: Tensor, grads: Tensor, valid: Tensor) -> None:
        """Rows ``keys`` (``(A, W)``, active client ``a``'s in row ``a``) of ``table``, by
        ``grads`` (``(A, W, *row)``); ``valid`` marks real samples.

        Padding gradients are exactly zero (masked out of the loss), so SGD adds them, which
        is cheaper than dropping them; Adam must skip them (it moves rows with zero gradient).
        """
        lr = self.s.lr
        row = grads.shape[2:]
        if not self.adam:
            _add_rows(table, keys.reshape(-1), grads.reshape(-1, *row).mul_(-lr))
            return
        client = torch.arange(len(keys))[:, None].expand_as(keys)[valid]
        keys, grads = keys[valid], grads[valid]
        uk, inv = torch.unique(keys, return_inverse=True)
        g = torch.zeros((len(uk), *row), dtype=grads.dtype)
        _add_rows(g, inv, grads)
        b1, b2 = self.s.betas
        m = self.m[name][uk] * b1 + (1 - b1) * g
        v = self.v[name][uk] * b2 + (1 - b2) * g * g
        self.m[name][uk], self.v[name][uk] = m, v
        owner = torch.zeros(len(uk), dtype=torch.long)
        owner[inv] = client  # a row belongs to one client: every write agrees
        t = self.t[owner].reshape((-1,) + (1,) * (g.dim() - 1))
        step = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + self.s.eps)
        _add_rows(table, uk, step * -lr)

    def prefix(self, name: str, value: Tensor, grads: Tensor, lr: float) -> None:
        """Rows ``0..A-1`` of ``value``, one per active client, by ``grads`` (``A`` rows)."""
        a = len(grads)
        if not self.adam:
            value[:a] -= lr * grads
            return
        b1, b2 = self.s.betas
        m = self.m[name][:a] * b1 + (1 - b1) * grads
        v = self.v[name][:a] * b2 + (1 - b2) * grads * grads
        self.m[name][:a], self.v[name][:a] = m, v
        t = self.t[:a].reshape((-1,) + (1,) * (grads.dim() - 1))
        value[:a] -= lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + self.s.eps)


def train_clients(
    trainer: LocalTrainer,
    shared: Params,
    private: Params,
    group: ClientGroup,
    *,
    seed: int,
    round_: int,
) -> GroupUpdate:
    """Run every client of ``group`` through its local epochs from the broadcast ``shared``.

    ``private[name]`` holds the group's private rows flat, client after client, in the
    order of ``group.n_local_users``.
    """
    s, lay = trainer.s, trainer.layout
    plan: RoundPlan = plan_round(
        group,
        seed=seed,
        round_=round_,
        epochs=s.epochs,
        batch_size=s.batch_size,
        negatives=s.negatives,
        loss=s.loss,
        pseudo_items=s.pseudo_items,
        pseudo_labels=s.pseudo_labels,
    )
    C, B = len(group), s.batch_size
    user_offsets = np.concatenate([[0], np.cumsum(group.n_local_users)]).astype(np.int64)
    item_ids = torch.from_numpy(plan.local_items)
    n_steps = plan.n_steps
    # Clients by decreasing step count: at step k the clients still training are the first
    # active[k] of this order. A client's arithmetic never depends on its position in it.
    order = np.argsort(-n_steps, kind="stable").astype(np.int64)
    active = np.searchsorted(-n_steps[order], -np.arange(int(n_steps.max(initial=0))))
    order_t = torch.from_numpy(order)
    # Cross-device: one user per client, whose row is then per-client state (in order).
    one_user_each = bool((group.n_local_users == 1).all())

    fixed = {n: shared[n].detach() for n in lay.shared}
    items = {n: _gather_rows(fixed[n], item_ids) for n in lay.item_rows}
    users = {
        n: private[n].detach().index_select(0, order_t)
        if one_user_each
        else private[n].detach().clone()
        for n in lay.private
    }
    dense = {n: fixed[n].unsqueeze(0).expand((C, *fixed[n].shape)).clone() for n in lay.dense}
    opt = _RowOptimizer(s, {**items, **users, **dense}, C)
    dense_lr = s.lr if s.dense_lr is None else s.dense_lr
    trained_items = lay.trained(lay.item_rows)
    trained_users = lay.trained(lay.private)

    ibase = torch.from_numpy(plan.item_offsets[:-1][order])
    ubase = torch.from_numpy(user_offsets[:-1][order])
    loss_sum = torch.zeros(C)
    users_t, items_t = torch.from_numpy(plan.users), torch.from_numpy(plan.items)
    items2_t = None if plan.items2 is None else torch.from_numpy(plan.items2)
    labels_t = torch.from_numpy(plan.labels)
    pseudo_t = None if plan.pseudo_u is None else torch.from_numpy(plan.pseudo_u)
    for step, a in enumerate(active.tolist()):
        rows_np, valid_np = plan.step_rows(step, B, order[:a])
        r = torch.from_numpy(rows_np).view(-1)
        valid = torch.from_numpy(valid_np)
        batch = {"labels": labels_t.index_select(0, r).view(a, B), "mask": valid.float()}
        if pseudo_t is not None:
            batch["pseudo_u"] = torch.where(valid, pseudo_t.index_select(0, r).view(a, B), -1.0)
        # Padding positions point at the client's own first row (masked out of the loss).
        ikeys = ibase[:a, None] + items_t.index_select(0, r).view(a, B) * valid
        if items2_t is not None:
            ikeys = torch.cat(
                [ikeys, ibase[:a, None] + items2_t.index_select(0, r).view(a, B) * valid], 1
            )
        width = ikeys.shape[1]
        flat_keys = ikeys.view(-1)
        rows = {
            n: v.index_select(0, flat_keys).view(a, width, *v.shape[1:]) for n, v in items.items()
        }
        ukeys = None
        if one_user_each:
            rows.update({n: v[:a].unsqueeze(1) for n, v in users.items()})
        else:
            ukeys = ubase[:a, None] + users_t.index_select(0, r).view(a, B) * valid
            rows.update(
                {
                    n: v.index_select(0, ukeys.view(-1)).view(a, B, *v.shape[1:])
                    for n, v in users.items()
                }
            )
        anchor_rows: Params = {}
        anchor_dense: Params = {}
        if s.prox_mu > 0:
            global_ids = item_ids.index_select(0, flat_keys)
            anchor_rows = {
                n: fixed[n].index_select(0, global_ids).view(a, width, *fixed[n].shape[1:])
                for n in lay.item_rows
            }
            anchor_dense = {
                n: fixed[n].unsqueeze(0).expand((a, *fixed[n].shape)) for n in lay.dense
            }
        dense_act = {n: v[:a] for n, v in dense.items()}
        g_rows, g_dense, loss = trainer.grads(rows, dense_act, anchor_rows, anchor_dense, batch)

        opt.tick(a)
        for n in trained_users:
            if ukeys is None:
                opt.prefix(n, users[n], g_rows[n][:, 0], s.lr)
            else:
                opt.rows(n, users[n], ukeys, g_rows[n], valid)
        item_valid = valid.repeat(1, 2) if items2_t is not None else valid
        for n in trained_items:
            opt.rows(n, items[n], ikeys, g_rows[n], item_valid)
        for n in lay.dense:
            opt.prefix(n, dense[n], g_dense[n], dense_lr)
        loss_sum[:a] += loss

    # Back from the step-count order to the group's.
    position = torch.empty_like(order_t)
    position[order_t] = torch.arange(C)
    steps = torch.from_numpy(n_steps.astype(np.float32))
    losses = torch.where(
        steps > 0,
        loss_sum.index_select(0, position) / steps.clamp_min(1),
        torch.full((C,), float("nan")),
    )
    return GroupUpdate(
        client_ids=group.client_ids,
        num_examples=plan.num_examples,
        item_offsets=plan.item_offsets,
        item_ids=item_ids,
        item_deltas={n: _sub_rows_(v, fixed[n], item_ids) for n, v in items.items()},
        dense_deltas={n: v.index_select(0, position) - fixed[n] for n, v in dense.items()},
        user_offsets=user_offsets,
        private={n: v.index_select(0, position) if one_user_each else v for n, v in users.items()},
        losses=losses,
    )


def client_update(
    trainer: LocalTrainer,
    shared: Params,
    private: Params,
    data: ClientGroup,
    *,
    seed: int,
    round_: int,
) -> ClientUpdate:
    """One client's round: exactly :func:`train_clients` on a group of one.

    ``data`` holds this client alone; ``private`` its rows (one per local user).
    """
    if len(data) != 1:
        raise ValueError(f"client_update runs one client, got a group of {len(data)}")
    g = train_clients(trainer, shared, private, data, seed=seed, round_=round_)
    return ClientUpdate(
        client_id=int(data.client_ids[0]),
        num_examples=int(g.num_examples[0]),
        item_ids=g.item_ids,
        item_deltas=g.item_deltas,
        dense_deltas={n: v[0] for n, v in g.dense_deltas.items()},
        private=g.private,
        loss=float(g.losses[0]),
    )
