"""What a deployed client does with each message it receives, without Flower.

The Flower ClientApp (:mod:`fedrec.deploy.client_app`) only turns records into these calls and
back. Training is :func:`fedrec.federated.client.client_update`, the very function the
simulator batches; protection is :class:`fedrec.privacy.upload.ClientProtection` and the real
SecAgg+ client. Everything private (the user rows, a secret seed, the round's SecAgg secrets
and its unmasked upload) stays in :class:`ClientState` on the device's disk, written
atomically after every message, because each message is answered by a fresh process.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedrec.config import RunConfig
from fedrec.deploy.pending import PendingRound
from fedrec.deploy.shards import ClientShard, data_fingerprint, describe
from fedrec.eval.protocols import evaluate_sampled
from fedrec.federated.client import LocalTrainer, client_update
from fedrec.federated.configure import local_settings, min_inputs_of
from fedrec.federated.layout import ParamLayout
from fedrec.models.base import Recommender
from fedrec.models.factory import build_model
from fedrec.models.scoring import ModelScorer
from fedrec.privacy.ldp import LocalDP
from fedrec.privacy.upload import ClientProtection, UploadVector, client_generator
from fedrec.utils.atomic import atomic_open

Params = dict[str, Tensor]
STATE_FILE = "state.pt"


class ClientError(RuntimeError):
    """A message this client refuses to act on; the message says why."""


def config_from_toml(text: str) -> RunConfig:
    return RunConfig.model_validate(tomllib.loads(text))


def supported(cfg: RunConfig) -> None:
    """Refuse, with the reason, what the deployment does not run."""
    if cfg.mode != "federated":
        raise ClientError("deployment runs federated configurations (mode = 'federated')")
    if cfg.model.name in ("two-tower", "popularity"):
        raise ClientError(
            f"model.name = {cfg.model.name!r} is simulation-only for now (its feature tables are "
            "not part of a client shard); deploy mf, gmf, mlp, neumf or pfedrec"
        )
    if cfg.privacy.he.enabled:
        raise ClientError("privacy.he is simulation-only for now; deploy with privacy.secagg")
    if cfg.federated.encoding != "float32":
        raise ClientError("deployment sends float32 updates: set federated.encoding = 'float32'")
    if cfg.eval.protocol != "sampled":
        raise ClientError(
            "deployed clients evaluate under the sampled protocol (their shard holds its "
            "negatives); set eval.protocol = 'sampled'"
        )


def population(cfg: RunConfig) -> int | None:
    """How many clients the run has, as the configuration says (None: it cannot say)."""
    if cfg.deploy.min_clients is not None:
        return cfg.deploy.min_clients
    if cfg.federated.partition == "random":
        return cfg.federated.silos
    return None


def min_inputs(cfg: RunConfig) -> int:
    """Distributed DP's m from this client's copy of the configuration: it refuses to help
    unmask a secure sum over fewer inputs, whatever the server's unmasking request says. The
    copy arrives with the run's first train request; later ones may not lower m
    (:attr:`ClientState.min_inputs`)."""
    if not (cfg.privacy.dp.enabled and cfg.privacy.dp.mode == "distributed"):
        return 1
    n = population(cfg)
    if n is None:
        raise ClientError(
            "distributed DP needs deploy.min_clients (or federated.partition = 'random') so "
            "that each client can compute the minimum number of inputs in a secure sum"
        )
    return min_inputs_of(cfg, n)


def initial_model(cfg: RunConfig, n_users: int, n_items: int) -> Recommender:
    """The run's model as the seed initialises it: the same on the server, on every client and
    in the simulator, so their starting points agree bit for bit."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, n_users, n_items)


def _to_tensor(b: bytes) -> Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8).clone()


def _to_bytes(t: Tensor) -> bytes:
    return bytes(t.numpy().tobytes())


