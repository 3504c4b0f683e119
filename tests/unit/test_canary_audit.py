"""Canary auditing: the one-run bound and the Gaussian estimate against hand-computed values,
and audits of simulated runs that must tell the mechanisms apart and catch a broken one."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from fedrec.config import RunConfig
from fedrec.experiment.outputs import RunDirectory
from fedrec.experiment.pipeline import Prepared, run_experiment
from fedrec.privacy.canary import (
    gaussian_epsilon_estimate,
    gdp_delta,
    gdp_epsilon,
    one_run_audit,
    one_run_epsilon,
    one_run_p_value,
)
from fedrec.privacy.server import ServerPrivacy
from fedrec.simulation.training import train_federated
from tests.synthetic import mf_run_config, two_taste_split

# ------------------------------------------------------------------ formulas


def test_p_value_pure_dp_is_the_binomial_tail() -> None:
    # eps = 0: a fair coin; 9 or 10 right of 10 = (10 + 1) / 1024.
    assert one_run_p_value(20, 10, 9, 0.0) == pytest.approx(11 / 1024)
    # eps = ln 3: q = 3/4; all 4 of 4 right = (3/4)^4.
    assert one_run_p_value(8, 4, 4, math.log(3)) == pytest.approx(0.75**4)


def test_p_value_delta_term_by_hand() -> None:
    # r = v = 2, eps = 0: f(2) = 1/4; (f(1) - f(2)) / 1 = P[B = 1] = 1/2, (f(0) - f(2)) / 2 =
    # 3/8; so p = 1/4 + 2 m delta / 2 = 0.25 + 4 * 0.01 with m = 4.
    assert one_run_p_value(4, 2, 2, 0.0, 0.01) == pytest.approx(0.29)


def test_epsilon_of_all_correct_guesses_by_hand() -> None:
    # All r right: p = q^r, so the bound solves q = beta^(1/r), eps = ln(q / (1 - q)).
    for r, beta in ((10, 0.05), (100, 0.01)):
        q = beta ** (1 / r)
        assert one_run_epsilon(r, r, r, beta) == pytest.approx(math.log(q / (1 - q)), abs=1e-6)
    assert one_run_epsilon(100, 100, 50, 0.05) == 0.0  # chance-level guesses prove nothing


def test_audit_of_perfect_scores_uses_the_union_bound() -> None:
    coins = np.arange(100) % 2 == 0
    scores = coins.astype(float)
    bound = one_run_audit(scores, coins, beta=0.05)
    # Five guess counts, each at 0.01; the best is 50 + 50 guesses, all right.
    q = 0.01 ** (1 / 100)
    assert bound.epsilon == pytest.approx(math.log(q / (1 - q)), abs=1e-6)
    assert (bound.guesses, bound.correct) == (100, 100)
    rng = np.random.default_rng(0)
    assert one_run_audit(rng.random(100), coins).epsilon < 0.5


def test_gaussian_dp_conversion_by_hand() -> None:
    # mu = 2, eps = 2: Phi(0) - e^2 Phi(-2).
    assert gdp_delta(2.0, 2.0) == pytest.approx(0.5 - math.exp(2) * 0.0227501319, abs=1e-8)
    # mu = 1, eps = 0: Phi(1/2) - Phi(-1/2).
    assert gdp_delta(1.0, 0.0) == pytest.approx(0.3829249225, abs=1e-8)
    eps = gdp_epsilon(1.0, 1e-5)
    assert gdp_delta(1.0, eps) == pytest.approx(1e-5, rel=1e-6)
    assert gdp_epsilon(0.0, 1e-5) == 0.0


def test_gaussian_estimate_recovers_mu() -> None:
    z = np.random.default_rng(0).standard_normal(20000)
    est = gaussian_epsilon_estimate(1.0 + z[:10000], z[10000:], 1e-5)
    assert est.mu == pytest.approx(1.0, abs=0.05)
    assert est.epsilon == pytest.approx(gdp_epsilon(est.mu, 1e-5))


# ------------------------------------------------------------------ audits of runs


def _cfg(privacy: dict[str, Any], canaries: int, **fed: Any) -> RunConfig:
    base: dict[str, Any] = {
        "rounds": 5,
        "eval_every": 5,
        "patience": 0,
        "checkpoint_every": 0,
        "weighting": "uniform",
        "local": {"epochs": 1, "batch_size": 8, "lr": 0.3, "negatives": 2},
    }
    base.update(fed)
    return mf_run_config(base, privacy, dim=8, audit={"canaries": canaries, "canary_items": 5})


def _audit(cfg: RunConfig, users: int, items: int) -> dict[str, Any]:
    result = train_federated(cfg, two_taste_split(n_users=users, n_items=items, per_user=8))
    assert result.audit is not None
    return result.audit


SECAGG = {"secagg": {"enabled": True}}
DP_EPS1 = {"dp": {"enabled": True, "target_epsilon": 1.0}}


def test_secagg_sum_of_two_clients_leaks_and_many_leak_less() -> None:
    few = _audit(_cfg(SECAGG, 40, sampling="count", count=2, rounds=100), 10, 40)
    many = _audit(_cfg(SECAGG, 40, sampling="all", rounds=2), 400, 40)
    assert few["adversary_view"] == many["adversary_view"] == "sums"
    assert few["auc"] >= 0.9
    assert many["auc"] < few["auc"] - 0.05
    assert few["empirical_epsilon"] > many["empirical_epsilon"]


def test_no_protection_is_caught() -> None:
    a = _audit(_cfg({}, 100), 30, 200)
    assert a["adversary_view"] == "uploads"
    assert a["auc"] > 0.99
    assert a["empirical_epsilon"] > 2.0  # the most 100 canaries at 95% can show is 2.10


@pytest.mark.parametrize(
    "privacy",
    [DP_EPS1, {**SECAGG, "dp": {**DP_EPS1["dp"], "mode": "distributed"}}],
    ids=["central", "distributed"],
)
def test_user_level_dp_stays_below_its_accounted_epsilon(privacy: dict[str, Any]) -> None:
    a = _audit(_cfg(privacy, 100), 30, 200)
    assert a["accounted_epsilon"] == pytest.approx(1.0, abs=1e-3)
    assert a["empirical_epsilon"] <= a["accounted_epsilon"]


@pytest.mark.parametrize(
    "privacy",
    [DP_EPS1, {**SECAGG, "dp": {**DP_EPS1["dp"], "mode": "distributed"}}],
    ids=["central", "distributed"],
)
def test_a_broken_noise_scale_is_caught(
    privacy: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The noise silently shrinks 20-fold; the accountant still claims the calibrated one.
    claimed = ServerPrivacy.update_noise_multiplier
    assert isinstance(claimed, property) and claimed.fget is not None
    fget = claimed.fget
    monkeypatch.setattr(
        ServerPrivacy, "update_noise_multiplier", property(lambda self: fget(self) / 20)
    )
    a = _audit(_cfg(privacy, 100), 30, 200)
    assert a["accounted_epsilon"] == pytest.approx(1.0, abs=1e-3)
    assert a["empirical_epsilon"] > a["accounted_epsilon"]


def test_canaries_never_reach_the_metrics() -> None:
    split = two_taste_split(n_users=30, n_items=40, per_user=8)
    plain = train_federated(_cfg({}, 0, sampling="all"), split)
    with_c = train_federated(_cfg({}, 20, sampling="all"), split)
    assert with_c.clients == plain.clients == 30
    assert len(with_c.per_user_test) == len(plain.per_user_test)


def test_audit_config_is_validated() -> None:
    with pytest.raises(ValidationError, match="at least 4"):
        _cfg({}, 2)
    with pytest.raises(ValidationError, match="weighted_sampling"):
        _cfg({}, 10, weighted_sampling=True)
    with pytest.raises(ValidationError, match="no device"):
        _cfg({}, 10, devices={"profile": "silos"})


def test_fedrec_run_with_canaries_writes_audit_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedrec.experiment.pipeline as pipeline

    split = two_taste_split(n_users=30, n_items=40, per_user=8)
    monkeypatch.setattr(pipeline, "prepare", lambda cfg: Prepared(split.train, split, 0.0))
    out = tmp_path / "run"
    summary = run_experiment(_cfg(DP_EPS1, 20), RunDirectory(out, overwrite=True))
    audit = json.loads((out / "audit.json").read_text())["canary_audit"]
    assert audit["canaries"] == 20 and audit["adversary_view"] == "released"
    assert audit["accounted_epsilon"] == summary["privacy"]["epsilon"]
    assert 0 <= audit["empirical_epsilon"] <= audit["accounted_epsilon"]
    assert summary["clients"] == 30
    coins = audit["per_canary"]["inserted"]
    assert len(coins) == 20 and sum(coins) == audit["inserted"]
    scores = [-1e9 if x is None else x for x in audit["per_canary"]["score"]]
    again = one_run_audit(np.array(scores), np.array(coins, dtype=bool), delta=audit["delta"])
    assert again.epsilon == pytest.approx(audit["empirical_epsilon"], abs=1e-6)
