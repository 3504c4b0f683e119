"""Devices and simulated time: profiles, traces, the round clock, deadlines with over-selection
(stragglers are dropouts to secure aggregation), availability, determinism and resume."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedrec.config import RunConfig
from fedrec.federated.configure import secagg_max_dropout
from fedrec.federated.devices import (
    DAY_S,
    HOUR_S,
    DeadlinePolicy,
    DeviceClock,
    DeviceFleet,
    load_trace,
    profile_fleet,
)
from fedrec.federated.server import RoundOutcome, ServerState, run_round
from fedrec.report.plots import plot_learning_curves
from fedrec.simulation.training import Simulation, build_simulation, train_federated
from tests.synthetic import two_taste_split

SPLIT = two_taste_split(n_users=30, n_items=24)


def _cfg(devices: dict[str, Any], privacy: dict[str, Any] | None = None, **fed: Any) -> RunConfig:
    base: dict[str, Any] = {
        "rounds": 6,
        "eval_every": 2,
        "patience": 0,
        "checkpoint_every": 2,
        "weighting": "uniform",
        "local": {"epochs": 1, "batch_size": 8, "lr": 0.3, "negatives": 2},
        "devices": devices,
    }
    base.update(fed)
    return RunConfig.model_validate(
        {
            "mode": "federated",
            "seed": 3,
            "model": {"name": "mf", "dim": 4, "init_std": 0.1},
            "eval": {"ks": [5]},
            "train": {"monitor": "HR@5"},
            "federated": base,
            "privacy": privacy or {},
        }
    )


def _ratio(x: np.ndarray) -> float:
    return float(np.quantile(x, 0.9) / np.quantile(x, 0.1))


def test_phone_profile_matches_its_documented_distributions() -> None:
    f = profile_fleet("phones", 40_000, seed=0)
    assert 9.0 < _ratio(f.speed) < 11.0
    assert abs(np.median(f.speed) / 50.0 - 1) < 0.05
    assert 18.0 < _ratio(f.down_bw) < 22.0 and 18.0 < _ratio(f.up_bw) < 22.0
    assert abs(np.median(f.down_bw) / 2.5e6 - 1) < 0.05
    # overnight charging: many more phones at 23:00 than at 14:00, and never all of them
    night, day = f.available(23 * HOUR_S).mean(), f.available(14 * HOUR_S).mean()
    assert night > 0.5 and day < 0.15 and night < 1


def test_silos_are_always_on_and_mixed_holds_its_documented_shares() -> None:
    silos = profile_fleet("silos", 5_000, seed=0)
    for h in range(24):
        assert silos.available(h * HOUR_S + 0.5).all()
    assert 1.8 < _ratio(silos.speed) < 2.2
    mixed = profile_fleet("mixed", 20_000, seed=0)
    always = np.ones(mixed.n_clients, dtype=bool)
    for hour in np.arange(0, 24, 0.25):
        always &= mixed.available(float(hour) * HOUR_S)
    assert abs(always.mean() - 0.1) < 0.01  # only the silos are on around the clock
    fast = mixed.speed > 2_000  # silos (median 5,000) against desktops and phones
    assert abs(fast.mean() - 0.1) < 0.015


def test_profiles_are_a_function_of_the_seed() -> None:
    a, b, c = (profile_fleet("mixed", 500, seed=s) for s in (4, 4, 5))
    for name in ("speed", "down_bw", "up_bw", "window_owner", "window_start", "window_end"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.speed, c.speed)


def _three() -> DeviceClock:
    fleet = DeviceFleet(
        speed=np.array([10.0, 20.0, 40.0]),
        down_bw=np.array([1000.0, 2000.0, 500.0]),
        up_bw=np.array([100.0, 200.0, 50.0]),
        window_owner=np.array([0, 1, 2]),
        window_start=np.zeros(3),
        window_end=np.full(3, DAY_S),
    )
    return DeviceClock(
        fleet=fleet,
        policy=DeadlinePolicy(),
        examples=np.array([20.0, 40.0, 40.0]),
        expected_up=np.array([300.0, 400.0, 100.0]),
        expected_down=np.full(3, 4000.0),
    )


def test_round_time_by_hand_for_three_clients() -> None:
    clock, ids = _three(), np.arange(3)
    # down + compute + up: 4000/1000 + 20/10 + 300/100 = 9; 2 + 2 + 2 = 6; 8 + 1 + 2 = 11
    d = clock.fleet.durations(ids, clock.examples, clock.expected_up, clock.expected_down)
    np.testing.assert_allclose(d, [9.0, 6.0, 11.0])
    assert clock.round_time(ids, None, None, stragglers=False) == 11.0
    # the time follows the bytes actually sent: client 2 uploads 50 bytes, not 100
    sent_up, sent_down = np.array([300, 400, 50]), np.full(3, 4000)
    assert clock.round_time(ids, sent_up, sent_down, stragglers=False) == 10.0
    k2 = replace(clock, policy=DeadlinePolicy(report_count=2))
    kept, late = k2.keep(ids, 0.0)
    assert kept.tolist() == [0, 1] and late.tolist() == [2]
    assert k2.round_time(kept, None, None, stragglers=True) == 9.0
    dl = replace(clock, policy=DeadlinePolicy(deadline_s=8.0))
    kept, late = dl.keep(ids, 0.0)
    assert kept.tolist() == [1] and late.tolist() == [0, 2]
    none = ids[:0]
    assert dl.round_time(none, None, None, stragglers=True) == 8.0


class _Spy:
    """The simulator's engine, recording whom each round ran and whom it was told dropped."""

    def __init__(self, sim: Simulation) -> None:
        self.engine = sim.engine
        self.calls: list[tuple[Any, Any]] = []

    def run(self, clients: Any, shared: Any, round_: int, dropped: Any = None) -> RoundOutcome:
        self.calls.append((clients.copy(), None if dropped is None else dropped.copy()))
        return self.engine.run(clients, shared, round_, dropped=dropped)


