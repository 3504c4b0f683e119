"""Privacy accounting: reference values, adjacency/sampling conventions, calibration, budget."""

from __future__ import annotations

import json
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.privacy.accounting import PrivacyAccountant, calibrate_noise

DELTA = 1e-5


def _events(event: dp_accounting.DpEvent) -> list[dp_accounting.DpEvent]:
    """Every event in a composed event tree."""
    out = [event]
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        out += _events(event.event)
    elif isinstance(event, dp_accounting.ComposedDpEvent):
        for e in event.events:
            out += _events(e)
    elif isinstance(
        event,
        dp_accounting.PoissonSampledDpEvent | dp_accounting.SampledWithoutReplacementDpEvent,
    ):
        out += _events(event.event)
    return out


# ----------------------------------------------------------------- reference values
def test_reference_rdp() -> None:
    acc = PrivacyAccountant(1.0, 0.1, "poisson", "rdp")
    acc.step(100)
    assert acc.steps == 100
    assert acc.epsilon(DELTA) == pytest.approx(7.90, abs=0.005)


def test_reference_pld() -> None:
    acc = PrivacyAccountant(1.0, 0.1, "poisson", "pld")
    acc.step(100)
    assert acc.epsilon(DELTA) == pytest.approx(7.05, abs=0.005)


def test_rdp_matches_fresh_dp_accounting_composition() -> None:
    """Anyone can recompute epsilon from dp_event() with a fresh accountant."""
    acc = PrivacyAccountant(1.3, 0.1)
    acc.step(37)
    fresh = rdp_privacy_accountant.RdpAccountant(neighboring_relation=acc.neighboring_relation)
    fresh.compose(acc.dp_event())
    assert acc.epsilon(DELTA) == pytest.approx(fresh.get_epsilon(DELTA), rel=1e-12)


def test_describe_recomputes_epsilon_independently() -> None:
    acc = PrivacyAccountant(0.9, sampling="fixed", population=400, sample_size=40)
    acc.step(20)
    d = json.loads(json.dumps(acc.describe(DELTA)))
    assert set(d) == {
        "epsilon",
        "delta",
        "noise_multiplier",
        "sampling_rate",
        "sampling",
        "rounds",
        "accountant",
        "population",
        "sample_size",
        "amplification",
        "neighboring_relation",
        "dp_event",
    }
    assert d["amplification"] is True and d["neighboring_relation"] == "REPLACE_ONE"
    # Replace-one: the clipped sum's sensitivity is 2C, so the ratio is z / 2.
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.SampledWithoutReplacementDpEvent(
            d["population"],
            d["sample_size"],
            dp_accounting.GaussianDpEvent(d["noise_multiplier"] / 2),
        ),
        d["rounds"],
    )
    fresh = rdp_privacy_accountant.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    fresh.compose(event)
    assert d["epsilon"] == pytest.approx(fresh.get_epsilon(d["delta"]), rel=1e-12)


def test_describe_fields() -> None:
    acc = PrivacyAccountant(1.0, 0.1)
    acc.step(3)
    assert set(acc.describe(DELTA)) == {
        "epsilon",
        "delta",
        "noise_multiplier",
        "sampling_rate",
        "sampling",
        "rounds",
        "accountant",
        "amplification",
        "neighboring_relation",
        "dp_event",
    }
    d = acc.describe(DELTA)
    assert (d["rounds"], d["sampling"], d["accountant"]) == (3, "poisson", "rdp")
    assert d["dp_event"] == repr(acc.dp_event()) and "PoissonSampledDpEvent" in d["dp_event"]
    pld = PrivacyAccountant(1.0, 0.1, accountant="pld", pld_discretization=1e-2)
    assert pld.describe(DELTA)["pld_discretization"] == 1e-2


