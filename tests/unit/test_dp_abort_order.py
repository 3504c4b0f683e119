"""Distributed DP aborts a round with too few masked inputs BEFORE anything is unmasked: the
SecAgg+ server asks for no unmasking share, each client refuses to unmask below its own m, no
update is applied, nothing is accounted, and the run goes on. In the simulator, in the SecAgg+
state machines and over the in-process deployment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import fedrec.federated.loop as loop_mod
from fedrec.config import RunConfig, dump_config
from fedrec.deploy.client import ClientError, Device
from fedrec.deploy.inprocess import InProcessTransport
from fedrec.deploy.node import handle
from fedrec.deploy.payload import Payload
from fedrec.deploy.pending import PendingRound
from fedrec.deploy.server import serve
from fedrec.deploy.shards import write_shards
from fedrec.experiment.outputs import RunDirectory
from fedrec.federated.loop import aborted_rounds
from fedrec.federated.server import run_round
from fedrec.privacy.dp import min_survivors
from fedrec.privacy.secagg import (
    MalformedMessageError,
    RoundParams,
    SecAggAbort,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    SecAggSession,
    StageError,
    TooFewInputsError,
    UnknownClientError,
)
from fedrec.privacy.secagg.messages import UnmaskRequest, UnmaskShares
from fedrec.privacy.secagg.persist import export_client, restore_client
from fedrec.simulation.training import build_simulation
from tests.synthetic import mf_run_config, two_taste_split


class _Spy:
    """Counts calls of SecAggServer / SecAggClient methods (and the round of each)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: dict[str, list[int]] = {}
        for cls, name in (
            (SecAggServer, "aggregate"),
            (SecAggServer, "receive_unmask_shares"),
            (SecAggServer, "receive_masked_input"),
            (SecAggClient, "unmask"),
        ):
            self._wrap(monkeypatch, cls, name)

    def _wrap(self, monkeypatch: pytest.MonkeyPatch, cls: Any, name: str) -> None:
        real = getattr(cls, name)
        calls = self.calls.setdefault(name, [])

        def spy(obj: Any, *args: Any) -> Any:
            calls.append(obj.params.round_)
            return real(obj, *args)

        monkeypatch.setattr(cls, name, spy)

    def count(self, name: str, round_: int) -> int:
        return self.calls[name].count(round_)


# m, hand-computed ---------------------------------------------------------------------------
def test_min_survivors_is_the_floor_of_the_expected_clients_left_by_the_allowance() -> None:
    # ML-100K, Poisson rate 0.05 over 943 clients, allowance 0.3: floor(47.15 * 0.7) = 33
    assert min_survivors(943 * 0.05, 0.3) == 33
    assert min_survivors(5, 0.1) == 4  # floor(4.5)
    assert min_survivors(30, 0.2) == 24
    assert min_survivors(30, 0.0) == 30
    assert min_survivors(2, 0.9) == 1  # floor(0.2), but at least one client
    for bad in ((0.0, 0.1), (10.0, 1.0), (10.0, -0.1), (float("nan"), 0.1)):
        with pytest.raises(ValueError):
            min_survivors(*bad)


# The SecAgg+ state machines -----------------------------------------------------------------
def _stage1(
    n: int, server_min: int, client_min: int
) -> tuple[SecAggServer, dict[int, SecAggClient]]:
    params = RoundParams.create(range(n), 4, SecAggConfig(), 2, b"abort-order")
    server = SecAggServer(params, min_inputs=server_min)
    clients = {c: SecAggClient(c, params, min_inputs=client_min) for c in range(n)}
    for c in clients.values():
        server.receive_advertise_keys(c.advertise_keys())
    for c, msg in server.neighbour_keys().items():
        server.receive_share_keys(clients[c].share_keys(msg))
    for c, msg in server.forward_shares().items():
        server.receive_receipt(clients[c].receive_shares(msg))
    return server, clients


def _mask(server: SecAggServer, clients: dict[int, SecAggClient], submit: list[int]) -> None:
    for c, req in server.masking_requests().items():
        if c in submit:
            server.receive_masked_input(clients[c].masked_input(req, np.ones(4)))


