"""Graph degree k and threshold t of a SecAgg+ round from the dropout rate, the colluding
fraction, a target failure probability and a security parameter (Bell et al., "Secure
Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020, section 4: a graph and
threshold are good when, except with probability 2^-sigma, no honest client's secrets can be
rebuilt by the adversary and the honest survivors stay connected, and, except with probability
eta, every needed secret keeps t surviving holders).

Model. n clients; each holds its two secrets (self-mask seed, mask key) with its k neighbours in
the public random Harary graph (``graph``), k + 1 holders in all, t of whom rebuild one. A
client drops independently with probability ``dropout`` after key sharing (the costliest point:
it has masked with its neighbours but never uploads). The adversary is the server plus
m = floor(collusion * n) clients, fixed before the graph is drawn, so the colluders among an
honest client's k neighbours follow Hypergeom(n - 1, m, k).

Correctness (the round aborts otherwise). A survivor's seed needs t - 1 of its k neighbours
(it answers itself); a dropped client's mask key needs t of them. Per client
    p = (1 - dropout) P[Bin(k, 1 - dropout) <= t - 2] + dropout P[Bin(k, 1 - dropout) <= t - 1]
and by the union bound P(round aborts) <= n p. With the complete graph (k = n - 1) every client
sees the same survivors, so exactly P(abort) = P[Bin(n, 1 - dropout) <= t - 1].

Security depends on the server model (``server_model``); c is an honest client's number of
colluding neighbours. "semi-honest" (the documented threat model): the server asks each holder
for the share the protocol says, so only the colluders' shares reach it besides those; it
rebuilds a secret iff c >= t: P_collude <= n P[Hypergeom(n - 1, m, k) >= t].
"lies-about-dropouts": the server may tell some holders a client survived and others it
dropped; each honest holder answers once, with one of the two shares, a colluding holder hands
over both, so both secrets are exposed iff 2 (t - c) <= k + 1 - c: we need 2t > k + 1 + c,
P_collude <= n P[Hypergeom >= 2t - k - 1] (impossible when 2t <= k + 1). The guard forces
t above half the neighbourhood, so k grows several-fold at high dropout. In both models the
honest survivors must stay connected, or the server learns the sum of each component apart:
on the Harary ring that takes two runs of k/2 consecutive positions all dropped or colluding,
so P_split <= C(n, 2) (dropout + m/n)^k. Derived pairs satisfy P_collude + P_split <= 2^-sigma.

The search: for each even k, the smallest secure t (a larger t only raises the abort
probability) and the first k whose abort probability meets the target; else the complete
graph, and if even that misses the target (small rounds at high dropout), the pair is still
returned, marked as missing it. Hand-written because no library does this search; the two
tails are summed exactly in log space here rather than taken from scipy.stats, whose import
would cost every deployed SecAgg+ message (each is its own process) far more than the sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, get_args

import numpy as np

__all__ = [
    "SERVER_MODELS",
    "SecAggParams",
    "SecAggParamsWarning",
    "ServerModel",
    "abort_probability",
    "analyse",
    "check_server_model",
    "derive",
    "security_failure",
    "simulate_completion",
    "smallest_secure_threshold",
]


ServerModel = Literal["semi-honest", "lies-about-dropouts"]
SERVER_MODELS: tuple[str, ...] = get_args(ServerModel)


def check_server_model(server_model: str) -> ServerModel:
    if server_model == "semi-honest":
        return "semi-honest"
    if server_model == "lies-about-dropouts":
        return "lies-about-dropouts"
    raise ValueError(
        f"unknown SecAgg+ server model {server_model!r}; choose one of: {', '.join(SERVER_MODELS)}"
    )


class SecAggParamsWarning(UserWarning):
    """A (k, t) that misses the failure target or the security bound: set by hand, or the
    best a small round at high dropout allows."""


@dataclass(frozen=True)
class SecAggParams:
    """A (k, t) pair and what the analysis predicts for it."""

    n: int
    k: int
    t: int
    dropout: float
    collusion: float
    target: float
    security_bits: float
    failure: float
    """Predicted probability that a round aborts (an upper bound unless the graph is complete)."""
    insecurity: float
    """Upper bound on the probability that the adversary learns more than the sum."""
    server_model: ServerModel = "semi-honest"
    """The adversary ``insecurity`` is computed against (module docstring)."""

    @property
    def meets_target(self) -> bool:
        return self.failure <= self.target

    @property
    def secure(self) -> bool:
        return bool(self.insecurity <= 2.0**-self.security_bits)

    def problems(self) -> list[str]:
        """Plain-language reasons this pair falls short; empty when it does not."""
        out = []
        if not self.meets_target:
            out.append(
                f"SecAgg+ with n={self.n}, k={self.k}, t={self.t} at dropout {self.dropout:.2f}: "
                f"predicted abort probability per round {self.failure:.2g} exceeds the target "
                f"{self.target:.2g}"
            )
        if not self.secure:
            out.append(
                f"SecAgg+ with n={self.n}, k={self.k}, t={self.t} and colluding fraction "
                f"{self.collusion:.2f} ({self.server_model} server): the adversary may learn "
                f"more than the sum with probability up to {min(self.insecurity, 1.0):.2g}, above "
                f"2^-{self.security_bits:g}"
            )
        return out


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _binom_cdf(x: int, n: int, p: float) -> float:
    """P[Binomial(n, p) <= x]."""
    if x < 0:
        return 0.0
    if x >= n:
        return 1.0
    if p <= 0.0 or p >= 1.0:
        return 1.0 if p <= 0.0 else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    return min(
        1.0, math.fsum(math.exp(_log_comb(n, i) + i * lp + (n - i) * lq) for i in range(x + 1))
    )


def _hypergeom_sf(x: int, total: int, good: int, draws: int) -> float:
    """P[X > x] for X the good items among ``draws`` taken from ``total`` without replacement."""
    top = min(good, draws)
    lo = max(x + 1, 0, draws - (total - good))
    if lo > top:
        return 0.0
    base = _log_comb(total, draws)
    terms = (
        math.exp(_log_comb(good, i) + _log_comb(total - good, draws - i) - base)
        for i in range(lo, top + 1)
    )
    return min(1.0, math.fsum(terms))


def _colluders(n: int, collusion: float) -> int:
    return math.floor(collusion * n + 1e-9)


def abort_probability(n: int, k: int, t: int, dropout: float) -> float:
    """Probability that some needed secret has fewer than t surviving holders (formulas in the
    module docstring; the Harary case is a union bound)."""
    if k >= n - 1:
        return _binom_cdf(t - 1, n, 1.0 - dropout)
    p = (1.0 - dropout) * _binom_cdf(t - 2, k, 1.0 - dropout) + dropout * _binom_cdf(
        t - 1, k, 1.0 - dropout
    )
    return float(min(1.0, n * p))


def _split_probability(n: int, k: int, dropout: float, collusion: float) -> float:
    if k >= n - 1:
        return 0.0
    r = min(1.0, dropout + _colluders(n, collusion) / n)
    return min(1.0, n * (n - 1) / 2 * r**k)


def _exposing(k: int, t: np.ndarray, server_model: ServerModel) -> np.ndarray:
    """Colluding neighbours that would expose an honest client's secrets."""
    return t if server_model == "semi-honest" else 2 * t - k - 1


def _collude_probability(
    n: int, k: int, t: np.ndarray, collusion: float, server_model: ServerModel
) -> np.ndarray:
    """n P[Hypergeom(n - 1, m, k) >= need] for each t, need from ``_exposing`` (1 where
    need <= 0)."""
    m = _colluders(n, collusion)
    need = _exposing(k, t, check_server_model(server_model))
    if k >= n - 1:  # complete graph: every honest client has exactly m colluding neighbours
        return np.where(need <= m, 1.0, 0.0)
    tail = np.array([_hypergeom_sf(int(x) - 1, n - 1, m, k) for x in np.atleast_1d(need)])
    return np.where(need <= 0, 1.0, np.minimum(1.0, n * tail))


def security_failure(
    n: int,
    k: int,
    t: int,
    dropout: float,
    collusion: float,
    server_model: ServerModel = "semi-honest",
) -> float:
    """P_collude + P_split of the module docstring."""
    collude = float(_collude_probability(n, k, np.array([t]), collusion, server_model)[0])
    return min(1.0, collude + _split_probability(n, k, dropout, collusion))


def analyse(
    n: int,
    k: int,
    t: int,
    dropout: float,
    collusion: float,
    target: float,
    security_bits: float,
    server_model: ServerModel = "semi-honest",
) -> SecAggParams:
    """The analysis of a given (k, t) (k as the graph will use it)."""
    return SecAggParams(
        n=n,
        k=k,
        t=t,
        dropout=dropout,
        collusion=collusion,
        target=target,
        security_bits=security_bits,
        failure=abort_probability(n, k, t, dropout),
        insecurity=security_failure(n, k, t, dropout, collusion, server_model),
        server_model=check_server_model(server_model),
    )