def _round(sim: Simulation, runner: Any, state: ServerState | None = None) -> Any:
    return run_round(
        state or sim.state,
        strategy=sim.strategy,
        selection=sim.selection,
        runner=runner,
        n_clients=sim.partition.n_clients,
        per_row_items=True,
        finalizer=sim.privacy,
        clock=sim.clock,
    )


def test_over_selection_keeps_the_k_fastest_and_drops_the_rest_as_dropouts() -> None:
    cfg = _cfg({"profile": "silos", "report_count": 5, "over_selection": 0.6})
    sim = build_simulation(cfg, SPLIT)
    assert sim.clock is not None
    spy = _Spy(sim)
    state, rep = _round(sim, spy)
    ((ran, dropped),) = spy.calls
    assert rep.selected == 8 and rep.participants == 5 and rep.dropped == 3
    assert rep.extra["stragglers"] == 3 and len(dropped) == 3
    picked = np.union1d(ran, dropped)
    c = sim.clock
    d = c.fleet.durations(
        picked, c.examples[picked], c.expected_up[picked], c.expected_down[picked]
    )
    fastest = np.sort(picked[np.argsort(d)[:5]])
    assert np.array_equal(ran, fastest)
    assert rep.extra["sim_round_s"] > 0 and state.sim_time == rep.extra["sim_time_s"]


def test_secagg_recovers_from_stragglers_as_from_dropouts() -> None:
    devices = {"profile": "silos", "report_count": 10, "over_selection": 0.3}
    plain = build_simulation(_cfg(devices), SPLIT)
    sec = build_simulation(_cfg(devices, {"secagg": {"enabled": True}}), SPLIT)
    plain_state, _ = _round(plain, plain.engine)
    spy = _Spy(sec)
    sec_state, sec_rep = _round(sec, spy)
    assert "aborted" not in sec_rep.extra and sec_rep.participants == 10
    assert len(spy.calls[0][1]) == 3  # the stragglers set up masks, then never uploaded
    # same clients summed: the unmasked sum is the plain one up to the ring's quantisation
    for k, v in plain_state.shared.items():
        torch.testing.assert_close(sec_state.shared[k], v, rtol=0, atol=1e-4)
        assert not torch.equal(sec_state.shared[k], sec.state.shared[k])


