"""The one client update: local epochs on a client's own data, from a round's shared model.

:func:`train_clients` trains a group of clients and :func:`client_update` is that same
function on a group of one. A deployed client calls ``client_update``; the simulator calls
``train_clients`` on thousands of clients at once. Their only difference is the group size,
and a test checks that batching never changes a client's result.

How a step is computed, and why: the per-client gradient (:meth:`LocalTrainer.grads`, a pure
function vmapped over clients) is taken with respect to the embedding *rows a batch uses*,
not whole tables, so a step costs O(batch) rather than O(table). Rows are then updated with
``index_add_`` (SGD) or a row-sparse ("lazy") Adam, as ``torch.optim.SparseAdam`` does.
All of a group's local tables live in one flat tensor per parameter (client ``c``'s rows at
its own offset), so no client is padded to another's size.
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
    """A model's per-client loss and gradient, as pure functions of gathered rows."""

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
        self._vgrads = vmap(self.grads)

    def loss(
        self,
        rows: Params,
        dense: Params,
        anchor_rows: Params,
        anchor_dense: Params,
        batch: dict[str, Tensor],
    ) -> Tensor:
        """Mean loss over the batch's real samples (``mask``), plus L2 and proximal terms.

        ``rows[name]`` holds, per sample, the row of each table the sample uses (for BPR the
        item rows are the positives' then the negatives'); the model scores them with
        ``score_rows``, the same function its ``forward`` uses.
        """
        mask, labels = batch["mask"], batch["labels"]
        B = mask.shape[0]
        n = mask.sum().clamp_min(1.0)
        dense_params = {f"model.{k}": v for k, v in dense.items()}
        first = {k: (v[:B] if k in self._item_names else v) for k, v in rows.items()}
        s = functional_call(self._rows_module, dense_params, (first,))
        if self.s.loss == "bpr":
            second = {k: (v[B:] if k in self._item_names else v) for k, v in rows.items()}
            s2 = functional_call(self._rows_module, dense_params, (second,))
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
        total = (per * mask).sum() / n
        reps = 2 if self.s.loss == "bpr" else 1
        if self.s.weight_decay > 0:
            sq = s.new_zeros(())
            for name in self.layout.trained(self.layout.private):
                sq = sq + (rows[name].pow(2).flatten(1).sum(1) * mask).sum()
            for name in self.layout.trained(self.layout.item_rows):
                sq = sq + (rows[name].pow(2).flatten(1).sum(1) * mask.repeat(reps)).sum()
            total = total + self.s.weight_decay * sq / n
        if self.s.prox_mu > 0:
            prox = s.new_zeros(())
            for name in self.layout.trained(self.layout.item_rows):
                diff = (rows[name] - anchor_rows[name]).pow(2).flatten(1).sum(1)
                prox = prox + (diff * mask.repeat(reps)).sum() / n
            for name in self.layout.dense:
                prox = prox + (dense[name] - anchor_dense[name]).pow(2).sum()
            total = total + 0.5 * self.s.prox_mu * prox
        return total

    def grads(
        self,
        rows: Params,
        dense: Params,
        anchor_rows: Params,
        anchor_dense: Params,
        batch: dict[str, Tensor],
    ) -> tuple[Params, Params, Tensor]:
        """Gradients w.r.t. the gathered rows and the dense parameters, and the loss."""
        (g_rows, g_dense), value = grad_and_value(self.loss, argnums=(0, 1))(
            rows, dense, anchor_rows, anchor_dense, batch
        )
        return g_rows, g_dense, value.detach()