# ----------------------------------------------------------------- sampling and adjacency
def test_fixed_size_never_uses_poisson_events_and_differs() -> None:
    fixed = PrivacyAccountant(1.0, sampling="fixed", population=1000, sample_size=100)
    poisson = PrivacyAccountant(1.0, 0.1)
    fixed.step(50)
    poisson.step(50)
    kinds = {type(e) for e in _events(fixed.dp_event())}
    assert dp_accounting.SampledWithoutReplacementDpEvent in kinds
    assert dp_accounting.PoissonSampledDpEvent not in kinds
    assert fixed.neighboring_relation is dp_accounting.NeighboringRelation.REPLACE_ONE
    assert fixed.sampling_rate == pytest.approx(0.1)
    assert fixed.epsilon(DELTA) != pytest.approx(poisson.epsilon(DELTA), rel=0.05)


def test_fixed_full_participation_is_sound_for_replace_one() -> None:
    """A valid bound is >= the exact epsilon of one Gaussian with replace-one sensitivity 2C."""
    z = 2.0
    acc = PrivacyAccountant(z, sampling="fixed", population=10, sample_size=10)
    acc.step(1)
    exact = dp_accounting.get_epsilon_gaussian(z / 2, DELTA)  # std z*C over sensitivity 2C
    assert acc.epsilon(DELTA) >= exact
    assert acc.epsilon(DELTA) < 1.3 * exact  # RDP is loose, not wildly so


def test_fixed_pld_is_refused() -> None:
    with pytest.raises(ValueError, match="accountant='rdp'"):
        PrivacyAccountant(1.0, sampling="fixed", population=100, sample_size=10, accountant="pld")


def test_full_participation_has_no_amplification() -> None:
    acc = PrivacyAccountant(1.5, 1.0)
    acc.step(10)
    plain = rdp_privacy_accountant.RdpAccountant()
    plain.compose(dp_accounting.GaussianDpEvent(1.5), 10)
    assert acc.epsilon(DELTA) == pytest.approx(plain.get_epsilon(DELTA), rel=1e-12)
    sampled = PrivacyAccountant(1.5, 0.5)
    sampled.step(10)
    assert sampled.epsilon(DELTA) < acc.epsilon(DELTA)


def test_zero_noise_and_zero_rounds() -> None:
    for kwargs in (
        {"sampling_rate": 0.1},
        {"sampling": "fixed", "population": 10, "sample_size": 2},
    ):
        acc = PrivacyAccountant(0.0, **kwargs)  # type: ignore[arg-type]
        assert acc.epsilon(DELTA) == 0.0
        acc.step()
        assert acc.epsilon(DELTA) == math.inf
        assert acc.would_exceed(100.0, DELTA)


# ----------------------------------------------------------------- monotonicity
_MONO = PrivacyAccountant(1.1, 0.05)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 500), st.integers(1, 500))
def test_more_rounds_more_epsilon(r1: int, r2: int) -> None:
    lo, hi = sorted((r1, r2))
    assert _MONO.epsilon_after(lo, DELTA) <= _MONO.epsilon_after(hi, DELTA)
    if lo < hi:
        assert _MONO.epsilon_after(lo, DELTA) < _MONO.epsilon_after(hi, DELTA)


@settings(max_examples=4, deadline=None)
@given(st.floats(0.5, 4.0), st.floats(1.05, 2.0), st.sampled_from(["rdp", "pld"]))
def test_more_noise_less_epsilon(z: float, factor: float, kind: str) -> None:
    kw = {"accountant": kind, "pld_discretization": 1e-2}
    a = PrivacyAccountant(z, 0.2, **kw)  # type: ignore[arg-type]
    b = PrivacyAccountant(z * factor, 0.2, **kw)  # type: ignore[arg-type]
    a.step(20)
    b.step(20)
    assert b.epsilon(DELTA) < a.epsilon(DELTA)