def _trace(
    path: Path, rows: list[str], header: str = "client,speed,down_bw,up_bw,availability"
) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_only_available_clients_are_selected_and_the_clock_waits_for_them(
    tmp_path: Path,
) -> None:
    n = SPLIT.train.n_users
    rows = [f"{c},100,1e6,1e6,{'always' if c < 5 else '12-13'}" for c in range(n)]
    cfg = _cfg({"profile": "trace", "trace_path": str(_trace(tmp_path / "t.csv", rows))})
    sim = build_simulation(cfg, SPLIT)
    spy = _Spy(sim)
    state, rep = _round(sim, spy)
    assert spy.calls[0][0].tolist() == [0, 1, 2, 3, 4] and rep.extra["sim_wait_s"] == 0
    noon = replace(state, sim_time=12.5 * HOUR_S)
    _round(sim, spy, noon)
    assert spy.calls[1][0].tolist() == list(range(n))
    # nobody on before 06:00: the first round waits until then
    late = [f"{c},100,1e6,1e6,6-7" for c in range(n)]
    cfg = _cfg({"profile": "trace", "trace_path": str(_trace(tmp_path / "u.csv", late))})
    sim = build_simulation(cfg, SPLIT)
    state, rep = _round(sim, sim.engine)
    assert rep.extra["sim_wait_s"] == 6 * HOUR_S
    assert state.sim_time == 6 * HOUR_S + rep.extra["sim_round_s"]


def _timeless(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_a_device_run_is_deterministic_and_resumes_identically(tmp_path: Path) -> None:
    cfg = _cfg({"profile": "phones", "report_count": 6, "over_selection": 0.5, "deadline_s": 600.0})
    a = train_federated(cfg, SPLIT, checkpoint_dir=tmp_path / "a")
    b = train_federated(cfg, SPLIT)
    assert _timeless(a.history) == _timeless(b.history)
    assert a.sim_time_s is not None and a.sim_time_s == a.history[-1]["sim_time_s"] > 0

    class _KilledError(Exception):
        pass

    def kill(record: dict[str, Any]) -> None:
        if record["round"] == 5:
            raise _KilledError

    with pytest.raises(_KilledError):
        train_federated(cfg, SPLIT, checkpoint_dir=tmp_path / "c", on_round=kill)
    resumed = train_federated(cfg, SPLIT, checkpoint_dir=tmp_path / "c", resume=True)
    assert resumed.resumed_from == 4
    assert _timeless(resumed.history) == _timeless(a.history)
    assert resumed.sim_time_s == a.sim_time_s
    for (name, p), q in zip(a.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_without_a_device_model_rounds_carry_no_clock_and_bookkeeping_changes_nothing() -> None:
    """``none`` adds no record field; always-on devices with no deadline only add bookkeeping:
    the same clients, the same model, bit for bit."""
    none = train_federated(_cfg({}, sampling="count", count=7), SPLIT)
    assert none.sim_time_s is None and not any("sim_time_s" in r for r in none.history)
    silos = train_federated(_cfg({"profile": "silos"}, sampling="count", count=7), SPLIT)
    for p, q in zip(none.model.parameters(), silos.model.parameters(), strict=True):
        assert torch.equal(p, q)
    keep = ("round", "selected", "participants", "loss", "bytes_up", "valid/HR@5")
    for r, s in zip(none.history, silos.history, strict=True):
        assert {k: r.get(k) for k in keep} == {k: s.get(k) for k in keep}


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("client,speed,up_bw,availability", ["0,1,1,always"], "missing column"),
        (None, ["0,1,1,1,always", "0,1,1,1,always"], "client 0 appears twice"),
        (None, ["0,1,1,1,always"], "2 client(s) missing"),
        (None, ["7,1,1,1,always"], "client 7 is not in 0..2"),
        (None, ["x,1,1,1,always"], "client must be an integer"),
        (None, ["0,0,1,1,always"], "must be positive"),
        (None, ["0,1,1,1,25-3"], "availability window '25-3'"),
        (None, ["0,1,1,1,"], "no availability window"),
    ],
)
def test_trace_errors_are_clear(
    tmp_path: Path, header: str | None, rows: list[str], message: str
) -> None:
    path = _trace(tmp_path / "bad.csv", rows, *(() if header is None else (header,)))
    with pytest.raises(ValueError, match="device trace") as err:
        load_trace(path, 3)
    assert message in str(err.value)