@dataclass(frozen=True)
class _Packing:
    """Row tables laid side by side in one 2-D tensor (row shape flattened into columns)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @staticmethod
    def of(tables: Params) -> _Packing:
        return _Packing(tuple(tables), tuple(tuple(t.shape[1:]) for t in tables.values()))

    @property
    def widths(self) -> list[int]:
        return [int(np.prod(sh, dtype=np.int64)) for sh in self.shapes]

    def pack(self, tables: Params, n_rows: int) -> Tensor:
        if not self.names:
            return torch.zeros((n_rows, 0))
        return torch.cat([tables[n].reshape(n_rows, -1) for n in self.names], dim=1)

    def unpack(self, packed: Tensor) -> Params:
        lead = packed.shape[:-1]
        parts = torch.split(packed, self.widths, dim=-1) if self.names else ()
        return {
            n: p.reshape(*lead, *sh)
            for n, p, sh in zip(self.names, parts, self.shapes, strict=True)
        }

    def pack_grads(self, grads: Params) -> Tensor:
        lead = grads[self.names[0]].shape[: -len(self.shapes[0]) or None]
        return torch.cat([grads[n].reshape(*lead, -1) for n in self.names], dim=-1)


class _RowOptimizer:
    """SGD, or row-sparse Adam, on flat row tables; dense Adam on per-client dense tensors."""

    def __init__(self, s: LocalSettings, tables: Params, dense: Params, n_clients: int) -> None:
        self.s = s
        self.t = torch.zeros(n_clients)
        self.adam = s.optimizer == "adam"
        if self.adam:
            self.m = {k: torch.zeros_like(v) for k, v in {**tables, **dense}.items()}
            self.v = {k: torch.zeros_like(v) for k, v in {**tables, **dense}.items()}

    def tick(self, active: Tensor) -> None:
        self.t[active] += 1

    def rows(
        self, name: str, table: Tensor, keys: Tensor, grads: Tensor, key_client: Tensor
    ) -> None:
        lr = self.s.lr
        if not self.adam:
            table.index_add_(0, keys, grads, alpha=-lr)
            return
        uk, inv = torch.unique(keys, return_inverse=True)
        g = torch.zeros((len(uk), *grads.shape[1:]), dtype=grads.dtype).index_add_(0, inv, grads)
        b1, b2 = self.s.betas
        m = self.m[name][uk] * b1 + (1 - b1) * g
        v = self.v[name][uk] * b2 + (1 - b2) * g * g
        self.m[name][uk], self.v[name][uk] = m, v
        client = torch.zeros(len(uk), dtype=torch.long)
        client[inv] = key_client  # a row belongs to one client: every write agrees
        t = self.t[client].reshape((-1,) + (1,) * (g.dim() - 1))
        step = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + self.s.eps)
        table.index_add_(0, uk, step, alpha=-lr)

    def dense(self, name: str, value: Tensor, grads: Tensor, act: Tensor) -> None:
        lr = self.s.lr if self.s.dense_lr is None else self.s.dense_lr
        if not self.adam:
            value[act] -= lr * grads
            return
        b1, b2 = self.s.betas
        m = self.m[name][act] * b1 + (1 - b1) * grads
        v = self.v[name][act] * b2 + (1 - b2) * grads * grads
        self.m[name][act], self.v[name][act] = m, v
        t = self.t[act].reshape((-1,) + (1,) * (grads.dim() - 1))
        value[act] -= lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + self.s.eps)


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
    C = len(group)
    user_offsets = np.concatenate([[0], np.cumsum(group.n_local_users)]).astype(np.int64)
    item_ids = torch.from_numpy(plan.local_items)
    # Every user table in one tensor, every item table in another (columns side by side): one
    # gather and one scatter per step and kind, whatever the number of tables.
    upack = _Packing.of({n: private[n] for n in lay.private})
    ipack = _Packing.of({n: shared[n] for n in lay.item_rows})
    utable = upack.pack({n: private[n].detach() for n in lay.private}, int(user_offsets[-1]))
    itable = ipack.pack({n: shared[n].detach()[item_ids] for n in lay.item_rows}, len(item_ids))
    dense = {
        n: shared[n].detach().unsqueeze(0).expand((C, *shared[n].shape)).clone() for n in lay.dense
    }
    anchor_items = itable.clone()
    anchor_dense = {n: v.clone() for n, v in dense.items()}
    opt = _RowOptimizer(s, {"user": utable, "item": itable}, dense, C)
    # Cross-device: one user per client, so a step's user gradients sum per client directly.
    one_user_each = bool((group.n_local_users == 1).all())

    ubase = torch.from_numpy(user_offsets[:-1])
    ibase = torch.from_numpy(plan.item_offsets[:-1])
    n_steps = plan.n_steps
    loss_sum = torch.zeros(C)
    pairwise = plan.items2 is not None
    users_t, items_t = torch.from_numpy(plan.users), torch.from_numpy(plan.items)
    items2_t = None if plan.items2 is None else torch.from_numpy(plan.items2)
    labels_t = torch.from_numpy(plan.labels)
    pseudo_t = None if plan.pseudo_u is None else torch.from_numpy(plan.pseudo_u)
    for step in range(int(n_steps.max(initial=0))):
        act_np = np.nonzero(n_steps > step)[0]
        act = torch.from_numpy(act_np)
        rows_np, valid_np = plan.step_rows(step, s.batch_size, act_np)
        r = torch.from_numpy(rows_np)
        valid = torch.from_numpy(valid_np)
        batch = {"labels": labels_t[r], "mask": valid.to(torch.float32)}
        if pseudo_t is not None:
            batch["pseudo_u"] = torch.where(valid, pseudo_t[r], torch.full_like(pseudo_t[r], -1))
        # Padding positions point at the client's own first row (masked out of the loss).
        ukeys = ubase[act, None] + users_t[r] * valid
        ikeys = ibase[act, None] + items_t[r] * valid
        if items2_t is not None:
            ikeys = torch.cat([ikeys, ibase[act, None] + items2_t[r] * valid], dim=1)
        rows = upack.unpack(utable[ukeys])
        rows.update(ipack.unpack(itable[ikeys]))
        anchor_rows = ipack.unpack(anchor_items[ikeys]) if s.prox_mu > 0 else {}
        dense_act = {n: v[act] for n, v in dense.items()}
        anchor_act = {n: v[act] for n, v in anchor_dense.items()}
        g_rows, g_dense, loss = trainer._vgrads(rows, dense_act, anchor_rows, anchor_act, batch)

        opt.tick(act)
        if upack.names:
            gu = upack.pack_grads(g_rows)
            if one_user_each:
                opt.rows("user", utable, ubase[act], gu.sum(1), act)
            else:
                client = act[:, None].expand_as(ukeys)
                opt.rows("user", utable, ukeys[valid], gu[valid], client[valid])
        if ipack.names:
            ivalid = torch.cat([valid, valid], dim=1) if pairwise else valid
            iclient = act[:, None].expand_as(ikeys)
            gi = ipack.pack_grads(g_rows)
            opt.rows("item", itable, ikeys[ivalid], gi[ivalid], iclient[ivalid])
        for n in lay.dense:
            opt.dense(n, dense[n], g_dense[n], act)
        loss_sum[act] += loss

    steps = torch.from_numpy(n_steps.astype(np.float32))
    losses = torch.where(steps > 0, loss_sum / steps.clamp_min(1), torch.full((C,), float("nan")))
    return GroupUpdate(
        client_ids=group.client_ids,
        num_examples=plan.num_examples,
        item_offsets=plan.item_offsets,
        item_ids=item_ids,
        item_deltas=ipack.unpack(itable - anchor_items),
        dense_deltas={n: dense[n] - anchor_dense[n] for n in lay.dense},
        user_offsets=user_offsets,
        private=upack.unpack(utable),
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