def test_server_asks_no_unmasking_share_below_min_inputs() -> None:
    server, clients = _stage1(8, server_min=6, client_min=6)
    _mask(server, clients, submit=[0, 1, 2, 3, 4])  # 5 masked inputs arrived, m = 6
    with pytest.raises(TooFewInputsError, match=r"5 of 8 .* fewer than the 6.*before unmasking"):
        server.unmask_requests()
    # The round is over: no share can be taken in, nothing can be unmasked.
    with pytest.raises(StageError):
        server.aggregate()
    with pytest.raises(StageError):
        server.receive_unmask_shares(UnmaskShares(2, 0, (), ()))


def test_exactly_m_inputs_unmask_and_the_request_names_them() -> None:
    server, clients = _stage1(8, server_min=6, client_min=6)
    _mask(server, clients, submit=[0, 1, 2, 3, 4, 5])
    requests = server.unmask_requests()
    assert all(r.included == (0, 1, 2, 3, 4, 5) for r in requests.values())
    for c, req in requests.items():
        server.receive_unmask_shares(clients[c].unmask(req))
    np.testing.assert_allclose(server.aggregate().total, 6.0, atol=1e-5)


def test_session_aborts_before_any_unmasking_message() -> None:
    seen: list[str] = []

    def hook(kind: Any, c: int, data: bytes) -> bytes:
        seen.append(kind.name)
        return data

    s = SecAggSession(range(10), 3, SecAggConfig(), 0, 1, wire_hook=hook, min_inputs=9)
    for c in range(8):
        s.submit(c, np.zeros(3))
    with pytest.raises(TooFewInputsError):
        s.finish(dropped=[8, 9])
    assert seen.count("MASKED_INPUT") == 8
    assert "UNMASK_REQUEST" not in seen and "UNMASK_SHARES" not in seen


def test_client_refuses_to_unmask_below_its_own_minimum() -> None:
    """A server that lowered its own m (here to 1) still gets no share: every client holds
    m = 6 and the request's included set has 5."""
    server, clients = _stage1(8, server_min=1, client_min=6)
    _mask(server, clients, submit=[0, 1, 2, 3, 4])
    for c, req in server.unmask_requests().items():
        assert len(req.included) == 5
        with pytest.raises(SecAggAbort, match=r"refusing to unmask: .* only 5 inputs.* 6"):
            clients[c].unmask(req)
        with pytest.raises(StageError):  # it stays refused: a retry gets nothing either
            clients[c].unmask(req)
    with pytest.raises(SecAggAbort, match="survived unmasking"):
        server.aggregate()


def test_client_checks_the_included_set_against_its_own_neighbourhood() -> None:
    server, clients = _stage1(8, server_min=1, client_min=2)
    _mask(server, clients, submit=[0, 1, 2, 3, 4, 5])
    req = server.unmask_requests()[0]
    r, s, d = req.round_, req.survivors, req.dropped
    with pytest.raises(MalformedMessageError, match="does not list it"):
        clients[0].unmask(UnmaskRequest(r, 0, s, d))  # no included set at all
    with pytest.raises(UnknownClientError, match="not in this round"):
        clients[0].unmask(UnmaskRequest(r, 0, s, d, (*req.included, 40, 41, 42)))
    padded = tuple(sorted({*req.included, *d}))  # a dropped neighbour counted as included
    with pytest.raises(MalformedMessageError, match="disagrees"):
        clients[0].unmask(UnmaskRequest(r, 0, s, d, padded))
    assert isinstance(clients[0].unmask(req), UnmaskShares)  # the honest request still works


def test_wire_and_stored_state_keep_the_included_set_and_the_minimum() -> None:
    req = UnmaskRequest(3, 7, (1, 7), (9,), (1, 2, 7))
    assert UnmaskRequest.from_bytes(req.to_bytes()) == req
    params = RoundParams.create(range(4), 4, SecAggConfig(), 0, b"persist")
    c = SecAggClient(2, params, min_inputs=3)
    assert restore_client(params, export_client(c)).min_inputs == 3


