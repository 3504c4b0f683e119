"""Local differential privacy of each client's upload.

Threat model: nobody is trusted, the server included; every upload must be private on its own.
Adjacency is user-level *replace-one*: the guarantee holds between any two uploads a client
could send, i.e. between its real upload and any other one. The client clips its upload to
norm C, so two uploads differ by at most 2C (the triangle inequality): the sensitivity is 2C
in L2 for the Gaussian mechanism and in L1 for the Laplace mechanism.

* Gaussian: σ is the smallest std that makes one upload (ε, δ)-DP for sensitivity 2C, from the
  exact characterisation of Balle & Wang, "Improving the Gaussian Mechanism for Differential
  Privacy: Analytical Calibration and Optimal Denoising" (ICML 2018, Thm. 8). It is valid for
  every ε > 0 and smaller than the classical σ = Δ sqrt(2 ln(1.25/δ)) / ε (Dwork & Roth,
  Thm. A.1, which only holds for ε < 1).
* Laplace: per-coordinate scale b = 2C / ε after L1 clipping to C; pure ε-DP (δ = 0).

Composition: a client spends ε every round it takes part in, and :meth:`LocalDP.composed_epsilon`
composes exactly those rounds with ``dp_accounting``. There is no amplification by sampling:
the client knows it was selected, and the server sees who uploaded.

Floating-point noise is not a perfect implementation of these mechanisms (Mironov, CCS 2012);
this matches common practice.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import dp_accounting
import torch
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from scipy import special
from torch import Tensor

from fedrec.privacy.dp import clip_updates

Mechanism = Literal["gaussian", "laplace"]


def _check_epsilon(epsilon: float) -> float:
    if not isinstance(epsilon, int | float) or not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    return float(epsilon)


def _check_delta(delta: float) -> float:
    if not isinstance(delta, int | float) or not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    return float(delta)


def _check_positive(value: float, name: str) -> float:
    if not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def gaussian_delta(sigma: float, epsilon: float, sensitivity: float = 1.0) -> float:
    """Smallest δ for which N(0, σ²) noise on an L2-sensitivity-Δ query is (ε, δ)-DP.

    Balle & Wang (ICML 2018, Thm. 8): δ = Φ(Δ/2σ - εσ/Δ) - e^ε Φ(-Δ/2σ - εσ/Δ); exact, so
    both calibration directions can be checked against it.
    """
    sigma = _check_positive(sigma, "sigma")
    epsilon = float(epsilon)
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    sensitivity = _check_positive(sensitivity, "sensitivity")
    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    # e^ε Φ(·) in log space: e^ε overflows long before the product does.
    delta = float(special.ndtr(a - b)) - math.exp(epsilon + float(special.log_ndtr(-a - b)))
    return max(delta, 0.0)


def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """Smallest σ making the Gaussian mechanism (ε, δ)-DP (analytic calibration, bisection).

    δ(σ) from :func:`gaussian_delta` decreases in σ; the returned σ always satisfies
    δ(σ) <= δ and is within a relative 1e-12 of the optimum.
    """
    epsilon = _check_epsilon(epsilon)
    delta = _check_delta(delta)
    sensitivity = _check_positive(sensitivity, "sensitivity")
    hi = sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon
    while gaussian_delta(hi, epsilon, sensitivity) > delta:
        hi *= 2.0
    lo = hi / 2.0
    while gaussian_delta(lo, epsilon, sensitivity) <= delta:
        hi, lo = lo, lo / 2.0
    while hi - lo > 1e-12 * hi:
        mid = 0.5 * (lo + hi)
        if gaussian_delta(mid, epsilon, sensitivity) <= delta:
            hi = mid
        else:
            lo = mid
    return hi


def classical_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """σ = Δ sqrt(2 ln(1.25/δ)) / ε (Dwork & Roth, Thm. A.1); only valid for ε < 1."""
    epsilon = _check_epsilon(epsilon)
    delta = _check_delta(delta)
    sensitivity = _check_positive(sensitivity, "sensitivity")
    if epsilon >= 1.0:
        raise ValueError(
            f"the classical Gaussian calibration needs epsilon < 1, got {epsilon}; "
            "use analytic_gaussian_sigma"
        )
    return sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon


class LocalDP:
    """A client's own clip-and-noise of its upload, batched over clients (one row each).

    ``epsilon`` and ``delta`` are per upload (per round the client takes part in); ``delta``
    must be 0 for the pure-DP Laplace mechanism. ``clip`` is the L2 (Gaussian) or L1
    (Laplace) bound C; the replace-one sensitivity is 2C.
    """

    def __init__(self, mechanism: Mechanism, epsilon: float, delta: float, clip: float) -> None:
        if mechanism not in get_args(Mechanism):
            raise ValueError(f"mechanism must be one of {get_args(Mechanism)}, got {mechanism!r}")
        self._mechanism: Mechanism = mechanism
        self._epsilon = _check_epsilon(epsilon)
        self._clip = _check_positive(clip, "clip")
        if mechanism == "gaussian":
            self._delta = _check_delta(delta)
            self._scale = analytic_gaussian_sigma(self._epsilon, self._delta, self.sensitivity)
        else:
            if delta != 0:
                raise ValueError(
                    f"the Laplace mechanism is pure epsilon-DP: delta must be 0, got {delta!r}"
                )
            self._delta = 0.0
            self._scale = self.sensitivity / self._epsilon

    @property
    def mechanism(self) -> Mechanism:
        return self._mechanism

    @property
    def epsilon_per_round(self) -> float:
        return self._epsilon

    @property
    def delta_per_round(self) -> float:
        return self._delta

    @property
    def clip(self) -> float:
        return self._clip

    @property
    def sensitivity(self) -> float:
        """Replace-one sensitivity 2C of a clipped upload."""
        return 2.0 * self._clip

    @property
    def noise_scale(self) -> float:
        """Gaussian std σ, or Laplace scale b (whose std is b·sqrt(2))."""
        return self._scale

    def apply(self, updates: Tensor, generator: torch.Generator) -> Tensor:
        """Clip each row of ``updates`` [n_clients, dim] and add that client's own noise."""
        clipped, _ = clip_updates(
            updates, self._clip, norm="l2" if self._mechanism == "gaussian" else "l1"
        )
        shape, dtype, device = clipped.shape, clipped.dtype, clipped.device
        if self._mechanism == "gaussian":
            noise = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        else:
            # Laplace(b) = b (E1 - E2) with E1, E2 ~ Exp(1): avoids the log(0) of inverse-CDF
            # sampling and accepts a generator (torch.distributions.Laplace does not).
            e1 = torch.empty(shape, dtype=dtype, device=device).exponential_(generator=generator)
            e2 = torch.empty(shape, dtype=dtype, device=device).exponential_(generator=generator)
            noise = e1 - e2
        return clipped + self._scale * noise

    def composed_epsilon(
        self, rounds: int, delta: float, accountant: Literal["rdp", "pld"] = "pld"
    ) -> float:
        """A client's epsilon at total ``delta`` after ``rounds`` uploads (every one counts).

        Composes the actual mechanism (noise / sensitivity), not the per-round (ε, δ) pairs,
        which would be looser. For Laplace, ``delta=0`` gives the pure bound rounds·ε; with
        ``delta > 0`` the tighter of that and the accountant's bound.
        """
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
            raise ValueError(f"rounds must be an integer >= 0, got {rounds!r}")
        if accountant not in ("rdp", "pld"):
            raise ValueError(f"accountant must be 'rdp' or 'pld', got {accountant!r}")
        if self._mechanism == "laplace" and delta == 0:
            return rounds * self._epsilon
        delta = _check_delta(delta)
        if rounds == 0:
            return 0.0
        # Normalised by the replace-one sensitivity 2C, the pair of outputs is the
        # add/remove-one pair of a sensitivity-1 query, which both accountants handle exactly.
        event: dp_accounting.DpEvent
        if self._mechanism == "gaussian":
            event = dp_accounting.GaussianDpEvent(self._scale / self.sensitivity)
        else:
            event = dp_accounting.LaplaceDpEvent(self._scale / self.sensitivity)
        acc: dp_accounting.PrivacyAccountant
        if accountant == "rdp":
            acc = rdp_privacy_accountant.RdpAccountant()
        else:
            acc = pld_privacy_accountant.PLDAccountant()
        acc.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
        eps = float(acc.get_epsilon(delta))
        if self._mechanism == "laplace":
            eps = min(eps, rounds * self._epsilon)
        return eps

    def __repr__(self) -> str:
        return (
            f"LocalDP(mechanism={self._mechanism!r}, epsilon={self._epsilon}, "
            f"delta={self._delta}, clip={self._clip})"
        )
