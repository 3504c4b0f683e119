"""Privacy accounting for user-level DP-FedAvg, on Google's ``dp_accounting``.

Threat model and adjacency: the server (or whoever sees the released model) is the adversary;
the unit of privacy is one *client* (all of a user's data). Each round releases the sum of the
sampled clients' clipped updates (L2 norm <= C) plus Gaussian noise of std ``z * C``.

* Poisson sampling (each client joins a round independently with probability q): neighbouring
  populations differ by adding or removing one client (``ADD_OR_REMOVE_ONE``), the sum has L2
  sensitivity C and the round is ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``
  (Mironov, Talwar & Zhang 2019, "Rényi DP of the Sampled Gaussian Mechanism").
* Fixed-size sampling (exactly m of n clients, without replacement): the population size is
  public, so neighbours differ by *replacing* one client (``REPLACE_ONE``). Two clipped updates
  can then differ by 2C, so the sum's L2 sensitivity is 2C and the noise-to-sensitivity ratio is
  ``z / 2``. The RDP bound used (Wang, Balle & Kasiviswanathan, AISTATS 2019, Thm. 27, as
  implemented by ``dp_accounting``) takes exactly that ratio, so the round is
  ``SampledWithoutReplacementDpEvent(n, m, GaussianDpEvent(z / 2))``. ``dp_accounting`` 0.6.0
  does not halve it for you (google/differential-privacy issue #378), and its PLD accountant has
  no sampling-without-replacement support, so fixed-size sampling is RDP-only here. Accounting a
  fixed-size sample as if it were Poisson would be wrong and is never done.

Amplification by subsampling holds only against someone who does not know who was sampled. A
server that picks the participants (distributed DP: the server is the adversary) knows, so
against it a round is the plain Gaussian mechanism, composed over the rounds released
(``amplification=False``): the per-user worst case of taking part in every one of them. The
server knows who took part, so neighbours differ in a participant's data, not its presence:
its update zeroed out (sensitivity C, ratio z) under Poisson sampling's convention, or
replaced (2C, ratio z / 2) under fixed-size sampling's.

The accountant state is just the configuration plus the number of rounds, so a checkpoint or a
run summary is enough for anyone to recompute epsilon with a fresh ``dp_accounting`` accountant
composed with :meth:`PrivacyAccountant.dp_event`. The API mirrors Opacus' accountants.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import Any, Literal, cast, get_args

import dp_accounting
import numpy as np
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

Sampling = Literal["poisson", "fixed"]
AccountantKind = Literal["rdp", "pld"]

#: ``dp_accounting``'s own default; a coarser interval is faster and still a valid upper bound
#: (the PLD is discretised pessimistically), a finer one is tighter.
DEFAULT_PLD_DISCRETIZATION = 1e-4

_STATE_KEYS = frozenset(
    {
        "noise_multiplier",
        "sampling_rate",
        "sampling",
        "accountant",
        "population",
        "sample_size",
        "pld_discretization",
        "steps",
        "amplification",
    }
)


def _check_delta(delta: float) -> float:
    if not isinstance(delta, int | float) or not 0.0 < float(delta) < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    return float(delta)


def _check_target_epsilon(target_epsilon: float) -> float:
    if not isinstance(target_epsilon, int | float) or not (
        math.isfinite(target_epsilon) and target_epsilon > 0
    ):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    return float(target_epsilon)


def _check_count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        count = operator.index(cast(Any, value))
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if count < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return count


class PrivacyAccountant:
    """Tracks epsilon of DP-FedAvg over rounds (sampled Gaussian mechanism, user-level).

    ``noise_multiplier`` is z = std / C of the noise added to the sum of updates clipped to L2
    norm C. With adaptive clipping it is the *total* z; the update sum then gets the larger
    z_Δ of :func:`fedrec.privacy.dp.adaptive_update_noise_multiplier`. For ``sampling="fixed"``
    give ``population`` and ``sample_size``; ``sampling_rate`` is then derived (and checked if
    also given). Under Poisson sampling the server must average with the *expected* number of
    clients, not the realised one, or the sensitivity analysis does not hold.
    ``amplification=False`` accounts each round as if its client had been sampled for sure
    (against an adversary that chose the sample; see the module docstring).
    """

    def __init__(
        self,
        noise_multiplier: float,
        sampling_rate: float | None = None,
        sampling: Sampling = "poisson",
        accountant: AccountantKind = "rdp",
        population: int | None = None,
        sample_size: int | None = None,
        pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
        amplification: bool = True,
    ) -> None:
        if not isinstance(noise_multiplier, int | float) or not (
            math.isfinite(noise_multiplier) and noise_multiplier >= 0
        ):
            raise ValueError(
                f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}"
            )
        if sampling not in get_args(Sampling):
            raise ValueError(f"sampling must be one of {get_args(Sampling)}, got {sampling!r}")
        if accountant not in get_args(AccountantKind):
            raise ValueError(
                f"accountant must be one of {get_args(AccountantKind)}, got {accountant!r}"
            )
        if not isinstance(pld_discretization, int | float) or not (
            math.isfinite(pld_discretization) and pld_discretization > 0
        ):
            raise ValueError(f"pld_discretization must be > 0, got {pld_discretization!r}")
        if not isinstance(amplification, bool):
            raise ValueError(f"amplification must be True or False, got {amplification!r}")

        if sampling == "poisson":
            if population is not None or sample_size is not None:
                raise ValueError(
                    "population and sample_size only apply to sampling='fixed'; "
                    "Poisson sampling is described by sampling_rate alone"
                )
            if sampling_rate is None:
                raise ValueError("sampling_rate is required for sampling='poisson'")
            if not isinstance(sampling_rate, int | float) or not 0.0 < sampling_rate <= 1.0:
                raise ValueError(f"sampling_rate must be in (0, 1], got {sampling_rate!r}")
            q = float(sampling_rate)
        else:
            if population is None or sample_size is None:
                raise ValueError("sampling='fixed' needs both population and sample_size")
            population = _check_count(population, "population", 1)
            sample_size = _check_count(sample_size, "sample_size", 1)
            if sample_size > population:
                raise ValueError(
                    f"sample_size ({sample_size}) cannot exceed population ({population})"
                )
            q = sample_size / population
            if sampling_rate is not None and not math.isclose(
                sampling_rate, q, rel_tol=1e-9, abs_tol=0.0
            ):
                raise ValueError(
                    f"sampling_rate {sampling_rate!r} disagrees with sample_size/population = {q}"
                )
            if accountant == "pld":
                raise ValueError(
                    "PLD accounting of fixed-size sampling (without replacement, replace-one "
                    "adjacency) is not supported by dp_accounting's PLDAccountant; use "
                    "accountant='rdp' (accounting it as Poisson sampling would be wrong)"
                )

        self._z = float(noise_multiplier)
        self._q = q
        self._sampling: Sampling = sampling
        self._accountant: AccountantKind = accountant
        self._population = population
        self._sample_size = sample_size
        self._pld_discretization = float(pld_discretization)
        self._amplification = bool(amplification)
        self._steps = 0
        self._rdp_one_round: tuple[np.ndarray, np.ndarray] | None = None
        self._eps_cache: dict[tuple[int, float], float] = {}

    # ----------------------------------------------------------------- configuration
    @property
    def noise_multiplier(self) -> float:
        return self._z

    @property
    def sampling_rate(self) -> float:
        return self._q

    @property
    def sampling(self) -> Sampling:
        return self._sampling

    @property
    def accountant(self) -> AccountantKind:
        return self._accountant

    @property
    def population(self) -> int | None:
        return self._population

    @property
    def sample_size(self) -> int | None:
        return self._sample_size

    @property
    def amplification(self) -> bool:
        """Whether rounds are amplified by the sampling (False: the sampler is the adversary)."""
        return self._amplification

    def without_amplification(self) -> PrivacyAccountant:
        """The same mechanism and rounds, accounted against whoever picked the participants."""
        return PrivacyAccountant.from_dict({**self.to_dict(), "amplification": False})

    @property
    def steps(self) -> int:
        """Rounds accounted so far."""
        return self._steps

    @property
    def neighboring_relation(self) -> dp_accounting.NeighboringRelation:
        """The adjacency the epsilon refers to (see the module docstring)."""
        if self._sampling == "fixed":
            return dp_accounting.NeighboringRelation.REPLACE_ONE
        return dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE

    # ----------------------------------------------------------------- events
    def round_event(self) -> dp_accounting.DpEvent:
        """The ``DpEvent`` of one round."""
        if not self._amplification:
            # The sample is known: one Gaussian release of the sum, at the adjacency's ratio.
            z = self._z / 2 if self._sampling == "fixed" else self._z
            return dp_accounting.GaussianDpEvent(z)
        if self._sampling == "fixed":
            assert self._population is not None and self._sample_size is not None
            # Replace-one sensitivity of the clipped sum is 2C: the ratio is z / 2.
            return dp_accounting.SampledWithoutReplacementDpEvent(
                self._population, self._sample_size, dp_accounting.GaussianDpEvent(self._z / 2)
            )
        return dp_accounting.PoissonSampledDpEvent(self._q, dp_accounting.GaussianDpEvent(self._z))

    def dp_event(self, rounds: int | None = None) -> dp_accounting.DpEvent:
        """The ``DpEvent`` of ``rounds`` rounds (default: the rounds accounted so far)."""
        n = self._steps if rounds is None else _check_count(rounds, "rounds", 0)
        return dp_accounting.SelfComposedDpEvent(self.round_event(), n)

    def _new_dp_accountant(self) -> dp_accounting.PrivacyAccountant:
        if self._accountant == "rdp":
            return rdp_privacy_accountant.RdpAccountant(
                neighboring_relation=self.neighboring_relation
            )
        return pld_privacy_accountant.PLDAccountant(
            neighboring_relation=self.neighboring_relation,
            value_discretization_interval=self._pld_discretization,
        )

    # ----------------------------------------------------------------- accounting
    def step(self, rounds: int = 1) -> None:
        """Record ``rounds`` more rounds (call after each round that released an aggregate)."""
        self._steps += _check_count(rounds, "rounds", 0)

    def epsilon(self, delta: float) -> float:
        """Epsilon after the rounds accounted so far, at ``delta``."""
        return self.epsilon_after(self._steps, delta)

    def epsilon_after(self, rounds: int, delta: float) -> float:
        """Epsilon after ``rounds`` rounds in total (whatever has been accounted so far)."""
        rounds = _check_count(rounds, "rounds", 0)
        delta = _check_delta(delta)
        if rounds == 0:
            return 0.0
        if self._z == 0.0:
            return math.inf
        key = (rounds, delta)
        cached = self._eps_cache.get(key)
        if cached is not None:
            return cached
        if self._accountant == "rdp":
            # RDP composes additively, so n rounds = n * (one round's RDP), exactly what a fresh
            # RdpAccountant composed with dp_event(n) computes; caching one round saves the
            # expensive part when the training loop asks every round.
            if self._rdp_one_round is None:
                acc = self._new_dp_accountant()
                acc.compose(self.round_event())
                self._rdp_one_round = (acc.orders, acc.rdp)
            orders, rdp = self._rdp_one_round
            eps = float(rdp_privacy_accountant.compute_epsilon(orders, rounds * rdp, delta)[0])
        else:
            acc = self._new_dp_accountant()
            acc.compose(self.dp_event(rounds))
            eps = float(acc.get_epsilon(delta))
        if len(self._eps_cache) > 4096:
            self._eps_cache.clear()
        self._eps_cache[key] = eps
        return eps

    def would_exceed(self, target_epsilon: float, delta: float, rounds: int = 1) -> bool:
        """Whether running ``rounds`` more rounds would push epsilon above ``target_epsilon``.

        The training loop calls this *before* each round and stops on True, so no round that
        breaks the budget is ever run.
        """
        target_epsilon = _check_target_epsilon(target_epsilon)
        rounds = _check_count(rounds, "rounds", 1)
        return self.epsilon_after(self._steps + rounds, delta) > target_epsilon

    def rounds_within_budget(self, target_epsilon: float, delta: float, max_rounds: int) -> int:
        """How many more rounds (at most ``max_rounds``) keep epsilon <= ``target_epsilon``.

        Epsilon is monotone in the number of rounds, so this bisects; use it to plan a run once
        instead of paying a PLD evaluation per round.
        """
        target_epsilon = _check_target_epsilon(target_epsilon)
        max_rounds = _check_count(max_rounds, "max_rounds", 0)
        if self.epsilon_after(self._steps, delta) > target_epsilon:
            return 0
        lo, hi = 0, max_rounds  # lo rounds are affordable; answer in [lo, hi]
        if self.epsilon_after(self._steps + hi, delta) <= target_epsilon:
            return hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.epsilon_after(self._steps + mid, delta) <= target_epsilon:
                lo = mid
            else:
                hi = mid
        return lo

    # ----------------------------------------------------------------- serialization
    def describe(self, delta: float) -> dict[str, Any]:
        """What a run summary must record so anyone can recompute epsilon."""
        out: dict[str, Any] = {
            "epsilon": self.epsilon(delta),
            "delta": _check_delta(delta),
            "noise_multiplier": self._z,
            "sampling_rate": self._q,
            "sampling": self._sampling,
            "rounds": self._steps,
            "accountant": self._accountant,
            "amplification": self._amplification,
            "neighboring_relation": self.neighboring_relation.name,
            "dp_event": repr(self.dp_event()),
        }
        if self._sampling == "fixed":
            out["population"] = self._population
            out["sample_size"] = self._sample_size
        if self._accountant == "pld":
            out["pld_discretization"] = self._pld_discretization
        return out

    def to_dict(self) -> dict[str, Any]:
        """Checkpoint state (JSON-serialisable)."""
        return {
            "noise_multiplier": self._z,
            "sampling_rate": self._q,
            "sampling": self._sampling,
            "accountant": self._accountant,
            "population": self._population,
            "sample_size": self._sample_size,
            "pld_discretization": self._pld_discretization,
            "steps": self._steps,
            "amplification": self._amplification,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> PrivacyAccountant:
        """Restore from :meth:`to_dict`; unknown or missing keys are an error, not a default
        (except ``amplification``: states written before it existed were all amplified)."""
        if "amplification" not in state:
            state = {**state, "amplification": True}
        keys = set(state)
        if keys != _STATE_KEYS:
            raise ValueError(
                "bad PrivacyAccountant state: "
                f"missing {sorted(_STATE_KEYS - keys)}, unexpected {sorted(keys - _STATE_KEYS)}"
            )
        fixed = state["sampling"] == "fixed"
        acc = cls(
            noise_multiplier=state["noise_multiplier"],
            sampling_rate=None if fixed else state["sampling_rate"],
            sampling=state["sampling"],
            accountant=state["accountant"],
            population=state["population"],
            sample_size=state["sample_size"],
            pld_discretization=state["pld_discretization"],
            amplification=state["amplification"],
        )
        acc.step(state["steps"])
        return acc

    def __repr__(self) -> str:
        extra = (
            f", population={self._population}, sample_size={self._sample_size}"
            if self._sampling == "fixed"
            else ""
        )
        return (
            f"PrivacyAccountant(noise_multiplier={self._z}, sampling_rate={self._q}, "
            f"sampling={self._sampling!r}, accountant={self._accountant!r}{extra}, "
            f"amplification={self._amplification}, steps={self._steps})"
        )


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    rounds: int,
    sampling_rate: float | None = None,
    sampling: Sampling = "poisson",
    accountant: AccountantKind = "rdp",
    population: int | None = None,
    sample_size: int | None = None,
    tol: float = 1e-3,
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
    max_noise_multiplier: float = 1e6,
    amplification: bool = True,
) -> float:
    """Smallest noise multiplier z (to within ``tol``) with epsilon(rounds) <= target.

    Epsilon decreases in z, so this brackets by doubling and then bisects; the returned z is
    always feasible (its epsilon was computed and is <= target), and z - tol is not. A target
    that needs more than ``max_noise_multiplier`` is reported as unreachable.
    """
    target_epsilon = _check_target_epsilon(target_epsilon)
    delta = _check_delta(delta)
    rounds = _check_count(rounds, "rounds", 1)
    if not isinstance(tol, int | float) or not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
    if not isinstance(max_noise_multiplier, int | float) or not max_noise_multiplier > 0:
        raise ValueError(f"max_noise_multiplier must be > 0, got {max_noise_multiplier!r}")

    def eps(z: float) -> float:
        acc = PrivacyAccountant(
            z,
            sampling_rate,
            sampling,
            accountant,
            population=population,
            sample_size=sample_size,
            pld_discretization=pld_discretization,
            amplification=amplification,
        )
        return acc.epsilon_after(rounds, delta)

    # eps(lo) > target (z = 0 gives inf); eps(hi) <= target once bracketed.
    lo, hi = 0.0, min(1.0, float(max_noise_multiplier))
    hi_eps = eps(hi)  # also validates the sampling arguments before any search
    while hi_eps > target_epsilon:
        if hi >= max_noise_multiplier:
            raise ValueError(
                f"target_epsilon={target_epsilon} at delta={delta} over {rounds} rounds is "
                f"unreachable: even noise_multiplier={hi:g} (max_noise_multiplier) gives "
                f"epsilon={hi_eps:.4g}"
            )
        lo, hi = hi, min(hi * 2.0, float(max_noise_multiplier))
        hi_eps = eps(hi)
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if eps(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi
