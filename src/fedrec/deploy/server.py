"""The server of a deployed run: the simulator's round logic, with clients reached over a
transport (Flower in production, in-process in tests).

:class:`NetworkRunner` is a :class:`~fedrec.federated.server.ClientRunner`: it sends the round to
the selected clients, validates what comes back (:mod:`fedrec.deploy.validate`), and hands
:func:`~fedrec.federated.server.run_round` the same sums the simulator would. Under secure
aggregation it drives the real SecAgg+ server over four exchanges (train + advertise keys,
share keys, forwarded shares + masked inputs, unmasking); a client that stops answering is
dropped and the protocol recovers without it. :class:`NetworkEvaluator` asks every connected
client for metric sums computed with its private rows. :func:`serve` runs
:func:`~fedrec.federated.loop.run_rounds` with both and writes a run directory like a
simulated run's.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from fedrec.config import RunConfig, dump_config
from fedrec.deploy.client import initial_model, population, supported
from fedrec.deploy.payload import Meta, Params, Payload
from fedrec.deploy.secagg_params import round_params
from fedrec.deploy.shards import data_fingerprint
from fedrec.deploy.validate import (
    RejectedUploadError,
    blob,
    check_reply,
    plain_vector,
    sparse_update,
)
from fedrec.experiment.outputs import RunDirectory
from fedrec.federated.aggregate import Accumulator
from fedrec.federated.configure import (
    loop_settings,
    make_server_privacy,
    secagg_max_dropout,
    secagg_summary,
    selection_of,
    strategy_of,
)
from fedrec.federated.layout import ParamLayout
from fedrec.federated.loop import LoopState, aborted_rounds, run_rounds
from fedrec.federated.server import SECAGG_ABORTED, RoundAbortedError, RoundOutcome, ServerState
from fedrec.privacy.secagg import SecAggAbort, SecAggError, SecAggServer
from fedrec.privacy.secagg.messages import (
    AdvertiseKeys,
    MaskedInput,
    ShareKeys,
    UnmaskShares,
)
from fedrec.privacy.server import ServerPrivacy
from fedrec.privacy.upload import UploadVector
from fedrec.report.machine import describe_machine
from fedrec.report.plots import plot_learning_curves
from fedrec.tracking import Tracker, run_tracked
from fedrec.utils.atomic import atomic_open

log = logging.getLogger("fedrec.deploy")
IntArray = npt.NDArray[np.int64]
CHECKPOINT = "checkpoint.pt"


class DeployError(RuntimeError):
    """The deployment cannot go on (e.g. clients never connected); the message says why."""


class Transport(Protocol):
    """How the server reaches clients (by fedrec client id, not transport address)."""

    def clients(self) -> dict[int, Meta]:
        """The clients connected now, with what each said when it joined (``hello``)."""
        ...

    def exchange(
        self, kind: str, requests: dict[int, Payload], timeout: float
    ) -> dict[int, Payload]:
        """Send each request and return the replies that arrived in time (errors omitted)."""
        ...


@dataclass
class _Traffic:
    up: dict[int, int] = field(default_factory=dict)
    down: dict[int, int] = field(default_factory=dict)

    def add(self, requests: dict[int, Payload], replies: dict[int, Payload]) -> None:
        for c, p in requests.items():
            self.down[c] = self.down.get(c, 0) + p.nbytes
        for c, p in replies.items():
            self.up[c] = self.up.get(c, 0) + p.nbytes


class NetworkRunner:
    """Runs the selected clients' round over ``transport`` (see module docstring)."""

    def __init__(
        self,
        cfg: RunConfig,
        transport: Transport,
        layout: ParamLayout,
        n_items: int,
        privacy: ServerPrivacy | None,
        shared_template: Params,
    ) -> None:
        self.cfg, self.transport, self.layout, self.n_items = cfg, transport, layout, n_items
        self.privacy = privacy
        self.config_toml = dump_config(cfg)
        self.timeout = cfg.deploy.reply_timeout_s
        self.max_bytes = int(cfg.deploy.max_upload_mb * 2**20)
        self.vector = UploadVector.of(
            layout, shared_template, n_items, cfg.upload_count_scale, cfg.upload_weights
        )
        self.run_id = secrets.token_hex(8)
        """Names this run to the clients (each keeps a run's state apart); kept on resume."""
        self.events: list[dict[str, Any]] = []
        """What went wrong with which client (rejected uploads, missed replies), per round."""

    def _note(self, round_: int, client: int, what: str) -> None:
        log.warning("round %d: client %d: %s", round_ + 1, client, what)
        self.events.append({"round": round_ + 1, "client": client, "event": what})

    def _exchange(
        self,
        kind: str,
        requests: dict[int, Payload],
        round_: int,
        nonce: str,
        traffic: _Traffic,
    ) -> dict[int, Payload]:
        for p in requests.values():
            p.meta.update(round=round_, nonce=nonce, run=self.run_id)
        replies = self.transport.exchange(kind, requests, self.timeout)
        traffic.add(requests, replies)
        ok = {}
        for c in requests:
            if c not in replies:
                self._note(round_, c, f"no {kind} reply within {self.timeout:g} s (dropped)")
                continue
            if "error" in replies[c].meta:
                self._note(round_, c, f"{kind} failed on the client: {replies[c].meta['error']}")
                continue
            try:
                check_reply(replies[c], round_=round_, nonce=nonce, max_bytes=self.max_bytes)
            except RejectedUploadError as err:
                self._note(round_, c, f"{kind} reply rejected: {err}")
                continue
            ok[c] = replies[c]
        return ok

    def run(
        self, clients: IntArray, shared: Params, round_: int, dropped: IntArray | None = None
    ) -> RoundOutcome:
        nonce = secrets.token_hex(8)
        traffic = _Traffic()
        online = self.transport.clients()
        targets = [int(c) for c in clients if int(c) in online]
        for c in clients:
            if int(c) not in online:
                self._note(round_, int(c), "selected but not connected")
        dense = self.cfg.privacy.dense_uploads
        protection: Meta | None = None
        if dense:
            prot = self.privacy.client_protection() if self.privacy is not None else None
            protection = {
                "clip": -1.0 if prot is None or prot.clip is None else float(prot.clip),
                "noise_std": 0.0 if prot is None else float(prot.noise_std),
                "count_noise_std": 0.0 if prot is None else float(prot.count_noise_std),
            }

        def train_request(c: int, extra: Meta | None = None) -> Payload:
            p = Payload(meta={"config": self.config_toml, "dense": dense})
            p.put_params("shared", shared)
            if protection is not None:
                p.meta.update({f"protection/{k}": v for k, v in protection.items()})
            if extra:
                p.meta.update(extra)
            return p

        if not dense:
            acc, included = self._sparse(targets, shared, round_, nonce, traffic, train_request)
        elif self.cfg.privacy.secagg.enabled:
            acc, included = self._secagg(targets, shared, round_, nonce, traffic, train_request)
        else:
            acc, included = self._plain_vectors(
                targets, shared, round_, nonce, traffic, train_request
            )
        order = [int(c) for c in clients]
        up = np.array([traffic.up.get(c, 0) for c in order], dtype=np.int64)
        down = np.array([traffic.down.get(c, 0) for c in order], dtype=np.int64)
        lost = np.array(sorted(set(order) - set(included)), dtype=np.int64)
        return RoundOutcome(accumulator=acc, bytes_up=up, bytes_down=down, lost=lost)

    def _train_replies(
        self,
        targets: list[int],
        round_: int,
        nonce: str,
        traffic: _Traffic,
        request: Callable[..., Payload],
        parse: Callable[[Payload], tuple[Any, ...]],
    ) -> Iterator[tuple[int, tuple[Any, ...]]]:
        """Each client's parsed train reply, in client order; an upload ``parse`` rejects is
        noted and skipped, so one bad client never spoils the round."""
        replies = self._exchange("train", {c: request(c) for c in targets}, round_, nonce, traffic)
        for c in sorted(replies):
            try:
                parsed = parse(replies[c])
            except RejectedUploadError as err:
                self._note(round_, c, f"upload rejected: {err}")
                continue
            yield c, parsed

    # -- plain sparse uploads ------------------------------------------------------------------
    def _sparse(
        self,
        targets: list[int],
        shared: Params,
        round_: int,
        nonce: str,
        traffic: _Traffic,
        request: Callable[..., Payload],
    ) -> tuple[Accumulator, list[int]]:
        acc = Accumulator.zeros(self.layout, shared, self.n_items)
        uniform = self.cfg.federated.weighting == "uniform"
        prot = self.privacy.client_protection() if self.privacy is not None else None
        included = []

        def parse(reply: Payload) -> tuple[Any, ...]:
            return sparse_update(reply, self.layout, shared, self.n_items)

        for c, (ids, rows, dense, n_ex, loss) in self._train_replies(
            targets, round_, nonce, traffic, request, parse
        ):
            w = 1.0 if uniform else float(n_ex)
            below = 0.0
            if prot is not None and prot.clip is not None:
                # Central DP: the trusted server bounds each client's contribution, exactly as
                # the simulator's sink does.
                norm = self.vector.payload_norm(rows, dense)
                w *= prot.scale(norm)
                below = prot.below(norm)
            wt = torch.tensor([w], dtype=torch.float32)
            acc.add_items(ids, rows, wt.expand(len(ids)))
            acc.add_dense({n: v[None] for n, v in dense.items()}, wt)
            acc.add_clients(wt, n_ex, 0.0 if math.isnan(loss) else loss)
            acc.below_centred += below
            included.append(c)
        return acc, included

    # -- protected vectors -----------------------------------------------------------------------
    def _from_total(
        self, total: Tensor, included: list[int], examples: int, loss_sum: float, shared: Params
    ) -> Accumulator:
        return self.vector.split(total).accumulator(
            self.layout,
            shared,
            self.n_items,
            clients=len(included),
            examples=examples,
            loss_sum=loss_sum,
        )

    def _plain_vectors(
        self,
        targets: list[int],
        shared: Params,
        round_: int,
        nonce: str,
        traffic: _Traffic,
        request: Callable[..., Payload],
    ) -> tuple[Accumulator, list[int]]:
        total = torch.zeros(self.vector.dim, dtype=torch.float64)
        included, examples, loss_sum = [], 0, 0.0

        def parse(reply: Payload) -> tuple[Any, ...]:
            return plain_vector(reply, self.vector.dim)

        for c, (vec, n_ex, loss) in self._train_replies(
            targets, round_, nonce, traffic, request, parse
        ):
            total += vec.to(torch.float64)
            included.append(c)
            examples += n_ex
            loss_sum += 0.0 if math.isnan(loss) else loss
        if not included:
            raise RoundAbortedError("no client's upload arrived")
        return self._from_total(total, included, examples, loss_sum, shared), included

    def _secagg(
        self,
        targets: list[int],
        shared: Params,
        round_: int,
        nonce: str,
        traffic: _Traffic,
        request: Callable[..., Payload],
    ) -> tuple[Accumulator, list[int]]:
        if not targets:
            raise RoundAbortedError("no selected client is connected")
        s = self.cfg.privacy.secagg
        session_seed = os.urandom(16)
        public: Meta = {
            "secagg/ids": list(targets),
            "secagg/dim": self.vector.dim,
            "secagg/neighbours": -1 if s.neighbours is None else s.neighbours,
            "secagg/threshold": -1.0 if s.threshold is None else s.threshold,
            "secagg/max_dropout": secagg_max_dropout(self.cfg),
            "secagg/collusion": s.collusion,
            "secagg/target_failure": s.target_failure,
            "secagg/security_bits": s.security_bits,
            "secagg/server_model": s.server_model,
            "secagg/clip": s.clip,
            "secagg/bits": s.bits,
            "secagg/seed": session_seed,
        }
        params = round_params(public, round_)
        # Distributed DP's m: the server stops the round before any unmasking request when
        # fewer masked inputs arrive (each client checks the same bound itself).
        min_inputs = 1
        if self.privacy is not None and self.privacy.dp is not None and self.privacy.dp.distributed:
            min_inputs = self.privacy.min_survivors()
        server = SecAggServer(params, min_inputs=min_inputs)

        def feed(replies: dict[int, Payload], parse: Any, deliver: Any) -> None:
            for c in sorted(replies):
                try:
                    deliver(parse(blob(replies[c])))
                except (RejectedUploadError, SecAggError) as err:
                    if isinstance(err, SecAggAbort):
                        raise
                    self._note(round_, c, f"secure-aggregation message rejected: {err}")

        def stage(kind_stage: str, msgs: dict[int, Any]) -> dict[int, Payload]:
            reqs = {
                c: Payload(meta={**public, "stage": kind_stage, "message": m.to_bytes()})
                for c, m in msgs.items()
            }
            return self._exchange("secagg", reqs, round_, nonce, traffic)

        try:
            # Exchange 1: train, protect, and advertise keys.
            replies = self._exchange(
                "train", {c: request(c, public) for c in targets}, round_, nonce, traffic
            )
            stats: dict[int, tuple[int, float]] = {}
            for c in sorted(replies):
                try:
                    n_ex = replies[c].meta.get("n_examples")
                    loss = replies[c].meta.get("loss")
                    if not isinstance(n_ex, int) or not isinstance(loss, float | int):
                        raise RejectedUploadError("missing n_examples or loss")
                    server.receive_advertise_keys(AdvertiseKeys.from_bytes(blob(replies[c])))
                    stats[c] = (n_ex, float(loss))
                except (RejectedUploadError, SecAggError) as err:
                    self._note(round_, c, f"key advertisement rejected: {err}")
            # Exchanges 2-4: the SecAgg+ stages.
            feed(
                stage("share", server.neighbour_keys()),
                ShareKeys.from_bytes,
                server.receive_share_keys,
            )
            # Shares are forwarded with the masking request (see forward_and_request_masks).
            merged = server.forward_and_request_masks()
            reqs = {
                c: Payload(
                    meta={
                        **public,
                        "stage": "mask",
                        "forwarded": fwd.to_bytes(),
                        "message": mask.to_bytes(),
                    }
                )
                for c, (fwd, mask) in merged.items()
            }
            feed(
                self._exchange("secagg", reqs, round_, nonce, traffic),
                MaskedInput.from_bytes,
                server.receive_masked_input,
            )
            feed(
                stage("unmask", server.unmask_requests()),
                UnmaskShares.from_bytes,
                server.receive_unmask_shares,
            )
            result = server.aggregate()
        except SecAggAbort as err:
            raise RoundAbortedError(f"{SECAGG_ABORTED}: {err}") from err
        included = sorted(int(c) for c in result.included)
        examples = sum(stats[c][0] for c in included if c in stats)
        loss_sum = sum(stats[c][1] for c in included if c in stats and not math.isnan(stats[c][1]))
        total = torch.from_numpy(np.asarray(result.total, dtype=np.float64))
        return self._from_total(total, included, examples, loss_sum, shared), included


