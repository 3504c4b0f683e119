"""User-level DP-FedAvg building blocks (McMahan, Ramage, Talwar & Zhang, ICLR 2018), batched.

Threat model: the unit of privacy is one client. Each client's update is clipped to L2 norm C,
so adding or removing a client moves the sum by at most C (replacing one moves it by at most
2C; see :mod:`fedrec.privacy.accounting` for how that changes the accounting).

* Central DP: a trusted server sums the clipped updates and adds N(0, (zC)^2) once.
* Distributed DP: nobody is trusted with the unnoised sum. Each client adds its own share of
  noise, N(0, (zC)^2 / m), before secure aggregation, so that the sum over at least m
  surviving clients carries at least the central noise. If fewer than m clients survive, the
  sum would be under-noised; the round must then abort before the sum is unmasked, which the
  secure-aggregation server and each client enforce (``min_inputs``); :func:`check_survivors`
  is the server's last check on the released sum. A client knows its own share, so m must
  count clients that are honest *and* survive: clients colluding with the server can subtract
  theirs.
* Adaptive clipping (Andrew, Thakkar, McMahan & Ramaswamy, NeurIPS 2021): C tracks a target
  quantile of the update norms, estimated privately from a noised count.

Noise comes from an explicit ``torch.Generator`` so a run is reproducible from its seed. Note
that floating-point Gaussian sampling is not a perfect implementation of the mechanism
(Mironov, CCS 2012, for the Laplace analogue); this matches common practice (Opacus, TFP).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

_FLOAT_DTYPES = (torch.float32, torch.float64)


def _check_clip(clip: float) -> float:
    if not isinstance(clip, int | float) or not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a finite number > 0, got {clip!r}")
    return float(clip)


def _check_std(std: float) -> float:
    if not isinstance(std, int | float) or not (math.isfinite(std) and std >= 0):
        raise ValueError(f"noise std must be a finite number >= 0, got {std!r}")
    return float(std)


def _check_noise_multiplier(noise_multiplier: float) -> float:
    if not isinstance(noise_multiplier, int | float) or not (
        math.isfinite(noise_multiplier) and noise_multiplier >= 0
    ):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    return float(noise_multiplier)


def _check_float_tensor(t: object, name: str, min_dim: int) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")
    if t.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {t.shape}")
    return t


def _scale_from_norms(norms: Tensor, clip: float, what: str) -> Tensor:
    finite = torch.isfinite(norms)
    if not bool(finite.all()):
        row = int(torch.nonzero(~finite)[0, 0])
        raise ValueError(f"{what} of client row {row} is not finite (NaN or inf); cannot clip")
    # min(1, C / norm), with rows within the clip left exactly as they are: torch's scalar
    # division (C * (1 / norm)) can land one ulp under 1 for norm == C.
    return torch.where(norms > clip, clip / norms, torch.ones_like(norms))


def clip_updates(
    updates: Tensor, clip: float, *, norm: Literal["l2", "l1"] = "l2"
) -> tuple[Tensor, Tensor]:
    """Scale each row of ``updates`` [n_clients, dim] to norm <= ``clip``.

    Scaling (not per-coordinate clipping) keeps each update's direction. Returns the clipped
    updates (same dtype) and the norms before clipping (float64, computed in float64 so large
    float32 updates do not overflow); adaptive clipping needs the latter. ``norm="l1"`` is for
    the Laplace mechanism.
    """
    clip = _check_clip(clip)
    updates = _check_float_tensor(updates, "updates", 2)
    if updates.dim() != 2:
        raise ValueError(f"updates must be [n_clients, dim], got shape {tuple(updates.shape)}")
    if norm not in ("l2", "l1"):
        raise ValueError(f"norm must be 'l2' or 'l1', got {norm!r}")
    order = 2.0 if norm == "l2" else 1.0
    norms = torch.linalg.vector_norm(updates, ord=order, dim=1, dtype=torch.float64)
    scale = _scale_from_norms(norms, clip, f"{norm} norm")
    return updates * scale.to(updates.dtype).unsqueeze(1), norms


def clip_named(updates: Mapping[str, Tensor], clip: float) -> tuple[dict[str, Tensor], Tensor]:
    """:func:`clip_updates` for a client's named tensors, each stacked on dim 0.

    The L2 norm is over all of a client's tensors together: the privacy unit is the whole
    upload, not each parameter.
    """
    clip = _check_clip(clip)
    if not updates:
        raise ValueError("updates must contain at least one tensor")
    n_clients: int | None = None
    sq = None
    for name, t in updates.items():
        t = _check_float_tensor(t, f"updates[{name!r}]", 1)
        if n_clients is None:
            n_clients = t.shape[0]
        elif t.shape[0] != n_clients:
            raise ValueError(
                f"updates[{name!r}] has {t.shape[0]} clients on dim 0, expected {n_clients}"
            )
        part = torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1, dtype=torch.float64)
        sq = part.square() if sq is None else sq + part.square()
    assert sq is not None
    norms = sq.sqrt()
    scale = _scale_from_norms(norms, clip, "l2 norm")
    out = {
        name: t * scale.to(t.dtype).reshape((-1,) + (1,) * (t.dim() - 1))
        for name, t in updates.items()
    }
    return out, norms


def central_noise_std(noise_multiplier: float, clip: float) -> float:
    """Std z * C of the noise a trusted server adds once to the sum of clipped updates."""
    return _check_noise_multiplier(noise_multiplier) * _check_clip(clip)


def add_central_noise(total: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """Add N(0, std^2) to every coordinate of the (already summed) ``total``, once."""
    std = _check_std(std)
    total = _check_float_tensor(total, "total", 0)
    noise = torch.randn(total.shape, generator=generator, dtype=total.dtype, device=total.device)
    return total + std * noise


def add_central_noise_named(
    totals: Mapping[str, Tensor], std: float, generator: torch.Generator
) -> dict[str, Tensor]:
    """:func:`add_central_noise` per named tensor, drawn in sorted-name order (reproducible)."""
    std = _check_std(std)
    noised = {name: add_central_noise(totals[name], std, generator) for name in sorted(totals)}
    return {name: noised[name] for name in totals}


def distributed_noise_std(noise_multiplier: float, clip: float, min_survivors: int) -> float:
    """Per-client noise std z*C/sqrt(m): the sum over >= m survivors has std >= z*C.

    If fewer than ``min_survivors`` clients survive, the round must abort (see
    :func:`check_survivors`): the guarantee is never silently weakened.
    """
    if isinstance(min_survivors, bool) or not isinstance(min_survivors, int) or min_survivors < 1:
        raise ValueError(f"min_survivors must be an integer >= 1, got {min_survivors!r}")
    return central_noise_std(noise_multiplier, clip) / math.sqrt(min_survivors)


def min_survivors(expected_clients: float, dropout_allowance: float) -> int:
    """m: the clients whose noise shares must reach the sum, ``floor(expected * (1 -
    allowance))`` and at least 1. The server and each client compute it, each from its own
    copy of the configuration, and each refuses to unmask a sum over fewer inputs."""
    if not (math.isfinite(expected_clients) and expected_clients > 0):
        raise ValueError(f"expected_clients must be > 0, got {expected_clients!r}")
    if not 0.0 <= dropout_allowance < 1.0:
        raise ValueError(f"dropout_allowance must be in [0, 1), got {dropout_allowance!r}")
    return max(1, math.floor(expected_clients * (1.0 - dropout_allowance)))


def add_distributed_noise(updates: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """Each client (row of ``updates`` [n_clients, ...]) adds its own independent share."""
    updates = _check_float_tensor(updates, "updates", 1)
    return add_central_noise(updates, std, generator)


class TooFewSurvivorsError(RuntimeError):
    """The round's distributed noise is below the target: abort the round, release nothing."""