@dataclass
class ClientState:
    """A client's private state on its own disk (``STATE_FILE`` in its state directory)."""

    client_id: int
    fingerprint: str
    secret: bytes
    """Seeds this client's own randomness (negatives, pseudo-items, noise); never sent."""
    private: Params
    """Its user rows (embeddings, personal parameters)."""
    round: int = 0
    """Rounds this client has trained (the last round it saw, counted from 1)."""
    before_last: Params | None = None
    """``private`` before the last round it trained, so a server that restarted from a
    checkpoint can replay that round."""
    shared: Params | None = None
    """The last shared model it received (enough to recommend offline)."""
    config_toml: str = ""
    shard_dir: str = ""
    min_inputs: int = 1
    """The highest secure-sum minimum (distributed DP's m) this run's configuration has implied
    so far: a later configuration may not lower it."""
    best: Params | None = None
    """``private`` when the server last selected a round on validation (the test reads it)."""
    best_round: int = -1
    """That round, as the server numbers it (-1: none selected yet)."""

    @staticmethod
    def fresh(shard: ClientShard, cfg: RunConfig, shard_dir: Path) -> ClientState:
        model = initial_model(cfg, shard.n_users, shard.n_items)
        layout = ParamLayout.of(model)
        users = torch.from_numpy(shard.users)
        params = dict(model.named_parameters())
        return ClientState(
            client_id=shard.client_id,
            fingerprint=shard.fingerprint,
            secret=secrets.token_bytes(32),
            private={n: params[n].detach()[users].clone() for n in layout.private},
            shard_dir=str(shard_dir),
        )

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        payload = {
            "client_id": self.client_id,
            "fingerprint": self.fingerprint,
            "secret": _to_tensor(self.secret),
            "private": self.private,
            "round": self.round,
            "before_last": self.before_last,
            "shared": self.shared,
            "config_toml": self.config_toml,
            "shard_dir": self.shard_dir,
            "min_inputs": self.min_inputs,
            "best": self.best,
            "best_round": self.best_round,
        }
        with atomic_open(directory / STATE_FILE, "wb", encoding=None) as fh:
            os.fchmod(fh.fileno(), 0o600)
            torch.save(payload, fh)

    @staticmethod
    def load(directory: Path) -> ClientState | None:
        path = Path(directory) / STATE_FILE
        if not path.exists():
            return None
        # weights_only: a state file holds tensors and plain values; loading never runs code.
        d = torch.load(path, weights_only=True)
        return ClientState(
            client_id=int(d["client_id"]),
            fingerprint=str(d["fingerprint"]),
            secret=_to_bytes(d["secret"]),
            private=dict(d["private"]),
            round=int(d["round"]),
            before_last=d["before_last"],
            shared=d["shared"],
            config_toml=str(d["config_toml"]),
            shard_dir=str(d["shard_dir"]),
            min_inputs=int(d.get("min_inputs", 1)),
            best=d.get("best"),
            best_round=int(d.get("best_round", -1)),
        )

    def seed(self, cfg: RunConfig) -> int:
        """The seed of this client's local randomness."""
        if cfg.deploy.client_randomness == "run-seed":
            return cfg.seed
        return int.from_bytes(hashlib.sha256(b"fedrec-client" + self.secret).digest()[:7], "big")