class NetworkEvaluator:
    """Validation metrics as the clients compute them with their private rows. When a round is
    selected on validation the clients keep their rows of that round; :meth:`test` reads the
    test set once, at the end, for that round's model, as the simulator does."""

    def __init__(self, cfg: RunConfig, transport: Transport, run_id: str) -> None:
        self.cfg, self.transport, self.run_id = cfg, transport, run_id
        self.config_toml = dump_config(cfg)
        self.best_shared: Params | None = None
        self.best_round = -1
        self.clients = 0

    def _ask(self, which: str, tag: int, shared: Params | None) -> dict[str, float]:
        online = sorted(self.transport.clients())
        reqs = {}
        for c in online:
            p = Payload(meta={"config": self.config_toml, "run": self.run_id})
            p.meta.update(which=which, tag=tag)
            if shared is not None:
                p.put_params("shared", shared)
            reqs[c] = p
        replies = self.transport.exchange("evaluate", reqs, self.cfg.deploy.reply_timeout_s)
        failed = {c: p.meta["error"] for c, p in replies.items() if "error" in p.meta}
        for c, reason in failed.items():
            log.warning("client %d: evaluation (%s) failed: %s", c, which, reason)
        replies = {c: p for c, p in replies.items() if c not in failed}
        if not replies:
            raise DeployError(
                f"no client answered the evaluation ({which}; {len(failed)} failed; see deploy.log)"
            )
        out: dict[str, list[float]] = {}
        for p in replies.values():
            for key, value in p.meta.items():
                split, _, rest = key.partition("/")
                if split != which or not rest:
                    continue
                metric, _, part = rest.rpartition("/")
                acc = out.setdefault(metric, [0.0, 0.0])
                acc[0 if part == "sum" else 1] += float(value)
        self.clients = len(replies)
        return {k: (s / n if n > 0 else float("nan")) for k, (s, n) in sorted(out.items())}

    def valid(self, state: ServerState) -> dict[str, float]:
        return self._ask("valid", state.round, state.shared)

    def keep_best(self, state: ServerState) -> None:
        self._ask("keep", state.round, None)
        self.best_shared = {k: v.detach().clone() for k, v in state.shared.items()}
        self.best_round = state.round

    def test(self) -> dict[str, float]:
        """The test metrics of the round selected on validation (empty if none was)."""
        if self.best_shared is None:
            return {}
        return self._ask("test", self.best_round, self.best_shared)