def smallest_secure_threshold(
    n: int,
    k: int,
    dropout: float,
    collusion: float,
    security_bits: float,
    server_model: ServerModel = "semi-honest",
) -> int:
    """The smallest t with P_collude + P_split <= 2^-sigma for this k. P_split depends on k
    alone: when it is over the bound no t helps, and t only has to keep P_collude within it
    (``analyse`` then flags the pair). k + 1 when no t is secure."""
    bound = 2.0**-security_bits
    split = _split_probability(n, k, dropout, collusion)
    budget = bound - split if split <= bound else bound
    ts = np.arange(2, k + 2)
    ok = ts[_collude_probability(n, k, ts, collusion, server_model) <= budget]
    return int(ok[0]) if len(ok) else k + 1


@lru_cache(maxsize=4096)
def derive(
    n: int,
    dropout: float,
    collusion: float,
    target: float,
    security_bits: float,
    server_model: ServerModel = "semi-honest",
) -> SecAggParams:
    """The cheapest (smallest k) secure pair whose abort probability meets the target; if no
    k < n - 1 does, the complete graph (flagged by ``meets_target`` if it misses too)."""
    if n < 2:
        raise ValueError(f"secure aggregation needs at least 2 clients, got {n}")
    model = check_server_model(server_model)
    bound = 2.0**-security_bits
    lies = model == "lies-about-dropouts"
    # With half or more dropping, fewer than the t > (k + 1) / 2 holders the lying-server
    # guard needs survive on average in any neighbourhood: only the complete graph can work.
    sparse = range(2, n - 1, 2) if dropout < 0.5 or not lies else range(0)
    for k in [*sparse, n - 1]:
        if _split_probability(n, k, dropout, collusion) > bound:
            continue  # a sparser ring may split the honest survivors apart
        least = (k + 1) // 2 + 1 if lies else 2
        if k < n - 1 and abort_probability(n, k, least, dropout) > target:
            continue  # even the least t the model allows aborts too often: cheap skip
        t = smallest_secure_threshold(n, k, dropout, collusion, security_bits, model)
        found = analyse(n, k, t, dropout, collusion, target, security_bits, model)
        if found.secure and (found.meets_target or k == n - 1):
            return found
    # Not even the complete graph is secure (too many colluders for any t): say so.
    m = _colluders(n, collusion)
    t = min(n, (n + m) // 2 + 1 if lies else m + 1)
    return analyse(n, n - 1, t, dropout, collusion, target, security_bits, model)


def simulate_completion(
    n: int, k: int, t: int, dropout: float, rounds: int, seed: int = 0
) -> float:
    """Share of ``rounds`` simulated rounds in which every needed secret keeps t surviving
    holders: clients drop independently after key sharing; each survivor's seed needs t - 1
    surviving neighbours, each dropped client with a surviving neighbour needs t for its mask
    key, and the server needs t survivors at all (as ``SecAggServer`` checks). No
    cryptography: it checks the analysis, not the protocol. One ring serves every round: with
    independent dropouts, the random ring order does not change the outcome's distribution."""
    if k >= n - 1:
        k = n - 1
    rng = np.random.default_rng(seed)
    half = k // 2
    complete = 0
    for _ in range(rounds):
        alive = rng.random(n) >= dropout
        a = alive.astype(np.int64)
        if k == n - 1:
            live = a.sum() - a
        else:  # neighbours within half ring positions either side, by prefix sums
            ring = np.concatenate([a[-half:], a, a[:half]])
            cum = np.concatenate([[0], np.cumsum(ring)])
            idx = np.arange(n) + half
            live = cum[idx + half + 1] - cum[idx - half] - a
        survivors_ok = bool(np.all(live[alive] + 1 >= t))
        needed = ~alive & (live > 0)
        keys_ok = bool(np.all(live[needed] >= t))
        complete += int(a.sum() >= t and survivors_ok and keys_ok)
    return complete / rounds