@dataclass
class Device:
    """One client's shard and state directories; every handler loads, acts, saves."""

    shard_dir: Path
    state_dir: Path
    run: str = ""
    """The run this message belongs to: each run keeps its own state under ``run-<id>/``."""

    def __post_init__(self) -> None:
        if self.run and not re.fullmatch(r"[0-9a-f]{1,32}", self.run):
            raise ClientError(f"run id {self.run[:40]!r} is not a short hex string")

    @property
    def run_dir(self) -> Path:
        return self.state_dir / f"run-{self.run}" if self.run else self.state_dir

    def shard(self) -> ClientShard:
        return ClientShard.load(self.shard_dir)

    def state(self, shard: ClientShard, cfg: RunConfig) -> ClientState:
        st = ClientState.load(self.run_dir)
        if st is None:
            st = ClientState.fresh(shard, cfg, self.shard_dir)
        if st.client_id != shard.client_id or st.fingerprint != shard.fingerprint:
            raise ClientError(
                f"state in {self.run_dir} belongs to client {st.client_id} of data "
                f"{st.fingerprint}, but the shard is client {shard.client_id} of "
                f"{shard.fingerprint}: point the node at its own state directory"
            )
        return st

    # -- messages ---------------------------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        return describe(self.shard_dir)

    def _checked(self, config_toml: str) -> tuple[ClientShard, RunConfig, ClientState]:
        cfg = config_from_toml(config_toml)
        supported(cfg)
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        shard = self.shard()

        if data_fingerprint(cfg) != shard.fingerprint:
            raise ClientError(
                f"the run's data/partition fingerprint {data_fingerprint(cfg)} differs from this "
                f"client's shard ({shard.fingerprint}): the shard was cut for another "
                "configuration"
            )
        st = self.state(shard, cfg)
        st.config_toml = config_toml
        return shard, cfg, st

    def train(
        self,
        config_toml: str,
        round_: int,
        shared: Params,
        protection: dict[str, float] | None,
    ) -> dict[str, Any]:
        """Train on the broadcast model; returns the upload (sparse rows, or a protected vector
        kept on disk until the masking stage when ``protection`` asks for a dense upload)."""
        shard, cfg, st = self._checked(config_toml)
        m = min_inputs(cfg)
        if m < st.min_inputs:
            raise ClientError(
                f"this run's configuration now implies secure sums over at least {m} inputs, "
                f"fewer than the {st.min_inputs} it implied before; refusing to lower it"
            )
        st.min_inputs = m
        if round_ < st.round - 1:
            raise ClientError(
                f"round {round_ + 1} is older than the last round this client trained "
                f"({st.round}); refusing a replayed message"
            )
        if round_ == st.round - 1 and st.before_last is not None:
            # The server restarted from a checkpoint taken before this round: replay it from
            # the private rows this client had before it.
            st.private = st.before_last
        model = initial_model(cfg, shard.n_users, shard.n_items)
        trainer = LocalTrainer(model, local_settings(cfg))
        upd = client_update(
            trainer, shared, st.private, shard.group, seed=st.seed(cfg), round_=round_
        )
        st.before_last, st.private = st.private, upd.private
        st.round = round_ + 1
        st.shared = {k: v.detach().clone() for k, v in shared.items()}
        out: dict[str, Any] = {
            "n_examples": upd.num_examples,
            "loss": upd.loss,
            "min_inputs": m,
        }
        if protection is None:
            out.update(item_ids=upd.item_ids, item_deltas=upd.item_deltas, dense=upd.dense_deltas)
        else:
            vector = UploadVector.of(
                trainer.layout, shared, shard.n_items, cfg.upload_count_scale, cfg.upload_weights
            )
            prot = _protection(cfg, protection)
            norm = vector.payload_norm(upd.item_deltas, upd.dense_deltas)
            vec = vector.build(
                upd.item_ids,
                upd.item_deltas,
                upd.dense_deltas,
                scale=prot.scale(norm),
                below=prot.below(norm),
            )
            gen = client_generator(st.seed(cfg), round_, shard.client_id)
            vec = prot.noise(vec, vector.payload_dim, gen)
            out["dim"] = vector.dim
            if cfg.privacy.secagg.enabled:
                # Kept on this disk until the masking stage of secure aggregation.
                PendingRound(self.run_dir).start(round_, vec.numpy())
            else:
                out["vector"] = vec.to(torch.float32)
        st.save(self.run_dir)
        return out

    def evaluate(
        self, config_toml: str, shared: Params, which: str = "valid", tag: int = -1
    ) -> dict[str, Any]:
        """Metric sums over this client's users, with its private rows and the broadcast model;
        the server divides by the users summed over clients.

        ``which``: ``valid`` (with the current rows), ``keep`` (the server selected round
        ``tag`` on validation: keep the current rows for the test; no metric), or ``test``
        (once, at the end: the rows kept for round ``tag``, the model it selected). Test is
        never read alongside validation, as in the simulator.
        """
        shard, cfg, st = self._checked(config_toml)
        if which == "keep":
            st.best = {k: v.clone() for k, v in st.private.items()}
            st.best_round = tag
            st.save(self.run_dir)
            return {}
        if which == "valid":
            private, h = st.private, shard.valid
        elif which == "test":
            if st.best is None or st.best_round != tag:
                raise ClientError(
                    f"asked for the test of round {tag} but this client kept round "
                    f"{st.best_round}: it missed that round's selection"
                )
            private, h = st.best, shard.test
        else:
            raise ClientError(f"unknown evaluation {which!r} (valid, keep or test)")
        model = initial_model(cfg, shard.n_users, shard.n_items)
        layout = ParamLayout.of(model)
        users = torch.from_numpy(shard.users)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in layout.private:
                    p[users] = private[name]
                else:
                    p.copy_(shared[name])
        out: dict[str, Any] = {which: {}}
        if len(h):
            res = evaluate_sampled(ModelScorer(model), h, list(cfg.eval.ks))
            out[which] = {
                k: (float(np.nansum(res.per_user[k])), int(np.isfinite(res.per_user[k]).sum()))
                for k in res.metrics
            }
        if which == "valid":
            st.shared = {k: v.detach().clone() for k, v in shared.items()}
            st.save(self.run_dir)
        return out