# ----------------------------------------------------------------- calibration
def test_calibrate_round_trip_rdp() -> None:
    z = calibrate_noise(8.0, DELTA, 100, 0.1, tol=1e-2)
    assert z == pytest.approx(0.99, abs=0.015)  # eps(z=1) = 7.90 < 8
    acc = PrivacyAccountant(z, 0.1)
    assert 7.8 < acc.epsilon_after(100, DELTA) <= 8.0
    assert PrivacyAccountant(z - 1e-2, 0.1).epsilon_after(100, DELTA) > 8.0


def test_calibrate_round_trip_pld() -> None:
    kw = {"accountant": "pld", "pld_discretization": 1e-2}
    z = calibrate_noise(3.0, DELTA, 50, 0.05, tol=1e-2, **kw)  # type: ignore[arg-type]
    eps = PrivacyAccountant(z, 0.05, **kw).epsilon_after(50, DELTA)  # type: ignore[arg-type]
    assert 2.9 < eps <= 3.0
    assert PrivacyAccountant(z - 1e-2, 0.05, **kw).epsilon_after(50, DELTA) > 3.0  # type: ignore[arg-type]


def test_calibrate_round_trip_fixed() -> None:
    # Full participation keeps this fast; q < 1 fixed accounting is covered above.
    kw = {"sampling": "fixed", "population": 20, "sample_size": 20}
    z = calibrate_noise(5.0, DELTA, 30, tol=1e-3, **kw)  # type: ignore[arg-type]
    assert PrivacyAccountant(z, **kw).epsilon_after(30, DELTA) <= 5.0  # type: ignore[arg-type]
    assert PrivacyAccountant(z - 1e-3, **kw).epsilon_after(30, DELTA) > 5.0  # type: ignore[arg-type]
    # Replace-one doubles the sensitivity, hence the noise, of add/remove-one.
    z_poisson = calibrate_noise(5.0, DELTA, 30, 1.0, tol=1e-3)
    assert z == pytest.approx(2 * z_poisson, abs=3e-3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_epsilon": 0.0}, "target_epsilon"),
        ({"target_epsilon": -1.0}, "target_epsilon"),
        ({"target_epsilon": math.inf}, "target_epsilon"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"sampling_rate": 0.0}, "sampling_rate"),
        ({"sampling_rate": 1.5}, "sampling_rate"),
        ({"rounds": 0}, "rounds"),
        ({"tol": 0.0}, "tol"),
        ({"max_noise_multiplier": 0.0}, "max_noise_multiplier"),
        ({"target_epsilon": 0.5, "max_noise_multiplier": 2.0}, "unreachable"),
    ],
)
def test_calibrate_errors(kwargs: dict[str, float], match: str) -> None:
    args: dict[str, float] = {
        "target_epsilon": 2.0,
        "delta": DELTA,
        "rounds": 10,
        "sampling_rate": 1.0,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        calibrate_noise(**args)  # type: ignore[arg-type]


# ----------------------------------------------------------------- budget stop
def test_training_loop_stops_before_exceeding_budget() -> None:
    acc = PrivacyAccountant(1.0, 0.1)
    target = acc.epsilon_after(25, DELTA) + 1e-9
    ran = 0
    while not acc.would_exceed(target, DELTA) and ran < 1000:
        acc.step()
        ran += 1
    assert ran == 25
    assert acc.epsilon(DELTA) <= target
    assert acc.epsilon_after(26, DELTA) > target


def test_rounds_within_budget() -> None:
    acc = PrivacyAccountant(1.0, 0.1)
    acc.step(5)
    target = acc.epsilon_after(40, DELTA) + 1e-9
    assert acc.rounds_within_budget(target, DELTA, max_rounds=1000) == 35
    assert acc.rounds_within_budget(target, DELTA, max_rounds=10) == 10
    acc.step(35)
    assert acc.rounds_within_budget(target, DELTA, max_rounds=1000) == 0
    assert acc.would_exceed(target, DELTA)


# ----------------------------------------------------------------- serialization
@pytest.mark.parametrize(
    "acc",
    [
        PrivacyAccountant(1.2, 0.03),
        PrivacyAccountant(1.2, 0.03, accountant="pld", pld_discretization=1e-2),
        PrivacyAccountant(1.2, sampling="fixed", population=300, sample_size=9),
    ],
)
def test_serialization_round_trip(acc: PrivacyAccountant) -> None:
    acc.step(12)
    restored = PrivacyAccountant.from_dict(json.loads(json.dumps(acc.to_dict())))
    assert restored.to_dict() == acc.to_dict()
    assert restored.steps == 12
    # Same events and accountant settings, hence the same epsilon (checked where it is cheap).
    assert restored.dp_event() == acc.dp_event()
    assert restored.neighboring_relation is acc.neighboring_relation
    if acc.accountant == "rdp" and acc.sampling == "poisson":
        assert restored.epsilon(DELTA) == acc.epsilon(DELTA)


def test_from_dict_rejects_bad_state() -> None:
    state = PrivacyAccountant(1.0, 0.1).to_dict()
    del state["steps"]
    with pytest.raises(ValueError, match="missing \\['steps'\\]"):
        PrivacyAccountant.from_dict(state)
    state = PrivacyAccountant(1.0, 0.1).to_dict() | {"extra": 1}
    with pytest.raises(ValueError, match="unexpected \\['extra'\\]"):
        PrivacyAccountant.from_dict(state)


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise_multiplier": -1.0, "sampling_rate": 0.1}, "noise_multiplier"),
        ({"noise_multiplier": math.nan, "sampling_rate": 0.1}, "noise_multiplier"),
        ({"noise_multiplier": 1.0}, "sampling_rate is required"),
        ({"noise_multiplier": 1.0, "sampling_rate": 0.0}, "sampling_rate"),
        ({"noise_multiplier": 1.0, "sampling_rate": 1.01}, "sampling_rate"),
        ({"noise_multiplier": 1.0, "sampling_rate": 0.1, "sampling": "uniform"}, "sampling"),
        ({"noise_multiplier": 1.0, "sampling_rate": 0.1, "accountant": "gdp"}, "accountant"),
        ({"noise_multiplier": 1.0, "sampling_rate": 0.1, "population": 10}, "only apply"),
        ({"noise_multiplier": 1.0, "sampling": "fixed", "population": 10}, "sample_size"),
        (
            {"noise_multiplier": 1.0, "sampling": "fixed", "population": 10, "sample_size": 11},
            "cannot exceed",
        ),
        (
            {"noise_multiplier": 1.0, "sampling": "fixed", "population": 10, "sample_size": 0},
            "sample_size",
        ),
        (
            {"noise_multiplier": 1.0, "sampling": "fixed", "population": True, "sample_size": 1},
            "population",
        ),
        (
            {
                "noise_multiplier": 1.0,
                "sampling_rate": 0.5,
                "sampling": "fixed",
                "population": 10,
                "sample_size": 2,
            },
            "disagrees",
        ),
    ],
)
def test_constructor_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PrivacyAccountant(**kwargs)  # type: ignore[arg-type]