# Simulation ---------------------------------------------------------------------------------
class _ScriptedDrops:
    """The configured selection, but round r drops exactly ``plan[r]`` after key set-up."""

    def __init__(self, inner: Any, plan: list[set[int]]) -> None:
        self.inner, self.plan = inner, plan

    def select(self, n: int, rng: np.random.Generator, weights: Any = None) -> Any:
        return self.inner.select(n, rng, weights)

    def drop(self, selected: Any, rng: np.random.Generator) -> tuple[Any, Any]:
        gone = np.isin(selected, sorted(self.plan.pop(0)))
        return selected[~gone], selected[gone]


def _sim_cfg() -> RunConfig:
    return mf_run_config(
        {
            "rounds": 3,
            "weighting": "uniform",
            "item_aggregation": "fedavg",
            "local": {"epochs": 1, "batch_size": 8, "lr": 0.3, "negatives": 2},
        },
        {
            "secagg": {"enabled": True},
            "dp": {
                "enabled": True,
                "mode": "distributed",
                "noise_multiplier": 1.0,
                "clip": 1.0,
                "dropout_allowance": 0.2,
            },
        },
    )


def test_simulated_round_below_m_is_never_unmasked_and_the_run_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = build_simulation(_sim_cfg(), two_taste_split(n_users=30, n_items=24))
    assert sim.privacy is not None and sim.privacy.accountant is not None
    assert sim.partition.n_clients == 30 and sim.privacy.min_survivors() == 24
    spy = _Spy(monkeypatch)
    selection = _ScriptedDrops(sim.selection, [set(range(10)), set()])
    state, reports, delta = sim.state, [], 1e-5
    eps = [sim.privacy.accountant.epsilon(delta)]
    shared = [{k: v.clone() for k, v in state.shared.items()}]
    for _ in range(2):
        state, rep = run_round(
            state,
            strategy=sim.strategy,
            selection=selection,  # type: ignore[arg-type]
            runner=sim.engine,
            n_clients=30,
            per_row_items=False,
            finalizer=sim.privacy,
        )
        reports.append(rep.as_dict())
        eps.append(sim.privacy.accountant.epsilon(delta))
        shared.append({k: v.clone() for k, v in state.shared.items()})
    # Round 1: 20 masked inputs arrived (m = 24); no share asked, nothing unmasked or applied.
    assert spy.count("receive_masked_input", 0) == 20
    assert spy.count("unmask", 0) == 0 and spy.count("receive_unmask_shares", 0) == 0
    assert spy.count("aggregate", 0) == 0
    assert "before unmasking" in reports[0]["aborted"] and not reports[0]["aborted_released"]
    for k in shared[0]:
        assert torch.equal(shared[1][k], shared[0][k]), k
    assert eps[1] == eps[0] == 0.0 and sim.privacy.accountant.steps == 1
    # Round 2: everyone survives; the sum is unmasked once, applied and accounted.
    assert spy.count("aggregate", 1) == 1 and "aborted" not in reports[1]
    assert any(not torch.equal(shared[2][k], shared[1][k]) for k in shared[1])
    assert eps[2] > 0.0
    assert aborted_rounds(reports) == {
        "total": 1,
        "nothing_released": 1,
        "released_and_accounted": 0,
    }


def test_a_sum_the_server_already_holds_is_accounted_if_its_round_aborts() -> None:
    """The last check on a released sum: if too few clients' noise reached it (only possible
    if secure aggregation did not stop the round), the round is still accounted."""
    sim = build_simulation(_sim_cfg(), two_taste_split(n_users=30, n_items=24))
    assert sim.privacy is not None and sim.privacy.accountant is not None
    from fedrec.federated.aggregate import Accumulator
    from fedrec.federated.server import RoundAbortedError

    acc = Accumulator.zeros(sim.layout, sim.state.shared, 24)
    acc.add_clients(torch.ones(20), 0, 0.0)
    with pytest.raises(RoundAbortedError, match="already held") as err:
        sim.privacy.finalize(acc, 0, np.arange(20))
    assert err.value.released and sim.privacy.accountant.steps == 1