def test_a_trace_is_read_with_windows_across_midnight(tmp_path: Path) -> None:
    rows = ["1,50,2e6,1e6,22-6", "0,10,1e6,5e5,always", "2,5,1e5,1e5,8.5-9;12-13"]
    f = load_trace(_trace(tmp_path / "t.csv", rows), 3)
    assert f.speed.tolist() == [10.0, 50.0, 5.0] and f.up_bw.tolist() == [5e5, 1e6, 1e5]
    assert f.available(23 * HOUR_S).tolist() == [True, True, False]
    assert f.available(DAY_S + 3 * HOUR_S).tolist() == [True, True, False]
    assert f.available(8.75 * HOUR_S).tolist() == [True, False, True]
    assert f.available(9 * HOUR_S).tolist() == [True, False, False]
    assert f.next_available(9 * HOUR_S) == 9 * HOUR_S


@pytest.mark.parametrize(
    ("devices", "privacy", "message"),
    [
        ({"profile": "trace"}, {}, "trace_path"),
        ({"profile": "phones", "over_selection": 0.3}, {}, "needs federated.devices.report_count"),
        ({"deadline_s": 10.0}, {}, "need a device profile"),
        (
            {"profile": "phones"},
            {"dp": {"enabled": True, "noise_multiplier": 1.0}},
            "federated.devices",
        ),
    ],
)
def test_bad_device_settings_name_the_key(
    devices: dict[str, Any], privacy: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _cfg(devices, privacy)


def test_learning_curves_against_simulated_hours(tmp_path: Path) -> None:
    history = [
        {"round": 1, "loss": 0.9, "sim_time_s": 1800.0},
        {"round": 2, "loss": 0.7, "sim_time_s": 7200.0},
    ]
    written = plot_learning_curves(history, tmp_path, x_key="sim_hours")
    assert {p.name for p in written} == {"loss.png", "learning_curves.png"}
    assert (
        plot_learning_curves([{"round": 1, "loss": 0.5}], tmp_path / "x", x_key="sim_hours") == []
    )
    with pytest.raises(ValueError, match="x_key"):
        plot_learning_curves(history, tmp_path, x_key="hours")


def test_over_selected_stragglers_count_as_planned_secagg_dropout() -> None:
    """SecAgg+ picks (k, t) for the dropout a round plans: 0.3 over-selection cuts 3 of every 13
    selected clients, so the default becomes 0.3/1.3 + 0.05, and a hand-set rate below it is
    refused."""
    devices = {"profile": "silos", "report_count": 10, "over_selection": 0.3}
    cfg = _cfg(devices, {"secagg": {"enabled": True}}, dropout=0.1)
    assert secagg_max_dropout(cfg) == pytest.approx(0.3 / 1.3 + 0.05, abs=1e-6)
    assert secagg_max_dropout(_cfg({}, {"secagg": {"enabled": True}}, dropout=0.1)) == 0.15
    with pytest.raises(ValueError, match=r"planned dropout 0\.231"):
        _cfg(devices, {"secagg": {"enabled": True, "max_dropout": 0.2}})