def test_method_errors() -> None:
    acc = PrivacyAccountant(1.0, 0.1)
    acc.step()
    for delta in (0.0, 1.0, -0.1, 2.0):
        with pytest.raises(ValueError, match="delta"):
            acc.epsilon(delta)
    with pytest.raises(ValueError, match="rounds"):
        acc.step(-1)
    with pytest.raises(ValueError, match="rounds"):
        acc.step(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_epsilon"):
        acc.would_exceed(0.0, DELTA)


# ----------------------------------------------------------------- against the sampler
def _gdp_epsilon(mu: float, delta: float) -> float:
    """Epsilon of a mu-GDP mechanism at ``delta`` (Dong, Roth & Su 2022, Cor. 2.13), solved by
    bisection: T rounds of the Gaussian mechanism at z are exactly sqrt(T)/z-GDP."""
    from scipy import stats

    def d(eps: float) -> float:
        return float(
            stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)
        )

    lo, hi = 0.0, 200.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if d(mid) > delta else (lo, mid)
    return hi


def test_without_amplification_is_the_plain_gaussian_mechanism_composed() -> None:
    """Against whoever picked the participants, q = 0.1 counts as q = 1."""
    z, rounds = 4.0, 50
    acc = PrivacyAccountant(z, 0.1, "poisson", "pld")
    acc.step(rounds)
    server = acc.without_amplification()
    assert server.steps == rounds and not server.amplification and acc.amplification
    assert server.epsilon(DELTA) == pytest.approx(
        _gdp_epsilon(math.sqrt(rounds) / z, DELTA), rel=1e-6
    )
    assert server.epsilon(DELTA) == pytest.approx(8.5959, abs=1e-3)
    assert acc.epsilon(DELTA) < 1.0  # amplified: against the released model only


