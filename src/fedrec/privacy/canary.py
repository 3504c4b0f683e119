"""Canary auditing: an empirical epsilon from one training run.

Canary clients upload a fixed random direction; each is inserted (its direction is its data)
or held out (it uploads nothing) on a secret fair coin. The adversary scores every canary
from what it observes (the cosine of its observation with the canary's direction) and two
yardsticks turn the scores into epsilons:

* Steinke, Nasr, Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023: the
  adversary guesses "in" for its top ``k`` canaries and "out" for its bottom ``k``; an
  (eps, delta)-DP run makes ``v`` or more correct guesses out of ``r`` with probability at most
  ``f(v) + 2 m delta max_i (f(v - i) - f(v)) / i``, ``f(v) = P[Binomial(r, e^eps/(1+e^eps)) >= v]``
  (their Theorem 5.2, the (eps, delta) form). The largest eps that this p-value still rejects
  at level beta is a lower bound that holds with confidence 1 - beta: a valid guarantee can
  only exceed it with probability beta.
* Andrew et al., "One-shot Empirical Privacy Estimation for Federated Learning", ICLR 2024:
  fit a Gaussian to the inserted and to the held-out canaries' cosines and report the epsilon
  of the Gaussian mechanism they look like (mu-GDP with mu = the gap of their means over the
  held-out spread). An estimate, not a bound.

Hand-written (no maintained library ships either test); scipy supplies the distributions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import optimize, stats

F64 = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

EPS_MAX = 50.0
"""Search ceiling for every epsilon here (e^50: beyond any meaningful guarantee)."""


# ------------------------------------------------------------------ Steinke et al. 2023


def one_run_p_value(m: int, r: int, v: int, eps: float, delta: float = 0.0) -> float:
    """P[at least ``v`` of ``r`` guesses correct] under an (eps, delta)-DP run with ``m``
    canaries (Steinke et al. 2023, Theorem 5.2); at most 1."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if eps < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need eps >= 0 and delta in [0, 1], got {eps}, {delta}")
    q = 1.0 / (1.0 + math.exp(-eps))
    f_v = float(stats.binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(f_v, 1.0)
    # max_i (f(v - i) - f(v)) / i, with f(v - i) - f(v) = P[v - i <= B < v].
    between = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
    slope = float(np.max(between / np.arange(1, v + 1)))
    return min(f_v + 2 * m * delta * slope, 1.0)


def one_run_epsilon(m: int, r: int, v: int, beta: float = 0.05, delta: float = 0.0) -> float:
    """The largest eps whose p-value for ``v`` correct of ``r`` is at most ``beta`` (0 when
    even eps = 0 is not rejected): with confidence 1 - beta the run is not (eps, delta)-DP
    for any smaller eps."""
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    if one_run_p_value(m, r, v, 0.0, delta) > beta:
        return 0.0
    if one_run_p_value(m, r, v, EPS_MAX, delta) <= beta:
        return EPS_MAX
    root: float = optimize.brentq(
        lambda e: one_run_p_value(m, r, v, e, delta) - beta, 0.0, EPS_MAX, xtol=1e-9
    )
    return root


GUESS_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.5)
"""The adversary's guess counts, as fractions of the canaries guessed on each side; fixed in
advance so the union bound over them keeps the confidence honest."""


@dataclass(frozen=True)
class OneRunBound:
    epsilon: float
    confidence: float
    guesses: int
    correct: int
    delta: float
    form: str = "Steinke et al. 2023, Theorem 5.2 ((eps, delta) form)"


def one_run_audit(
    scores: npt.ArrayLike,
    inserted: npt.ArrayLike,
    *,
    beta: float = 0.05,
    delta: float = 0.0,
    fractions: tuple[float, ...] = GUESS_FRACTIONS,
    seed: int = 0,
) -> OneRunBound:
    """The best lower bound over the pre-set guess counts, each tested at ``beta / len``
    (Bonferroni), so the reported one holds with confidence ``1 - beta``. Ties in the scores
    are broken at random (seeded): a tie carries no information either way."""
    s = np.asarray(scores, dtype=np.float64)
    coin = np.asarray(inserted, dtype=bool)
    if s.shape != coin.shape or s.ndim != 1:
        raise ValueError(f"scores {s.shape} and coins {coin.shape} must be equal 1-D shapes")
    m = s.size
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    tie = np.random.default_rng(seed).random(m)
    order = np.lexsort((tie, s))  # ascending
    ks = sorted({max(1, min(m // 2, round(f * m))) for f in fractions}) if m >= 2 else []
    level = beta / max(len(ks), 1)
    best = OneRunBound(0.0, 1 - beta, 0, 0, delta)
    for k in ks:
        correct = int(coin[order[-k:]].sum() + (~coin[order[:k]]).sum())
        eps = one_run_epsilon(m, 2 * k, correct, level, delta)
        if eps > best.epsilon:
            best = OneRunBound(eps, 1 - beta, 2 * k, correct, delta)
    return best


# ------------------------------------------------------------------ Andrew et al. 2024


def gdp_delta(mu: float, eps: float) -> float:
    """delta(eps) of mu-GDP: Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2) (Dong, Roth,
    Su 2019, Corollary 2.13)."""
    if mu <= 0:
        return 0.0
    return float(
        stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)
    )


def gdp_epsilon(mu: float, delta: float) -> float:
    """The eps at which mu-GDP reaches ``delta`` (0 when it never exceeds ``delta``)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if mu <= 0 or gdp_delta(mu, 0.0) <= delta:
        return 0.0
    if gdp_delta(mu, EPS_MAX) > delta:
        return EPS_MAX
    root: float = optimize.brentq(lambda e: gdp_delta(mu, e) - delta, 0.0, EPS_MAX, xtol=1e-9)
    return root


@dataclass(frozen=True)
class GaussianEstimate:
    epsilon: float
    mu: float
    mean_in: float
    std_in: float
    mean_out: float
    std_out: float


def gaussian_epsilon_estimate(
    inserted_cosines: npt.ArrayLike, held_out_cosines: npt.ArrayLike, delta: float
) -> GaussianEstimate:
    """Andrew et al. 2024's one-run estimate from the two groups' cosines."""
    a = np.asarray(inserted_cosines, dtype=np.float64)
    b = np.asarray(held_out_cosines, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"need >= 2 canaries per group, got {a.size} inserted, {b.size} held out")
    sd_out = float(b.std(ddof=1))
    gap = float(a.mean() - b.mean())
    mu = math.inf if sd_out == 0 and gap > 0 else (max(gap, 0.0) / sd_out if sd_out else 0.0)
    eps = EPS_MAX if math.isinf(mu) else gdp_epsilon(mu, delta)
    return GaussianEstimate(
        epsilon=eps,
        mu=mu,
        mean_in=float(a.mean()),
        std_in=float(a.std(ddof=1)),
        mean_out=float(b.mean()),
        std_out=sd_out,
    )