def _protection(cfg: RunConfig, p: dict[str, float]) -> ClientProtection:
    """This round's client-side protection: clip and noise shares from the server, local DP
    from the configuration."""
    ldp = None
    if cfg.privacy.ldp.enabled:
        lc = cfg.privacy.ldp
        ldp = LocalDP(
            lc.mechanism, lc.epsilon, lc.delta if lc.mechanism == "gaussian" else 0.0, lc.clip
        )
    clip = p.get("clip", -1.0)
    return ClientProtection(
        clip=None if clip is None or clip < 0 else float(clip),
        ldp=ldp,
        noise_std=float(p.get("noise_std", 0.0)),
        count_noise_std=float(p.get("count_noise_std", 0.0)),
    )


def recommend_from_state(state_dir: Path, raw_user: str, k: int = 10) -> list[dict[str, Any]]:
    """Top-k for one of this device's users from its state alone: private rows, the last
    shared model it received, its shard for the catalogue and what the user already has
    (``state_dir``: a device's state directory, whose latest run is used, or one run's)."""
    runs = sorted(
        (p.parent for p in Path(state_dir).glob(f"run-*/{STATE_FILE}")),
        key=lambda d: (d / STATE_FILE).stat().st_mtime,
    )
    st = ClientState.load(runs[-1] if runs else state_dir)
    if st is None:
        raise ClientError(f"{state_dir} holds no client state ({STATE_FILE})")
    if st.shared is None:
        raise ClientError(f"{state_dir}: this client has not received a shared model yet")
    shard = ClientShard.load(Path(st.shard_dir))
    if raw_user not in shard.raw_users:
        raise ClientError(
            f"user {raw_user!r} is not on this device (its users: {shard.raw_users[:5]}...)"
        )
    local = shard.raw_users.index(raw_user)
    cfg = config_from_toml(st.config_toml)
    model = initial_model(cfg, shard.n_users, shard.n_items)
    layout = ParamLayout.of(model)
    g = int(shard.users[local])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in layout.private:
                p[g] = st.private[name][local]
            else:
                p.copy_(st.shared[name])
        model.eval()
        scores = model.score_all(torch.tensor([g]))[0].numpy().astype(np.float64)
    known = shard.group.items[shard.group.users == local]
    scores[known] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    top = top[np.isfinite(scores[top])]
    return [
        {
            "rank": r + 1,
            "item": shard.item_ids[i],
            "title": None if shard.titles is None else shard.titles[i],
            "score": float(scores[i]),
        }
        for r, i in enumerate(top)
    ]