def test_rdp_without_amplification_is_alpha_over_two_z_squared_per_round() -> None:
    z, rounds = 1.0, 100
    amplified = PrivacyAccountant(z, 0.1)
    amplified.step(rounds)
    server = amplified.without_amplification()
    orders = np.array(rdp_privacy_accountant.DEFAULT_RDP_ORDERS, dtype=float)
    hand = rdp_privacy_accountant.compute_epsilon(orders, rounds * orders / (2 * z * z), DELTA)[0]
    assert server.epsilon(DELTA) == pytest.approx(hand, rel=1e-12)
    assert server.epsilon(DELTA) == pytest.approx(96.116, abs=1e-3)
    assert amplified.epsilon(DELTA) == pytest.approx(7.90, abs=0.005)
    everyone = PrivacyAccountant(z, 1.0)
    everyone.step(rounds)
    assert server.epsilon(DELTA) == pytest.approx(everyone.epsilon(DELTA), rel=1e-12)


def test_fixed_size_sampling_without_amplification_keeps_the_replace_one_ratio() -> None:
    acc = PrivacyAccountant(2.0, sampling="fixed", population=100, sample_size=10)
    acc.step(10)
    server = acc.without_amplification()
    assert server.neighboring_relation == dp_accounting.NeighboringRelation.REPLACE_ONE
    gaussian = PrivacyAccountant(1.0, 1.0)  # z / 2: sensitivity 2C
    gaussian.step(10)
    assert server.epsilon(DELTA) == pytest.approx(gaussian.epsilon(DELTA), rel=1e-12)


def test_amplification_survives_a_checkpoint_and_old_states_were_amplified() -> None:
    server = PrivacyAccountant(1.0, 0.2).without_amplification()
    server.step(3)
    again = PrivacyAccountant.from_dict(json.loads(json.dumps(server.to_dict())))
    assert not again.amplification and again.epsilon(DELTA) == server.epsilon(DELTA)
    old = {k: v for k, v in PrivacyAccountant(1.0, 0.2).to_dict().items() if k != "amplification"}
    assert PrivacyAccountant.from_dict(old).amplification
    with pytest.raises(ValueError, match="amplification"):
        PrivacyAccountant(1.0, 0.2, amplification="no")  # type: ignore[arg-type]


def test_calibration_without_amplification_spends_the_target_against_the_server() -> None:
    z = calibrate_noise(8.0, DELTA, 20, 0.1, amplification=False)
    acc = PrivacyAccountant(z, 0.1, amplification=False)
    assert (
        acc.epsilon_after(20, DELTA)
        <= 8.0
        < PrivacyAccountant(z - 2e-3, 0.1, amplification=False).epsilon_after(20, DELTA)
    )
    assert z > calibrate_noise(8.0, DELTA, 20, 0.1)  # more noise than the amplified figure needs