def check_survivors(n_survivors: int, min_survivors: int) -> None:
    """Abort (raise) if the noise shares of ``n_survivors`` clients under-noise the sum."""
    if n_survivors < min_survivors:
        raise TooFewSurvivorsError(
            f"only {n_survivors} clients survived but distributed noise was calibrated for at "
            f"least {min_survivors}; the sum would be under-noised, so the round is aborted"
        )


def adaptive_update_noise_multiplier(noise_multiplier: float, count_noise_std: float) -> float:
    """Update-sum noise multiplier z_Δ when adaptive clipping also releases a noised count.

    Andrew et al. (NeurIPS 2021): releasing the update sum with noise z_Δ·C and the
    centred clip count (bits b_i - 1/2, sensitivity 1/2) with noise σ_b is one Gaussian
    mechanism with noise multiplier z, where z^-2 = z_Δ^-2 + (2σ_b)^-2, hence
    z_Δ = (z^-2 - (2σ_b)^-2)^(-1/2). Account with the total z. Both sensitivities double under
    replace-one adjacency, so the same split holds there. Needs σ_b > z / 2.
    """
    z = _check_noise_multiplier(noise_multiplier)
    sigma_b = _check_std(count_noise_std)
    if z == 0.0:
        return 0.0
    if 2.0 * sigma_b <= z:
        raise ValueError(
            f"count_noise_std={sigma_b} leaves no budget for the updates: it must exceed "
            f"noise_multiplier / 2 = {z / 2} (the paper suggests expected_clients / 20)"
        )
    return float((z**-2 - (2.0 * sigma_b) ** -2) ** -0.5)


