"""Local DP: analytic Gaussian calibration, per-client noise, composition over rounds."""

from __future__ import annotations

import math

import dp_accounting
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from fedrec.privacy.ldp import (
    LocalDP,
    analytic_gaussian_sigma,
    classical_gaussian_sigma,
    gaussian_delta,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bw_delta(sigma: float, eps: float, sens: float) -> float:
    """Balle & Wang (2018) Thm. 8, written out independently of the implementation."""
    a, b = sens / (2 * sigma), eps * sigma / sens
    return float(norm.cdf(a - b) - math.exp(eps) * norm.cdf(-a - b))


# ----------------------------------------------------------------- analytic Gaussian
@pytest.mark.parametrize(
    ("eps", "delta"), [(0.1, 1e-5), (0.5, 1e-6), (1.0, 1e-5), (4.0, 1e-8), (8.0, 1e-3)]
)
def test_analytic_sigma_matches_dp_accounting(eps: float, delta: float) -> None:
    assert analytic_gaussian_sigma(eps, delta) == pytest.approx(
        dp_accounting.get_sigma_gaussian(eps, delta), rel=1e-6
    )


@settings(max_examples=30, deadline=None)
@given(st.floats(0.05, 10.0), st.floats(1e-10, 1e-2), st.floats(0.01, 100.0))
def test_analytic_sigma_is_tight_and_valid(eps: float, delta: float, sens: float) -> None:
    sigma = analytic_gaussian_sigma(eps, delta, sens)
    assert bw_delta(sigma, eps, sens) <= delta * (1 + 1e-9)
    assert bw_delta(sigma * (1 - 1e-6), eps, sens) > delta  # no smaller sigma works
    assert gaussian_delta(sigma, eps, sens) == pytest.approx(bw_delta(sigma, eps, sens))
    # Sensitivity is a pure scale.
    assert sigma == pytest.approx(sens * analytic_gaussian_sigma(eps, delta), rel=1e-9)


@pytest.mark.parametrize(("eps", "delta"), [(0.1, 1e-5), (0.5, 1e-6), (0.9, 1e-3)])
def test_analytic_beats_classical(eps: float, delta: float) -> None:
    classical = classical_gaussian_sigma(eps, delta, 2.0)
    analytic = analytic_gaussian_sigma(eps, delta, 2.0)
    assert analytic < classical
    assert bw_delta(classical, eps, 2.0) <= delta  # the classical one is valid, just loose


def test_gaussian_calibration_errors() -> None:
    with pytest.raises(ValueError, match="epsilon < 1"):
        classical_gaussian_sigma(1.0, 1e-5)
    for bad_delta in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="delta"):
            analytic_gaussian_sigma(1.0, bad_delta)
    with pytest.raises(ValueError, match="epsilon"):
        analytic_gaussian_sigma(0.0, 1e-5)
    with pytest.raises(ValueError, match="sensitivity"):
        analytic_gaussian_sigma(1.0, 1e-5, -1.0)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_delta(0.0, 1.0)


# ----------------------------------------------------------------- mechanisms
def test_gaussian_ldp_noise_std() -> None:
    ldp = LocalDP("gaussian", epsilon=2.0, delta=1e-5, clip=0.5)
    assert ldp.sensitivity == 1.0
    assert ldp.noise_scale == pytest.approx(analytic_gaussian_sigma(2.0, 1e-5, 1.0))
    out = ldp.apply(torch.zeros(400, 1000, dtype=torch.float64), gen(1))
    assert out.std().item() == pytest.approx(ldp.noise_scale, rel=0.01)
    # Each row is an independent client draw.
    assert abs(torch.corrcoef(out[:2])[0, 1].item()) < 0.1
    assert torch.equal(out, ldp.apply(torch.zeros(400, 1000, dtype=torch.float64), gen(1)))


