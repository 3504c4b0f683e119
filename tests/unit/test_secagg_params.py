"""SecAgg+ graph degree and threshold from the dropout rate (Bell et al. 2020, sec. 4): the
formulas against hand-computed values, the derived pairs against the target and the security
bound, hand-set pairs that fall short, a real round at 30% dropout, and the run summary."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.config import RunConfig
from fedrec.experiment.pipeline import Prepared, summarize
from fedrec.federated.configure import secagg_config, secagg_max_dropout, secagg_summary
from fedrec.privacy.secagg import SecAggAbort, SecAggConfig, SecAggSession
from fedrec.privacy.secagg.graph import neighbour_graph
from fedrec.privacy.secagg.params import (
    SecAggParamsWarning,
    abort_probability,
    analyse,
    derive,
    security_failure,
    simulate_completion,
    smallest_secure_threshold,
)
from fedrec.simulation.training import train_federated
from tests.synthetic import two_taste_split


def test_abort_probability_matches_hand_computed_binomials() -> None:
    # Harary, n = 20, k = 4, t = 3, dropout 0.1. A survivor fails when <= 1 of its 4
    # neighbours survive: 0.1^4 + 4 (0.9) 0.1^3 = 0.0037; a dropped client when <= 2 do:
    # 0.0037 + 6 (0.81) (0.01) = 0.0523. Per client 0.9 (0.0037) + 0.1 (0.0523) = 0.00856,
    # union over 20 clients: 0.1712.
    assert abort_probability(20, 4, 3, 0.1) == pytest.approx(0.1712, rel=1e-9)
    # Complete graph, n = 5, t = 3, dropout 0.2: fewer than 3 of 5 survive:
    # 0.2^5 + 5 (0.8) 0.2^4 + 10 (0.64) 0.2^3 = 0.05792.
    assert abort_probability(5, 4, 3, 0.2) == pytest.approx(0.05792, rel=1e-9)
    assert abort_probability(1000, 20, 11, 0.3) == 1.0  # today's pair at 30%: the union bound


def test_security_failure_matches_hand_computed_tails() -> None:
    # n = 11, collusion 0.1 -> 1 colluder. k = 4, t = 3: one colluding neighbour already
    # exposes a client (2t = k + 1 + 1), P = 4/10 per client, 4.4 over 11 -> capped at 1.
    assert security_failure(11, 4, 3, 0.1, 0.1) == 1.0
    # t = 4 needs 3 colluders, there is 1; the ring splits with two runs of 2 removed
    # positions: C(11, 2) (0.1 + 1/11)^4.
    assert security_failure(11, 4, 4, 0.1, 0.1) == pytest.approx(55 * (0.1 + 1 / 11) ** 4)
    # Complete graph: each honest client has exactly the m colluders as neighbours.
    assert security_failure(10, 9, 6, 0.3, 0.2) == 1.0  # 2 * 6 = 12 = 10 + 2: exposed
    assert security_failure(10, 9, 7, 0.3, 0.2) == 0.0
    assert smallest_secure_threshold(10, 9, 0.3, 0.2, 40) == 7


@pytest.mark.parametrize(("n", "dropout"), [(1000, 0.35), (6040, 0.35), (943, 0.1)])
def test_derived_pairs_meet_the_target_and_are_the_cheapest(n: int, dropout: float) -> None:
    p = derive(n, dropout, 0.01, 1e-6, 40)
    assert p.meets_target and p.secure
    assert p.failure == abort_probability(n, p.k, p.t, dropout) <= 1e-6
    smaller = p.k - 2
    t = smallest_secure_threshold(n, smaller, dropout, 0.01, 40)
    worse = analyse(n, smaller, t, dropout, 0.01, 1e-6, 40)
    assert not (worse.meets_target and worse.secure)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 1500),
    dropout=st.floats(0.0, 0.4),
    collusion=st.floats(0.0, 0.05),
    bits=st.sampled_from([20.0, 40.0]),
)
def test_every_derived_pair_keeps_the_security_inequality(
    n: int, dropout: float, collusion: float, bits: float
) -> None:
    p = derive(n, dropout, collusion, 1e-6, bits)
    m = math.floor(collusion * n + 1e-9)
    assert 2 <= p.t <= p.k + 1 and 1 <= p.k <= n - 1
    assert 2 * p.t > p.k + 1  # each holder answers once: never t shares of both secrets
    if p.k == n - 1:  # every honest client has all m colluders as neighbours
        assert 2 * p.t > p.k + 1 + m or not p.secure
    if p.secure:
        assert p.insecurity <= 2.0**-bits
    if p.k < n - 1:  # a sparse graph is only chosen when it meets the target
        assert p.meets_target and p.secure


def test_simulated_completion_agrees_with_the_prediction() -> None:
    # The prediction is a union bound over clients: above the measured failure, but not by
    # much (clients short of holders come in clusters of a few neighbours, each counted).
    n, k, t, g = 300, 16, 9, 0.15
    predicted = abort_probability(n, k, t, g)
    measured = 1 - simulate_completion(n, k, t, g, 4000, seed=5)
    assert 0.05 < predicted < 0.2
    assert predicted / 5 < measured < predicted
    # ... and today's pair at 30% dropout fails most rounds, the derived one none.
    assert simulate_completion(1000, 20, 11, 0.3, 300, seed=1) < 0.05
    p = derive(1000, 0.35, 0.01, 1e-6, 40)
    assert simulate_completion(1000, p.k, p.t, 0.3, 1000, seed=1) == 1.0


def test_simulation_matches_rounds_on_the_real_random_graphs() -> None:
    # The simulation uses one ring and prefix sums; checking each round on a freshly drawn
    # neighbour graph, client by client, must give the same completion rate.
    n, k, t, g, rounds = 100, 8, 5, 0.2, 1500
    rng = np.random.default_rng(9)
    complete = 0
    for r in range(rounds):
        graph = neighbour_graph(n, k, r.to_bytes(8, "big"))
        alive = rng.random(n) >= g
        live = alive[graph].sum(axis=1)
        complete += int(
            alive.sum() >= t
            and all(live[u] + 1 >= t for u in range(n) if alive[u])
            and all(live[u] >= t for u in range(n) if not alive[u] and live[u] > 0)
        )
    brute = complete / rounds
    simulated = simulate_completion(n, k, t, g, rounds, seed=2)
    assert 0.2 < brute < 0.8  # a setting where the two can disagree
    assert abs(brute - simulated) < 0.06  # ~4 standard errors of the difference


def test_a_hand_set_pair_that_misses_the_target_warns() -> None:
    cfg = SecAggConfig(neighbours=20, max_dropout=0.3, collusion=0.0, target_failure=1.5e-6)
    with pytest.warns(SecAggParamsWarning, match="abort probability per round 1 exceeds"):
        a = cfg.analysis(1000)
    assert (a.k, a.t) == (20, 11)  # the hand-set k keeps the smallest t above half
    assert not a.meets_target
    # At 30% dropout, a ring of degree 20 may also split the honest survivors into parts
    # whose sums the server learns apart: C(1000, 2) 0.3^20 = 1.7e-5.
    assert a.insecurity == pytest.approx(1000 * 999 / 2 * 0.3**20)
    assert not a.secure
    quiet = SecAggConfig(max_dropout=0.3, collusion=0.0, target_failure=1.5e-6).analysis(1000)
    assert quiet.meets_target and quiet.k > 20


def test_a_hand_set_threshold_below_half_warns_as_insecure() -> None:
    cfg = SecAggConfig(neighbours=10, threshold=0.3, max_dropout=0.05, collusion=0.0)
    with pytest.warns(SecAggParamsWarning, match="learn more than the sum"):
        a = cfg.analysis(200)
    assert a.t == 4 and not a.secure


def _seeded_round(config: SecAggConfig, n: int, dim: int, dropped: list[int]) -> np.ndarray:
    session = SecAggSession(range(n), dim, config, round_=7, seed=11)
    rng = np.random.default_rng(0)
    expected = np.zeros(dim)
    for c in range(n):
        if c not in dropped:
            x = rng.uniform(-1, 1, dim)
            expected += x
            session.submit(c, x)
    result = session.finish(dropped)
    np.testing.assert_allclose(result.total, expected, atol=1e-3)
    return result.total


def test_a_real_round_at_30_percent_dropout_completes_with_derived_parameters() -> None:
    n, dim = 60, 4
    dropped = sorted(np.random.default_rng(2).choice(n, size=18, replace=False).tolist())
    old_k = 2 * math.ceil(math.log2(n))  # the former default, 12, with threshold 0.5
    with pytest.warns(SecAggParamsWarning), pytest.raises(SecAggAbort, match="t=7"):
        _seeded_round(SecAggConfig(neighbours=old_k, threshold=0.5), n, dim, dropped)
    derived = SecAggConfig(max_dropout=0.35)
    a = derived.analysis(n)
    assert 2 * a.t > a.k + 1
    _seeded_round(derived, n, dim, dropped)


def _cfg(dropout: float, **secagg: Any) -> RunConfig:
    return RunConfig.model_validate(
        {
            "mode": "federated",
            "seed": 1,
            "model": {"name": "mf", "dim": 4, "init_std": 0.1},
            "eval": {"ks": [5]},
            "train": {"monitor": "HR@5"},
            "federated": {
                "rounds": 3,
                "eval_every": 3,
                "patience": 0,
                "checkpoint_every": 0,
                "weighting": "uniform",
                "dropout": dropout,
                "local": {"epochs": 1, "batch_size": 8, "lr": 0.3, "negatives": 2},
            },
            "privacy": {"secagg": {"enabled": True, **secagg}},
        }
    )


def test_max_dropout_defaults_to_the_configured_dropout_plus_a_margin() -> None:
    assert secagg_max_dropout(_cfg(0.3)) == pytest.approx(0.35)
    assert secagg_max_dropout(_cfg(0.0)) == pytest.approx(0.1)
    assert secagg_config(_cfg(0.3, max_dropout=0.5)).max_dropout == 0.5
    with pytest.raises(ValueError, match=r"privacy.secagg.max_dropout = 0.2 is below"):
        _cfg(0.3, max_dropout=0.2)
    with pytest.raises(ValueError, match="collusion"):
        _cfg(0.3, collusion=0.6)


def test_the_summary_reports_k_t_predicted_failure_and_counts_aborts() -> None:
    split = two_taste_split(n_users=30, n_items=24)
    cfg = _cfg(0.3)
    result = train_federated(cfg, split)
    prepared = Prepared(data=split.train, split=split, seconds=0.0)
    block = summarize(cfg, prepared, result, 1.0)["secagg"]
    expected = secagg_config(cfg).analysis(30)
    assert (block["neighbours"], block["threshold"]) == (expected.k, expected.t)
    assert block["predicted_failure"] == expected.failure
    assert block["max_dropout"] == pytest.approx(0.35)
    assert block["rounds"] == 3
    assert block["aborts"] == sum(
        str(r.get("aborted", "")).startswith("secure aggregation") for r in result.history
    )
    # Aborts are counted by reason, other aborts (e.g. DP's) are not SecAgg+'s.
    history = [
        {"selected": 30, "aborted": "secure aggregation aborted: only 3 of 30 ..."},
        {"selected": 30, "aborted": "only 5 clients survived; the sum would be under-noised"},
        {"selected": 30},
    ]
    block = secagg_summary(cfg, history)
    assert block["aborts"] == 1
    assert block["abort_reasons"] == {"secure aggregation aborted: only 3 of 30 ...": 1}


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 400),
    x=st.integers(-2, 400),
    p=st.floats(0.0, 1.0),
    good=st.integers(0, 400),
    draws=st.integers(0, 400),
)
def test_hand_summed_tails_are_scipys(n: int, x: int, p: float, good: int, draws: int) -> None:
    """The binomial CDF and hypergeometric tail summed in log space (no scipy import in a
    deployed client) agree with scipy.stats."""
    from scipy.stats import binom, hypergeom

    from fedrec.privacy.secagg.params import _binom_cdf, _hypergeom_sf

    assert _binom_cdf(x, n, p) == pytest.approx(float(binom.cdf(x, n, p)), rel=1e-9, abs=1e-300)
    total = n + max(good, draws)
    expect = float(hypergeom.sf(x, total, good, draws))
    assert _hypergeom_sf(x, total, good, draws) == pytest.approx(expect, rel=1e-9, abs=1e-300)