# Deployment over the in-process transport ---------------------------------------------------
class _FlowerLikeTransport(InProcessTransport):
    """A client that raises answers with an error reply (as the Flower ClientApp does)."""

    def __init__(self, devices: dict[int, Device]) -> None:
        super().__init__(devices)
        self.errors: list[tuple[int, str, str]] = []
        self.pending_after_error: dict[int, int | None] = {}
        """The round a client still held SecAgg+ secrets for right after it refused."""

    def exchange(
        self, kind: str, requests: dict[int, Payload], timeout: float
    ) -> dict[int, Payload]:
        out = {}
        for c, req in requests.items():
            try:
                out.update(super().exchange(kind, {c: req}, timeout))
            except Exception as err:  # every refusal becomes an error reply
                self.errors.append((c, str(req.meta.get("stage", kind)), str(err)))
                run_dir = self.devices[c].state_dir / f"run-{req.meta['run']}"
                self.pending_after_error[c] = PendingRound(run_dir).round()
                out[c] = Payload(meta={"error": str(err)})
        return out


def _deploy_cfg(server_model: str = "semi-honest", **dp: Any) -> RunConfig:
    return mf_run_config(
        {
            "rounds": 2,
            "partition": "random",
            "silos": 5,
            "eval_every": 1,
            "patience": 0,
            "checkpoint_every": 1,
            "server_lr": 2.0,
            "weighting": "uniform",
            "item_aggregation": "fedavg",
            "local": {"epochs": 1, "batch_size": 8, "lr": 1.0, "negatives": 2},
        },
        {
            "secagg": {"enabled": True, "clip": 4.0, "server_model": server_model},
            "dp": {
                "enabled": True,
                "mode": "distributed",
                "noise_multiplier": 0.3,
                "clip": 0.5,
                **dp,
            },
        },
        dim=8,
        seed=3,
        deploy={"client_randomness": "run-seed", "wait_clients_s": 5},
    )


def _deploy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cfg: RunConfig
) -> tuple[dict[str, Any], list[dict[str, Any]], list[Any], _FlowerLikeTransport, list[Any]]:
    """Serve ``cfg`` (5 clients, m = 4); in round 1, clients 1 and 2 send their masked inputs
    but the replies are lost. Returns summary, records, (round, stage) of each SecAgg request,
    the transport, and (shared before, shared after) of each round."""
    split = two_taste_split(40, 30, per_user=7, string_ids=True)
    paths = write_shards(cfg, split, tmp_path / "shards")
    devices = {i: Device(p, tmp_path / "state" / p.name) for i, p in enumerate(paths)}
    transport = _FlowerLikeTransport(devices)
    original = transport.exchange
    sent: list[tuple[int, str]] = []

    def exchange(kind: str, requests: dict[int, Payload], timeout: float) -> dict[int, Payload]:
        meta = next(iter(requests.values())).meta if requests else {}
        if kind == "secagg":
            sent.append((int(meta["round"]), str(meta["stage"])))
        replies = original(kind, requests, timeout)
        if kind == "secagg" and meta["round"] == 0 and meta["stage"] == "mask":
            assert all("message" in replies[c].meta for c in (1, 2))  # really sent
            replies = {c: p for c, p in replies.items() if c not in (1, 2)}
        return replies

    transport.exchange = exchange  # type: ignore[method-assign]
    rounds: list[Any] = []
    real_round = loop_mod.run_round

    def spy_round(state: Any, **kw: Any) -> Any:
        before = {k: v.clone() for k, v in state.shared.items()}
        new, rep = real_round(state, **kw)
        rounds.append((before, {k: v.clone() for k, v in new.shared.items()}))
        return new, rep

    monkeypatch.setattr(loop_mod, "run_round", spy_round)
    summary = serve(cfg, transport, RunDirectory(tmp_path / "out"))
    text = (tmp_path / "out" / "metrics.jsonl").read_text()
    records = [json.loads(line) for line in text.splitlines()]
    return summary, records, sent, transport, rounds


