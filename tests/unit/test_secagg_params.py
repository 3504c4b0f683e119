"""SecAgg+ graph degree and threshold from the dropout rate (Bell et al. 2020, sec. 4): the
formulas against hand-computed values, the derived pairs against the target and each server
model's security bound, hand-set pairs that fall short, real rounds at 30% dropout, the
deployment's announcement, and the run summary."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.config import RunConfig
from fedrec.deploy.secagg_params import round_params
from fedrec.experiment.pipeline import Prepared, summarize
from fedrec.federated.configure import secagg_config, secagg_max_dropout, secagg_summary
from fedrec.privacy.secagg import SecAggAbort, SecAggConfig, SecAggSession
from fedrec.privacy.secagg.errors import SecAggConfigError
from fedrec.privacy.secagg.graph import neighbour_graph
from fedrec.privacy.secagg.params import (
    SERVER_MODELS,
    SecAggParamsWarning,
    abort_probability,
    analyse,
    derive,
    security_failure,
    simulate_completion,
    smallest_secure_threshold,
)
from fedrec.simulation.training import train_federated
from tests.synthetic import mf_run_config, two_taste_split

LIES = "lies-about-dropouts"


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


def test_security_failure_matches_hand_computed_tails_for_a_lying_server() -> None:
    # n = 11, collusion 0.1 -> 1 colluder. k = 4, t = 3: one colluding neighbour already
    # exposes a client (2t = k + 1 + 1), P = 4/10 per client, 4.4 over 11 -> capped at 1.
    assert security_failure(11, 4, 3, 0.1, 0.1, LIES) == 1.0
    # t = 4 needs 3 colluders, there is 1; the ring splits with two runs of 2 removed
    # positions: C(11, 2) (0.1 + 1/11)^4.
    assert security_failure(11, 4, 4, 0.1, 0.1, LIES) == pytest.approx(55 * (0.1 + 1 / 11) ** 4)
    # Complete graph: each honest client has exactly the m colluders as neighbours.
    assert security_failure(10, 9, 6, 0.3, 0.2, LIES) == 1.0  # 2 * 6 = 12 = 10 + 2: exposed
    assert security_failure(10, 9, 7, 0.3, 0.2, LIES) == 0.0
    assert smallest_secure_threshold(10, 9, 0.3, 0.2, 40, LIES) == 7


def test_security_failure_matches_hand_computed_tails_for_a_semi_honest_server() -> None:
    # n = 21, collusion 0.1 -> 2 colluders among the 20 others; k = 4. With t = 2 a client is
    # exposed iff both colluders are among its 4 neighbours: C(2,2) C(18,2) / C(20,4) =
    # 153 / 4845 per client, 21 of them; plus the split C(21, 2) (0.1 + 2/21)^4.
    split = 210 * (0.1 + 2 / 21) ** 4
    assert security_failure(21, 4, 2, 0.1, 0.1) == pytest.approx(21 * 153 / 4845 + split)
    # t = 3 needs 3 colluding neighbours, there are 2: only the split is left. A lying server
    # needs just 2t - k - 1 = 1 of them: 21 (1 - C(18,4) / C(20,4)) > 1, capped.
    assert security_failure(21, 4, 3, 0.1, 0.1) == pytest.approx(split)
    assert security_failure(21, 4, 3, 0.1, 0.1, LIES) == 1.0
    # Complete graph: exposed iff t <= m (2 <= 2), secure from t = 3.
    assert security_failure(21, 20, 2, 0.1, 0.1) == 1.0
    assert security_failure(21, 20, 3, 0.1, 0.1) == 0.0
    assert smallest_secure_threshold(21, 20, 0.1, 0.1, 40) == 3


def test_semi_honest_tail_matches_a_direct_hypergeometric_sum() -> None:
    # n = 200, collusion 0.05 -> m = 10 of the 199 others, k = 20: the colluding neighbours
    # are Hypergeom(199, 10, 20); summed here from binomial coefficients.
    n, m, k, g = 200, 10, 20, 0.05
    split = n * (n - 1) / 2 * (g + m / n) ** k  # 1.99e-16
    for t in (6, 8):
        tail = sum(math.comb(m, c) * math.comb(n - 1 - m, k - c) for c in range(t, m + 1))
        tail /= math.comb(n - 1, k)
        assert security_failure(n, k, t, g, 0.05) == pytest.approx(n * tail + split, rel=1e-9)
    assert security_failure(200, 20, 6, g, 0.05) == pytest.approx(0.015733844, rel=1e-6)


def test_unknown_server_model_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown SecAgg\\+ server model 'malicious'"):
        derive(100, 0.1, 0.01, 1e-6, 40, "malicious")  # type: ignore[arg-type]
    with pytest.raises(SecAggConfigError, match="server_model must be one of"):
        SecAggConfig(server_model="malicious")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "dropout", "pair"),
    [
        (1000, 0.35, (444, 228)),
        (6040, 0.35, (610, 322)),
        (1000, 0.15, (76, 44)),
        (6040, 0.15, (96, 57)),
    ],
)
def test_a_lying_server_model_keeps_the_previous_pairs(
    n: int, dropout: float, pair: tuple[int, int]
) -> None:
    p = derive(n, dropout, 0.01, 1e-6, 40, LIES)
    assert (p.k, p.t) == pair and p.server_model == LIES
    assert SecAggConfig(max_dropout=dropout, server_model=LIES).analysis(n) == p


@pytest.mark.parametrize(("n", "dropout", "pair"), [(1000, 0.35, (48, 11)), (6040, 0.35, (56, 14))])
def test_a_semi_honest_server_needs_a_far_smaller_graph(
    n: int, dropout: float, pair: tuple[int, int]
) -> None:
    p = derive(n, dropout, 0.01, 1e-6, 40)
    assert (p.k, p.t) == pair and p.server_model == "semi-honest"
    assert p.meets_target and p.secure
    assert SecAggConfig(max_dropout=dropout).analysis(n) == p  # the default model


@pytest.mark.parametrize("model", SERVER_MODELS)
@pytest.mark.parametrize(("n", "dropout"), [(1000, 0.35), (6040, 0.35), (943, 0.1)])
def test_derived_pairs_meet_the_target_and_are_the_cheapest(
    n: int, dropout: float, model: Any
) -> None:
    p = derive(n, dropout, 0.01, 1e-6, 40, model)
    assert p.meets_target and p.secure
    assert p.failure == abort_probability(n, p.k, p.t, dropout) <= 1e-6
    smaller = p.k - 2
    t = smallest_secure_threshold(n, smaller, dropout, 0.01, 40, model)
    worse = analyse(n, smaller, t, dropout, 0.01, 1e-6, 40, model)
    assert not (worse.meets_target and worse.secure)


def _exposure(n: int, k: int, t: int, collusion: float, model: str) -> float:
    """n P[an honest client has >= need colluding neighbours], from binomial coefficients:
    need = t against a semi-honest server, 2t - k - 1 against one lying about dropouts."""
    m = math.floor(collusion * n + 1e-9)
    need = t if model == "semi-honest" else 2 * t - k - 1
    if k == n - 1:
        return float(need <= m)
    tail = sum(
        math.comb(m, c) * math.comb(n - 1 - m, k - c) for c in range(max(need, 0), min(m, k) + 1)
    )
    return min(1.0, n * tail / math.comb(n - 1, k))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 1500),
    dropout=st.floats(0.0, 0.4),
    collusion=st.floats(0.0, 0.05),
    bits=st.sampled_from([20.0, 40.0]),
    model=st.sampled_from(SERVER_MODELS),
)
def test_every_derived_pair_keeps_its_models_security_condition(
    n: int, dropout: float, collusion: float, bits: float, model: Any
) -> None:
    p = derive(n, dropout, collusion, 1e-6, bits, model)
    m = math.floor(collusion * n + 1e-9)
    assert 2 <= p.t <= p.k + 1 and 1 <= p.k <= n - 1
    if model == LIES:
        assert 2 * p.t > p.k + 1  # each holder answers once: never t shares of both secrets
    if p.k == n - 1:  # every honest client has all m colluders as neighbours
        need = p.k + 1 + m if model == LIES else m
        assert (2 * p.t if model == LIES else p.t) > need or not p.secure
    if p.secure:
        assert p.insecurity <= 2.0**-bits
        exposure = _exposure(n, p.k, p.t, collusion, model)
        assert exposure <= p.insecurity * (1 + 1e-6) + 1e-300
        if p.t > 2:  # the smallest such t: one less would expose (or leave no budget)
            assert _exposure(n, p.k, p.t - 1, collusion, model) > 2.0**-bits - (
                p.insecurity - exposure
            ) * (1 + 1e-6)
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
    cfg = SecAggConfig(
        neighbours=20, max_dropout=0.3, collusion=0.0, target_failure=1.5e-6, server_model=LIES
    )
    with pytest.warns(SecAggParamsWarning, match="abort probability per round 1 exceeds"):
        a = cfg.analysis(1000)
    assert (a.k, a.t) == (20, 11)  # the hand-set k keeps the smallest t above half
    assert not a.meets_target
    # At 30% dropout, a ring of degree 20 may also split the honest survivors into parts
    # whose sums the server learns apart: C(1000, 2) 0.3^20 = 1.7e-5.
    assert a.insecurity == pytest.approx(1000 * 999 / 2 * 0.3**20)
    assert not a.secure
    quiet = SecAggConfig(
        max_dropout=0.3, collusion=0.0, target_failure=1.5e-6, server_model=LIES
    ).analysis(1000)
    assert quiet.meets_target and quiet.k > 20


def test_a_hand_set_threshold_below_half_warns_as_insecure_against_a_lying_server() -> None:
    cfg = SecAggConfig(
        neighbours=10, threshold=0.3, max_dropout=0.05, collusion=0.0, server_model=LIES
    )
    with pytest.warns(SecAggParamsWarning, match="lies-about-dropouts server.*more than the sum"):
        a = cfg.analysis(200)
    assert a.t == 4 and not a.secure
    # A semi-honest server with 2 colluders (collusion 0.01) and t = 4: only the ring split
    # remains, C(200, 2) (0.05 + 2/200)^10 = 1.2e-8, above 2^-40 for k = 10.
    honest = SecAggConfig(neighbours=10, threshold=0.3, max_dropout=0.05, collusion=0.01)
    with pytest.warns(SecAggParamsWarning, match="semi-honest server"):
        b = honest.analysis(200)
    assert b.t == 4 and b.insecurity >= 200 * 199 / 2 * 0.06**10


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
    derived = SecAggConfig(max_dropout=0.35, server_model=LIES)
    a = derived.analysis(n)
    assert 2 * a.t > a.k + 1
    _seeded_round(derived, n, dim, dropped)


def test_a_real_round_at_30_percent_dropout_completes_with_the_semi_honest_pair() -> None:
    # n = 200 with 10 colluders assumed: the semi-honest pair is sparse (k = 46, t = 11, far
    # below half of the 47 holders), where the lying-server guard needs the complete graph.
    n, dim = 200, 4
    dropped = sorted(np.random.default_rng(3).choice(n, size=60, replace=False).tolist())
    config = SecAggConfig(max_dropout=0.35, collusion=0.05)
    a = config.analysis(n)
    assert (a.k, a.t) == (46, 11) and a.meets_target and a.secure
    assert a.t > 10 and 2 * a.t <= a.k + 1
    _seeded_round(config, n, dim, dropped)


def _announcement(model: str) -> dict[str, Any]:
    return {
        "secagg/ids": list(range(200)),
        "secagg/dim": 4,
        "secagg/neighbours": -1,
        "secagg/threshold": -1.0,
        "secagg/max_dropout": 0.35,
        "secagg/collusion": 0.05,
        "secagg/target_failure": 1e-6,
        "secagg/security_bits": 40.0,
        "secagg/server_model": model,
        "secagg/clip": 1.0,
        "secagg/bits": 32,
        "secagg/seed": bytes(16),
    }


def test_a_client_rebuilds_the_pair_of_the_server_model_it_holds() -> None:
    honest = round_params(_announcement("semi-honest"), 3, held="semi-honest")
    strict = round_params(_announcement(LIES), 3, held=LIES)
    assert (honest.k, honest.t) == (46, 11)
    assert (strict.k, strict.t) == (199, 106)
    assert honest.session_id != strict.session_id  # later stages cannot switch models
    # A server announcing the weaker model to a client configured for the stricter one (or
    # announcing none) is refused before the client shares anything.
    with pytest.raises(ValueError, match="this client's configuration says"):
        round_params(_announcement("semi-honest"), 3, held=LIES)
    missing = _announcement(LIES)
    del missing["secagg/server_model"]
    with pytest.raises(ValueError, match="secagg/server_model must be one of"):
        round_params(missing, 3)


def _cfg(dropout: float, **secagg: Any) -> RunConfig:
    return mf_run_config(
        {
            "rounds": 3,
            "eval_every": 3,
            "patience": 0,
            "checkpoint_every": 0,
            "weighting": "uniform",
            "dropout": dropout,
            "local": {"epochs": 1, "batch_size": 8, "lr": 0.3, "negatives": 2},
        },
        {"secagg": {"enabled": True, **secagg}},
    )


def test_max_dropout_defaults_to_the_configured_dropout_plus_a_margin() -> None:
    assert secagg_max_dropout(_cfg(0.3)) == pytest.approx(0.35)
    assert secagg_max_dropout(_cfg(0.0)) == pytest.approx(0.1)
    assert secagg_config(_cfg(0.3, max_dropout=0.5)).max_dropout == 0.5
    with pytest.raises(ValueError, match=r"privacy.secagg.max_dropout = 0.2 is below"):
        _cfg(0.3, max_dropout=0.2)
    with pytest.raises(ValueError, match="collusion"):
        _cfg(0.3, collusion=0.6)
    assert secagg_config(_cfg(0.3)).server_model == "semi-honest"
    assert secagg_config(_cfg(0.3, server_model=LIES)).server_model == LIES
    with pytest.raises(ValueError, match=r"server_model(.|\n)*'semi-honest' or 'lies-about"):
        _cfg(0.3, server_model="malicious")


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
    assert block["server_model"] == "semi-honest"
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
    deployed client) agree with scipy.stats: to 1e-6 relative, since deep tails (1e-291 at
    n = 360, x = 13, p = 0.875) differ by 2e-9 between the two summations."""
    from scipy.stats import binom, hypergeom

    from fedrec.privacy.secagg.params import _binom_cdf, _hypergeom_sf

    assert _binom_cdf(x, n, p) == pytest.approx(float(binom.cdf(x, n, p)), rel=1e-6, abs=1e-300)
    total = n + max(good, draws)
    expect = float(hypergeom.sf(x, total, good, draws))
    assert _hypergeom_sf(x, total, good, draws) == pytest.approx(expect, rel=1e-6, abs=1e-300)