def _wait_for_clients(transport: Transport, n: int, timeout: float) -> dict[int, Meta]:
    deadline = time.monotonic() + timeout
    while True:
        online = transport.clients()
        if len(online) >= n:
            return online
        if time.monotonic() > deadline:
            raise DeployError(
                f"only {len(online)} of {n} clients connected within {timeout:g} s "
                "(deploy.wait_clients_s); check the SuperNodes' logs"
            )
        time.sleep(1.0)


def expected_clients(cfg: RunConfig) -> int:
    n = population(cfg)
    if n is not None:
        return n
    raise DeployError(
        "set deploy.min_clients: with federated.partition = "
        f"{cfg.federated.partition!r} the server cannot know how many clients the partition has"
    )


def serve(
    cfg: RunConfig, transport: Transport, out: RunDirectory, *, resume: bool = False
) -> dict[str, Any]:
    """Run ``cfg`` with the clients behind ``transport``; write and return the summary.
    Tracking (``[tracking] mlflow``) happens here, on the server: clients never see MLflow."""
    supported(cfg)
    out.write_config(cfg)
    return run_tracked(
        cfg, out.path, lambda tracker: _serve(cfg, transport, out, resume, tracker), resume=resume
    )


def _serve(
    cfg: RunConfig, transport: Transport, out: RunDirectory, resume: bool, tracker: Tracker | None
) -> dict[str, Any]:
    start = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    n_clients = expected_clients(cfg)
    online = _wait_for_clients(transport, n_clients, cfg.deploy.wait_clients_s)
    fp = data_fingerprint(cfg)
    bad = {c: m.get("fingerprint") for c, m in online.items() if m.get("fingerprint") != fp}
    if bad:
        raise DeployError(
            f"clients {sorted(bad)} hold shards of another configuration (fingerprints "
            f"{sorted(set(map(str, bad.values())))}, the run's is {fp}); re-cut their shards"
        )
    ids = sorted(online)
    if ids != list(range(len(ids))) or len(ids) != n_clients:
        raise DeployError(f"expected clients 0..{n_clients - 1}, connected: {ids[:10]}")
    first = online[ids[0]]
    n_users, n_items = int(first["n_users"]), int(first["n_items"])
    model = initial_model(cfg, n_users, n_items)
    layout = ParamLayout.of(model)
    shared = {k: v.detach().clone() for k, v in model.named_parameters() if k in layout.shared}
    strategy = strategy_of(cfg)
    privacy = make_server_privacy(cfg, n_clients)
    runner = NetworkRunner(cfg, transport, layout, n_items, privacy, shared)
    evaluator = NetworkEvaluator(cfg, transport, runner.run_id)
    loop = LoopState(server=ServerState.initial(shared, strategy, cfg.seed))
    ckpt = out.path / "checkpoints" / CHECKPOINT
    resumed_from = None
    if resume and ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        loop = LoopState.from_dict(saved)
        evaluator.best_shared = saved["best_shared"]
        evaluator.best_round = int(saved["best_round"])
        runner.events = list(saved.get("events", []))
        runner.run_id = evaluator.run_id = str(saved["run_id"])
        if privacy is not None:
            privacy.load_state_dict(saved["privacy"])
        resumed_from = loop.server.round
        out.reset_metrics(loop.history)
        log.info("resumed from round %d", resumed_from)

    def save(loop: LoopState) -> None:
        payload = loop.to_dict()
        payload.update(
            best_shared=evaluator.best_shared,
            best_round=evaluator.best_round,
            events=runner.events,
            run_id=runner.run_id,
            privacy=None if privacy is None else privacy.state_dict(),
        )
        with atomic_open(ckpt, "wb", encoding=None) as fh:
            torch.save(payload, fh)

    def on_round(record: dict[str, Any]) -> None:
        record["clients_online"] = len(transport.clients())
        record["events"] = [e for e in runner.events if e["round"] == record["round"]]
        out.log_metrics(record)
        if tracker is not None:
            tracker.log_record(record)
        log.info(
            "round %d: loss %.4f, %d participants%s",
            record["round"],
            record.get("loss", float("nan")),
            record.get("participants", 0),
            "".join(f", {k} {v:.4f}" for k, v in record.items() if k.startswith("valid/")),
        )

    fed = cfg.federated
    loop = run_rounds(
        loop,
        # A deployment always checkpoints: its rounds are too costly to lose.
        replace(loop_settings(cfg), checkpoint_every=max(fed.checkpoint_every, 1)),
        strategy=strategy,
        selection=selection_of(cfg),
        runner=runner,
        evaluator=evaluator,
        n_clients=n_clients,
        privacy=privacy,
        on_round=on_round,
        save=save,
    )
    test = evaluator.test()
    with atomic_open(out.path / "shared_model.pt", "wb", encoding=None) as fh:
        # Only the shared parameters: private rows never leave the clients.
        torch.save(loop.released().shared, fh)
    plot_learning_curves(loop.history, out.path / "plots", x_key="round")
    examples = sum(int(online[c]["n_examples"]) for c in ids)
    history = loop.history
    per_client_up = [float(r["bytes_up_per_client"]) for r in history if r.get("participants")]
    per_client_down = [float(r["bytes_down_per_client"]) for r in history if r.get("participants")]
    summary: dict[str, Any] = {
        "mode": "federated",
        "runtime": "deploy",
        "data": {
            "name": cfg.data.name,
            "users": n_users,
            "items": n_items,
            "train_interactions": examples,
            "split": cfg.data.split,
        },
        "model": cfg.model.name,
        "protocol": cfg.eval.protocol,
        "valid": loop.best_valid,
        "test": test,
        "test_clients": evaluator.clients if test else 0,
        "seconds": time.perf_counter() - start,
        "best_round": loop.best_round,
        "rounds": loop.server.round,
        "clients": n_clients,
        "seconds_per_round": float(np.mean(loop.round_seconds)) if loop.round_seconds else 0.0,
        "bytes": {
            "up_total": loop.bytes_up,
            "down_total": loop.bytes_down,
            "up_per_client_round": float(np.mean(per_client_up)) if per_client_up else 0.0,
            "down_per_client_round": float(np.mean(per_client_down)) if per_client_down else 0.0,
        },
        "stop_reason": loop.stop_reason,
        "aborted_rounds": aborted_rounds(loop.history),
        "events": len(runner.events),
        "machine": describe_machine(),
        "uploads": {
            "form": (
                "dense fixed-shape vector"
                if cfg.privacy.dense_uploads
                else "sparse rows with item ids"
            ),
            "secure_aggregation": cfg.privacy.secagg.enabled,
            "user_level_dp": cfg.privacy.dp.mode if cfg.privacy.dp.enabled else None,
            "local_dp": cfg.privacy.ldp.mechanism if cfg.privacy.ldp.enabled else None,
            "pseudo_items": cfg.privacy.obfuscation.pseudo_items,
            "client_randomness": cfg.deploy.client_randomness,
        },
    }
    if cfg.privacy.secagg.enabled:
        summary["secagg"] = secagg_summary(cfg, history)
    if resumed_from is not None:
        summary["resumed_from_round"] = resumed_from
    if privacy is not None:
        summary["privacy"] = privacy.report()
    out.write_summary(summary)
    return summary


def shared_path(out: Path) -> Path:
    return out / "shared_model.pt"