def test_deployed_round_below_m_stops_before_unmasking_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _Spy(monkeypatch)
    summary, records, sent, transport, rounds = _deploy(tmp_path, monkeypatch, _deploy_cfg())
    assert (0, "mask") in sent and (0, "unmask") not in sent  # no unmasking request went out
    assert spy.count("receive_masked_input", 0) == 3
    assert spy.count("aggregate", 0) == 0 and spy.count("unmask", 0) == 0
    assert "before unmasking" in records[0]["aborted"] and not records[0]["aborted_released"]
    before, after = rounds[0]
    for k in before:
        assert torch.equal(after[k], before[k]), k
    assert records[0]["epsilon"] == 0.0
    # Round 2 runs normally: unmasked once, applied, accounted.
    assert (1, "unmask") in sent and spy.count("aggregate", 1) == 1
    assert "aborted" not in records[1] and records[1]["epsilon"] > 0.0
    assert any(not torch.equal(rounds[1][1][k], rounds[1][0][k]) for k in rounds[1][0])
    assert summary["rounds"] == 2 and not transport.errors
    assert summary["aborted_rounds"] == {
        "total": 1,
        "nothing_released": 1,
        "released_and_accounted": 0,
    }


def test_deployed_clients_refuse_a_server_that_lowered_m(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server is made to skip its own check (m = 1); each client holds m = 4 from its own
    configuration, refuses the unmasking request naming 3 inputs, and sends no share."""
    import fedrec.deploy.server as server_mod

    def lowered(params: RoundParams, min_inputs: int = 1) -> SecAggServer:
        return SecAggServer(params, min_inputs=1)

    monkeypatch.setattr(server_mod, "SecAggServer", lowered)
    spy = _Spy(monkeypatch)
    _, records, sent, transport, rounds = _deploy(tmp_path, monkeypatch, _deploy_cfg())
    assert (0, "unmask") in sent  # the lowered server did ask ...
    refusals = [e for e in transport.errors if e[1] == "unmask"]
    assert sorted(c for c, _, _ in refusals) == [0, 3, 4]  # ... every asked client refused
    assert all("refusing to unmask" in msg and "only 3 inputs" in msg for *_, msg in refusals)
    assert spy.count("receive_unmask_shares", 0) == 0  # no share reached the server
    assert transport.pending_after_error == {0: None, 3: None, 4: None}  # secrets deleted
    assert "survived unmasking" in records[0]["aborted"] and records[0]["epsilon"] == 0.0
    before, after = rounds[0]
    for k in before:
        assert torch.equal(after[k], before[k]), k


def test_deployed_client_refuses_a_configuration_that_lowers_m_within_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, _, _, _ = _deploy(tmp_path, monkeypatch, _deploy_cfg())
    dev = Device(tmp_path / "shards" / "client-00000", tmp_path / "state" / "client-00000")
    (run_dir,) = dev.state_dir.glob("run-*")
    lower = _deploy_cfg(dropout_allowance=0.5)  # m = floor(5 * 0.5) = 2, was 4
    meta = {
        "config": dump_config(lower),
        "round": 2,
        "nonce": "x",
        "dense": True,
        "run": run_dir.name.removeprefix("run-"),
    }
    req = Payload(meta=meta)
    req.put_params("shared", torch.load(tmp_path / "out" / "shared_model.pt"))
    with pytest.raises(ClientError, match="at least 2 inputs, fewer than the 4"):
        handle(dev, "train", req)


def test_deployed_client_refuses_a_configuration_that_drops_the_lying_server_guard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _deploy(tmp_path, monkeypatch, _deploy_cfg("lies-about-dropouts"))
    dev = Device(tmp_path / "shards" / "client-00000", tmp_path / "state" / "client-00000")
    (run_dir,) = dev.state_dir.glob("run-*")
    meta = {
        "config": dump_config(_deploy_cfg()),  # the semi-honest default: a smaller t
        "round": 2,
        "nonce": "x",
        "dense": True,
        "run": run_dir.name.removeprefix("run-"),
    }
    req = Payload(meta=meta)
    req.put_params("shared", torch.load(tmp_path / "out" / "shared_model.pt"))
    with pytest.raises(ClientError, match="refusing a later one that drops that guard"):
        handle(dev, "train", req)