def test_laplace_ldp_noise_scale() -> None:
    ldp = LocalDP("laplace", epsilon=0.5, delta=0.0, clip=1.5)
    b = 2 * 1.5 / 0.5  # replace-one L1 sensitivity 2C over epsilon
    assert ldp.noise_scale == pytest.approx(b)
    out = ldp.apply(torch.zeros(400, 1000, dtype=torch.float64), gen(2))
    assert out.abs().mean().item() == pytest.approx(b, rel=0.01)  # E|X| = b
    assert out.var().item() == pytest.approx(2 * b * b, rel=0.02)  # Var = 2 b^2
    assert abs(out.mean().item()) < 0.05
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("mechanism", "delta", "p"), [("gaussian", 1e-5, 2), ("laplace", 0, 1)])
def test_ldp_clips_before_noising(mechanism: str, delta: float, p: int) -> None:
    # Huge epsilon: the noise is small (Gaussian sigma ~ 2e-3), so the output shows the clip.
    ldp = LocalDP(mechanism, epsilon=1e6, delta=delta, clip=1.0)  # type: ignore[arg-type]
    x = torch.tensor([[30.0, -40.0], [0.1, 0.2]])
    out = ldp.apply(x, gen())
    assert torch.linalg.vector_norm(out[0], ord=p).item() == pytest.approx(1.0, abs=0.02)
    torch.testing.assert_close(out[1], x[1], atol=0.02, rtol=0)
    assert out.dtype == torch.float32


# ----------------------------------------------------------------- composition
def test_gaussian_composition() -> None:
    ldp = LocalDP("gaussian", epsilon=1.0, delta=1e-5, clip=1.0)
    # One round at the per-round delta gives back the per-round epsilon (PLD is near exact).
    one = ldp.composed_epsilon(1, 1e-5)
    assert one == pytest.approx(1.0, abs=2e-3)
    assert one >= 1.0 - 1e-6
    # k Gaussians compose to one with sigma / sqrt(k): compare with the exact value.
    k = 25
    many = ldp.composed_epsilon(k, 1e-5)
    exact = dp_accounting.get_epsilon_gaussian(ldp.noise_scale / ldp.sensitivity / 5.0, 1e-5)
    assert many == pytest.approx(exact, rel=2e-3)
    assert ldp.composed_epsilon(k, 1e-5, accountant="rdp") >= exact  # RDP is an upper bound
    assert ldp.composed_epsilon(0, 1e-5) == 0.0
    assert one < ldp.composed_epsilon(4, 1e-5) < many < k * 1.0  # tighter than basic


def test_laplace_composition() -> None:
    ldp = LocalDP("laplace", epsilon=0.3, delta=0.0, clip=1.0)
    assert ldp.composed_epsilon(10, 0.0) == pytest.approx(3.0)  # pure: basic composition
    for kind in ("pld", "rdp"):
        with_delta = ldp.composed_epsilon(50, 1e-6, accountant=kind)  # type: ignore[arg-type]
        assert with_delta < 50 * 0.3
        assert with_delta > 0.3
    assert ldp.composed_epsilon(100, 1e-6) > ldp.composed_epsilon(50, 1e-6)


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("gaussian", 1.0, 1e-5, -1.0), "clip"),
        (("gaussian", 1.0, 1e-5, 0.0), "clip"),
        (("gaussian", 1.0, 1.0, 1.0), "delta"),
        (("gaussian", 1.0, 0.0, 1.0), "delta"),
        (("gaussian", 0.0, 1e-5, 1.0), "epsilon"),
        (("gaussian", math.inf, 1e-5, 1.0), "epsilon"),
        (("laplace", 1.0, 1e-5, 1.0), "delta must be 0"),
        (("exponential", 1.0, 0.0, 1.0), "mechanism"),
    ],
)
def test_local_dp_bad_input(args: tuple[str, float, float, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LocalDP(*args)  # type: ignore[arg-type]


def test_composition_bad_input() -> None:
    ldp = LocalDP("gaussian", 1.0, 1e-5, 1.0)
    with pytest.raises(ValueError, match="delta"):
        ldp.composed_epsilon(5, 0.0)
    with pytest.raises(ValueError, match="rounds"):
        ldp.composed_epsilon(-1, 1e-5)
    with pytest.raises(ValueError, match="accountant"):
        ldp.composed_epsilon(5, 1e-5, accountant="gdp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="row 0 is not finite"):
        ldp.apply(torch.tensor([[math.nan, 1.0]]), gen())
