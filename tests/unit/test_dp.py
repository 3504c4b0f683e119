"""DP-FedAvg pieces: clipping, central and distributed noise, adaptive clipping."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedrec.privacy.dp import (
    AdaptiveClip,
    TooFewSurvivorsError,
    adaptive_update_noise_multiplier,
    add_central_noise,
    add_central_noise_named,
    add_distributed_noise,
    central_noise_std,
    check_survivors,
    clip_named,
    clip_updates,
    distributed_noise_std,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------- clipping
def test_clip_bounds_norms_and_keeps_small_updates() -> None:
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0], [-6.0, 8.0]], dtype=torch.float64)
    clipped, norms = clip_updates(x, 1.0)
    assert norms.tolist() == [5.0, 0.5, 0.0, 10.0]
    assert torch.equal(clipped[1], x[1])  # under the clip: untouched, bit for bit
    assert torch.equal(clipped[2], x[2])
    torch.testing.assert_close(clipped[0], torch.tensor([0.6, 0.8], dtype=torch.float64))
    torch.testing.assert_close(clipped[3], torch.tensor([-0.6, 0.8], dtype=torch.float64))


def test_clip_keeps_dtype_and_reports_float64_norms() -> None:
    x = torch.full((2, 3), 1e20, dtype=torch.float32)  # squares overflow float32
    clipped, norms = clip_updates(x, 2.0)
    assert clipped.dtype == torch.float32
    assert norms.dtype == torch.float64
    assert torch.isfinite(norms).all()
    torch.testing.assert_close(
        torch.linalg.vector_norm(clipped, dim=1), torch.full((2,), 2.0), rtol=1e-5, atol=0
    )


def test_clip_l1() -> None:
    x = torch.tensor([[3.0, -1.0], [0.2, 0.1]])
    clipped, norms = clip_updates(x, 2.0, norm="l1")
    assert norms.tolist() == pytest.approx([4.0, 0.3])
    torch.testing.assert_close(clipped[0], torch.tensor([1.5, -0.5]))
    assert torch.equal(clipped[1], x[1])


@settings(max_examples=40, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 6), st.integers(1, 20)),
        elements=st.floats(-1e6, 1e6, allow_nan=False),
    ),
    st.floats(1e-3, 1e3),
    st.sampled_from([torch.float32, torch.float64]),
)
@example(np.array([[79.2109375]]), 79.2109375, torch.float64)  # norm == clip: left exact
def test_clip_property(x: np.ndarray, clip: float, dtype: torch.dtype) -> None:
    t = torch.from_numpy(x).to(dtype)
    clipped, norms = clip_updates(t, clip)
    out_norms = torch.linalg.vector_norm(clipped.double(), dim=1)
    eps = torch.finfo(dtype).eps
    assert bool((out_norms <= clip * (1 + 8 * eps)).all())
    torch.testing.assert_close(norms, torch.linalg.vector_norm(t.double(), dim=1))
    for row, (orig, new) in enumerate(zip(t.double(), clipped.double(), strict=True)):
        if norms[row] <= clip:
            assert torch.equal(orig, new)
        elif norms[row] > 0 and out_norms[row] > 0:
            # Same direction: a positive multiple of the original.
            torch.testing.assert_close(
                new / out_norms[row], orig / norms[row], rtol=1e-4, atol=1e-6
            )


def test_clip_named_uses_joint_norm() -> None:
    # Client 0: each part is under the clip, but the joint norm sqrt(0.9^2 + 0.8^2) is not;
    # client 1 is under the clip as a whole.
    a = torch.tensor([[0.9, 0.0], [0.2, 0.0]])
    b = torch.tensor([[[0.8]], [[0.0]]])
    clipped, norms = clip_named({"a": a, "b": b}, 1.0)
    assert norms[0].item() == pytest.approx(math.sqrt(0.81 + 0.64))
    assert norms[0].item() > 1.0
    flat = torch.cat([clipped["a"].reshape(2, -1), clipped["b"].reshape(2, -1)], dim=1)
    ref, ref_norms = clip_updates(torch.cat([a.reshape(2, -1), b.reshape(2, -1)], dim=1), 1.0)
    torch.testing.assert_close(flat, ref)
    torch.testing.assert_close(norms, ref_norms)
    assert clipped["b"].shape == b.shape
    assert torch.equal(clipped["a"][1], a[1])


@pytest.mark.parametrize("clip", [0.0, -1.0, math.inf, math.nan])
def test_clip_rejects_bad_clip(clip: float) -> None:
    with pytest.raises(ValueError, match="clip"):
        clip_updates(torch.ones(2, 2), clip)
    with pytest.raises(ValueError, match="clip"):
        clip_named({"a": torch.ones(2, 2)}, clip)


def test_clip_rejects_bad_updates() -> None:
    with pytest.raises(ValueError, match="row 1 is not finite"):
        clip_updates(torch.tensor([[1.0, 0.0], [math.nan, 0.0]]), 1.0)
    with pytest.raises(ValueError, match="row 0 is not finite"):
        clip_updates(torch.tensor([[math.inf, 0.0]]), 1.0)
    with pytest.raises(ValueError, match="n_clients, dim"):
        clip_updates(torch.ones(2, 2, 2), 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        clip_updates(torch.ones(3), 1.0)
    with pytest.raises(TypeError, match="float32 or float64"):
        clip_updates(torch.ones(2, 2, dtype=torch.int64), 1.0)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        clip_updates(np.ones((2, 2)), 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="norm"):
        clip_updates(torch.ones(2, 2), 1.0, norm="linf")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        clip_named({}, 1.0)
    with pytest.raises(ValueError, match="3 clients on dim 0, expected 2"):
        clip_named({"a": torch.ones(2, 2), "b": torch.ones(3)}, 1.0)


# ----------------------------------------------------------------- central / distributed noise
def test_central_noise_std_and_determinism() -> None:
    std = central_noise_std(0.7, 2.0)
    assert std == pytest.approx(1.4)
    total = torch.full((400_000,), 5.0, dtype=torch.float64)
    noised = add_central_noise(total, std, gen(1))
    noise = noised - total
    assert noise.std().item() == pytest.approx(std, rel=0.01)
    assert abs(noise.mean().item()) < 4 * std / math.sqrt(total.numel())
    assert torch.equal(noised, add_central_noise(total, std, gen(1)))
    assert not torch.equal(noised, add_central_noise(total, std, gen(2)))
    assert torch.equal(add_central_noise(total, 0.0, gen(1)), total)
    assert add_central_noise(torch.zeros(3, dtype=torch.float32), 1.0, gen()).dtype == (
        torch.float32
    )


def test_central_noise_named_is_order_independent() -> None:
    a = {"w": torch.zeros(4), "b": torch.zeros(2)}
    b = {"b": torch.zeros(2), "w": torch.zeros(4)}
    na, nb = add_central_noise_named(a, 1.0, gen(3)), add_central_noise_named(b, 1.0, gen(3))
    assert list(na) == ["w", "b"]
    for k in a:
        assert torch.equal(na[k], nb[k])
    assert not torch.equal(na["w"][:2], na["b"])  # independent draws per tensor


def test_distributed_noise_sums_to_central_std() -> None:
    z, clip, m = 1.1, 0.5, 16
    share = distributed_noise_std(z, clip, m)
    assert share == pytest.approx(z * clip / 4)
    updates = torch.zeros(m, 50_000, dtype=torch.float64)
    noised = add_distributed_noise(updates, share, gen(4))
    per_client = noised.std(dim=1)
    assert torch.allclose(per_client, torch.full((m,), share, dtype=torch.float64), rtol=0.03)
    assert noised.sum(dim=0).std().item() == pytest.approx(z * clip, rel=0.02)
    # Each client's share is independent: rows are uncorrelated.
    corr = torch.corrcoef(noised[:2])[0, 1].item()
    assert abs(corr) < 0.03


def test_too_few_survivors_abort() -> None:
    check_survivors(10, 10)
    check_survivors(11, 10)
    with pytest.raises(TooFewSurvivorsError, match="aborted"):
        check_survivors(9, 10)


def test_noise_bad_input() -> None:
    with pytest.raises(ValueError, match="std"):
        add_central_noise(torch.zeros(2), -1.0, gen())
    with pytest.raises(ValueError, match="noise_multiplier"):
        central_noise_std(-0.1, 1.0)
    with pytest.raises(ValueError, match="clip"):
        central_noise_std(1.0, 0.0)
    with pytest.raises(ValueError, match="min_survivors"):
        distributed_noise_std(1.0, 1.0, 0)
    with pytest.raises(ValueError, match="min_survivors"):
        distributed_noise_std(1.0, 1.0, 2.5)  # type: ignore[arg-type]


# ----------------------------------------------------------------- adaptive clipping
@pytest.mark.parametrize(("z", "sigma_b"), [(1.0, 5.0), (0.8, 0.5), (2.0, 1.01)])
def test_adaptive_noise_split(z: float, sigma_b: float) -> None:
    z_delta = adaptive_update_noise_multiplier(z, sigma_b)
    assert z_delta > z
    # Whitened, the pair (update sum, centred count) has sensitivity sqrt(z_Δ^-2 + (2σ_b)^-2)
    # per unit of noise: the combined mechanism is a Gaussian with multiplier z.
    assert (z_delta**-2 + (2 * sigma_b) ** -2) ** -0.5 == pytest.approx(z, rel=1e-12)


def test_adaptive_noise_split_errors() -> None:
    assert adaptive_update_noise_multiplier(0.0, 0.0) == 0.0
    with pytest.raises(ValueError, match="count_noise_std"):
        adaptive_update_noise_multiplier(1.0, 0.5)
    with pytest.raises(ValueError, match="count_noise_std"):
        adaptive_update_noise_multiplier(1.0, 0.0)


@pytest.mark.parametrize("gamma", [0.5, 0.9])
def test_adaptive_clip_converges_to_target_quantile(gamma: float) -> None:
    g = gen(5)
    m = 1000
    ac = AdaptiveClip(
        0.01, target_quantile=gamma, learning_rate=0.2, count_noise_std=m / 20, expected_clients=m
    )
    for _ in range(300):
        norms = torch.exp(0.5 * torch.randn(m, generator=g, dtype=torch.float64))  # lognormal
        ac.update(norms, g)
    true_quantile = math.exp(0.5 * NormalDist().inv_cdf(gamma))  # lognormal(0, 0.5)
    assert ac.clip == pytest.approx(true_quantile, rel=0.08)
    fresh = torch.exp(0.5 * torch.randn(100_000, generator=g, dtype=torch.float64))
    assert (fresh <= ac.clip).double().mean().item() == pytest.approx(gamma, abs=0.03)


def test_adaptive_clip_direction_and_determinism() -> None:
    norms = torch.full((100,), 2.0)
    up = AdaptiveClip(1.0, count_noise_std=0.0, expected_clients=100)
    assert up.update(norms, gen()) > 1.0  # nobody below the clip: grow
    down = AdaptiveClip(3.0, count_noise_std=0.0, expected_clients=100)
    new = down.update(norms, gen())  # everybody below: shrink by exp(-0.2 * 0.5)
    assert new == pytest.approx(3.0 * math.exp(-0.1))
    noisy = [AdaptiveClip(1.0, count_noise_std=10.0, expected_clients=100) for _ in range(2)]
    assert noisy[0].update(norms, gen(7)) == noisy[1].update(norms, gen(7))


def test_adaptive_clip_serialization_resumes_identically() -> None:
    g = gen(11)
    norms = [torch.rand(50, generator=g) * 3 for _ in range(6)]
    straight = AdaptiveClip(0.5, 0.7, 0.3, count_noise_std=2.5, expected_clients=50)
    g1 = gen(12)
    for n in norms:
        straight.update(n, g1)
    resumed = AdaptiveClip(0.5, 0.7, 0.3, count_noise_std=2.5, expected_clients=50)
    g2 = gen(12)
    for n in norms[:3]:
        resumed.update(n, g2)
    resumed = AdaptiveClip.from_dict(resumed.to_dict())
    for n in norms[3:]:
        resumed.update(n, g2)
    assert resumed.clip == straight.clip
    assert resumed.to_dict() == straight.to_dict()
    with pytest.raises(ValueError, match="missing \\['clip'\\]"):
        AdaptiveClip.from_dict({k: v for k, v in straight.to_dict().items() if k != "clip"})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"initial_clip": 0.0}, "clip"),
        ({"target_quantile": 1.0}, "target_quantile"),
        ({"target_quantile": 0.0}, "target_quantile"),
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"count_noise_std": -1.0}, "std"),
        ({"expected_clients": 0}, "expected_clients"),
    ],
)
def test_adaptive_clip_bad_input(kwargs: dict[str, float], match: str) -> None:
    args = {"initial_clip": 1.0} | kwargs
    with pytest.raises(ValueError, match=match):
        AdaptiveClip(**args)


def test_adaptive_clip_bad_norms() -> None:
    ac = AdaptiveClip(1.0)
    with pytest.raises(ValueError, match="n_clients"):
        ac.update(torch.ones(2, 2), gen())
    with pytest.raises(ValueError, match="finite"):
        ac.update_from_noisy_count(math.nan)