_ADAPTIVE_KEYS = frozenset(
    {"clip", "target_quantile", "learning_rate", "count_noise_std", "expected_clients"}
)


class AdaptiveClip:
    """Geometric quantile tracking of the clip norm (Andrew et al., NeurIPS 2021).

    Each round the sampled clients report b_i = 1[norm_i <= C]; the server gets the centred
    count sum(b_i - 1/2) + N(0, σ_b^2), estimates b = noisy / m + 1/2 with m the *expected*
    number of clients (the realised count is not private under Poisson sampling) and sets
    C <- C * exp(-η (b - γ)). Centring halves the count's sensitivity, which is what
    :func:`adaptive_update_noise_multiplier` assumes.
    """

    def __init__(
        self,
        initial_clip: float,
        target_quantile: float = 0.5,
        learning_rate: float = 0.2,
        count_noise_std: float = 0.0,
        expected_clients: float = 1.0,
    ) -> None:
        self._clip = _check_clip(initial_clip)
        if not isinstance(target_quantile, int | float) or not 0.0 < target_quantile < 1.0:
            raise ValueError(f"target_quantile must be in (0, 1), got {target_quantile!r}")
        if not isinstance(learning_rate, int | float) or not (
            math.isfinite(learning_rate) and learning_rate > 0
        ):
            raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
        if not isinstance(expected_clients, int | float) or not (
            math.isfinite(expected_clients) and expected_clients > 0
        ):
            raise ValueError(f"expected_clients must be > 0, got {expected_clients!r}")
        self.target_quantile = float(target_quantile)
        self.learning_rate = float(learning_rate)
        self.count_noise_std = _check_std(count_noise_std)
        self.expected_clients = float(expected_clients)

    @property
    def clip(self) -> float:
        """The clip norm to use this round."""
        return self._clip

    def update_noise_multiplier(self, noise_multiplier: float) -> float:
        """z_Δ for the update sum given the total z (see adaptive_update_noise_multiplier)."""
        return adaptive_update_noise_multiplier(noise_multiplier, self.count_noise_std)

    def update(self, norms: Tensor, generator: torch.Generator) -> float:
        """Move the clip from this round's pre-clipping ``norms`` (central noise); new clip."""
        norms = _check_float_tensor(norms, "norms", 1)
        if norms.dim() != 1:
            raise ValueError(f"norms must be [n_clients], got shape {tuple(norms.shape)}")
        centred = float((norms <= self._clip).to(torch.float64).sum()) - 0.5 * norms.numel()
        noise = torch.randn((), generator=generator, dtype=torch.float64)
        return self.update_from_noisy_count(centred + self.count_noise_std * float(noise))

    def update_from_noisy_count(self, noisy_centred_count: float) -> float:
        """Move the clip from an already noised sum(b_i - 1/2) (e.g. from secure aggregation)."""
        if not math.isfinite(noisy_centred_count):
            raise ValueError(f"noisy count must be finite, got {noisy_centred_count!r}")
        below = noisy_centred_count / self.expected_clients + 0.5
        self._clip *= math.exp(-self.learning_rate * (below - self.target_quantile))
        return self._clip

    def to_dict(self) -> dict[str, Any]:
        return {
            "clip": self._clip,
            "target_quantile": self.target_quantile,
            "learning_rate": self.learning_rate,
            "count_noise_std": self.count_noise_std,
            "expected_clients": self.expected_clients,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> AdaptiveClip:
        keys = set(state)
        if keys != _ADAPTIVE_KEYS:
            missing, unexpected = sorted(_ADAPTIVE_KEYS - keys), sorted(keys - _ADAPTIVE_KEYS)
            raise ValueError(f"bad AdaptiveClip state: missing {missing}, unexpected {unexpected}")
        return cls(
            initial_clip=state["clip"],
            target_quantile=state["target_quantile"],
            learning_rate=state["learning_rate"],
            count_noise_std=state["count_noise_std"],
            expected_clients=state["expected_clients"],
        )
