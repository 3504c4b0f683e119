"""The server's side of user-level DP: noise on the sum, private per-row counts, adaptive
clipping, accounting and the budget.

The server only ever holds an :class:`~fedrec.federated.aggregate.Accumulator` of sums (from
plain uploads, or unmasked by secure aggregation). Here that sum becomes the update the
strategy applies:

* central DP adds N(0, (z_Δ C)^2) to every entry of the sum (every item row, every per-row
  count, every dense value: entries no client touched too), distributed DP finds the noise
  already there (the clients' shares) and checks enough clients survived to carry it; a
  parameter given clip weight w (``privacy.dp.clip_weights``) was clipped as w times its
  update, so its share of that noise is z_Δ C / w;
* with per-row averaging, item rows are averaged over their *noisy* per-row count, and rows
  whose noisy count is under ``min_count`` are left unchanged (post-processing of the noised
  sum: still private). That count's noise is z C / ``count_scale`` clients, and clipping
  shrinks the true counts, so over long runs the rows' noise can swamp them. With
  ``item_aggregation = "fedavg"`` rows are divided by the expected number of clients instead,
  a public denominator, and uploads carry no counts;
* dense tensors are divided by the *expected* number of clients, not the realised one (which
  is not private under Poisson sampling);
* the accountant (dp-accounting) is stepped once per released aggregate, with the total z
  (adaptive clipping splits it between the updates and the clip count);
* two adversaries: whoever sees only the released model gets amplification by sampling; under
  distributed DP the server is the adversary and it picks the participants, so against it
  no round is amplified. The budget (``target_epsilon``, and the calibrated noise) uses the
  figure of the configured threat model, and the summary states both when they differ;
* an empty round (no participant) under central DP still releases the noise, as the
  accountant assumes every round does; under distributed DP it has no noise shares and aborts
  like any round below m survivors: nothing is released, nothing is accounted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from fedrec.federated import rng
from fedrec.federated.aggregate import Accumulator
from fedrec.federated.server import RoundAbortedError
from fedrec.privacy.accounting import PrivacyAccountant, calibrate_noise
from fedrec.privacy.dp import (
    AdaptiveClip,
    TooFewSurvivorsError,
    check_survivors,
    distributed_noise_std,
    min_survivors,
)
from fedrec.privacy.ldp import LocalDP
from fedrec.privacy.upload import ClientProtection

DP_NOISE = 11
"""rng stream tag of the server's central noise."""


@dataclass(frozen=True)
class Sampling:
    """How clients are sampled, as the accountant needs it."""

    kind: Literal["poisson", "fixed"]
    population: int
    rate: float
    sample_size: int | None = None

    @property
    def expected_clients(self) -> float:
        return self.rate * self.population if self.sample_size is None else self.sample_size

    @staticmethod
    def of(sampling: str, population: int, *, fraction: float, count: int, rate: float) -> Sampling:
        if sampling == "all":
            return Sampling("poisson", population, 1.0)
        if sampling == "poisson":
            return Sampling("poisson", population, rate)
        size = (
            min(count, population) if sampling == "count" else max(1, round(fraction * population))
        )
        return Sampling("fixed", population, size / population, size)


@dataclass(frozen=True)
class DPSettings:
    clip: float
    noise_multiplier: float | None
    """None: calibrated from ``target_epsilon`` over the run's rounds."""
    delta: float
    distributed: bool
    accountant: Literal["rdp", "pld"]
    target_epsilon: float | None
    count_scale: float | None
    """None: uploads carry no per-row counts (rows averaged over a public denominator)."""
    min_count: float
    adaptive: bool
    target_quantile: float
    clip_lr: float
    clip_count_stddev: float | None
    dropout_allowance: float
    """Distributed DP: fraction of the expected clients that may drop before the round aborts."""
    weights: Mapping[str, float] = field(default_factory=dict)
    """Per-parameter clip weights (``privacy.dp.clip_weights``): central noise on a
    parameter's sum is ``std / weight``; weight 0 leaves the parameter unchanged."""


class ServerPrivacy:
    """Per-run DP state on the server: accountant, clip, and what clients must do each round."""

    def __init__(
        self,
        dp: DPSettings | None,
        sampling: Sampling,
        *,
        ldp: LocalDP | None = None,
        seed: int = 0,
        rounds: int = 1,
    ) -> None:
        self.dp = dp
        self.ldp = ldp
        self.sampling = sampling
        self.seed = seed
        self.participation = torch.zeros(sampling.population, dtype=torch.int32)
        self.accountant: PrivacyAccountant | None = None
        self.adaptive: AdaptiveClip | None = None
        self.noise_multiplier = 0.0
        if dp is None:
            return
        # Against the server that samples, amplification does not hold (module docstring).
        amplified = not dp.distributed
        if dp.noise_multiplier is None:
            assert dp.target_epsilon is not None
            self.noise_multiplier = calibrate_noise(
                dp.target_epsilon,
                dp.delta,
                rounds,
                sampling.rate,
                sampling.kind,
                dp.accountant,
                population=sampling.population if sampling.kind == "fixed" else None,
                sample_size=sampling.sample_size,
                amplification=amplified,
            )
        else:
            self.noise_multiplier = dp.noise_multiplier
        self.accountant = PrivacyAccountant(
            self.noise_multiplier,
            None if sampling.kind == "fixed" else sampling.rate,
            sampling.kind,
            dp.accountant,
            population=sampling.population if sampling.kind == "fixed" else None,
            sample_size=sampling.sample_size,
        )
        if dp.adaptive:
            expected = sampling.expected_clients
            self.adaptive = AdaptiveClip(
                dp.clip,
                dp.target_quantile,
                dp.clip_lr,
                dp.clip_count_stddev or expected / 20.0,
                expected,
            )

    # ------------------------------------------------------------------ per round
    @property
    def clip(self) -> float | None:
        if self.dp is None:
            return None
        return self.adaptive.clip if self.adaptive is not None else self.dp.clip

    @property
    def update_noise_multiplier(self) -> float:
        """z_Δ: the share of the total z spent on the update sum."""
        if self.adaptive is not None:
            return self.adaptive.update_noise_multiplier(self.noise_multiplier)
        return self.noise_multiplier

    def min_survivors(self) -> int:
        assert self.dp is not None
        return min_survivors(self.sampling.expected_clients, self.dp.dropout_allowance)

    def client_protection(self) -> ClientProtection:
        """What each client of the coming round must do to its upload."""
        if self.dp is None:
            return ClientProtection(ldp=self.ldp)
        clip = self.clip
        assert clip is not None
        if not self.dp.distributed:
            return ClientProtection(clip=clip)
        m = self.min_survivors()
        count_std = 0.0
        if self.adaptive is not None:
            count_std = self.adaptive.count_noise_std / math.sqrt(m)
        return ClientProtection(
            clip=clip,
            noise_std=distributed_noise_std(self.update_noise_multiplier, clip, m),
            count_noise_std=count_std,
        )

    @property
    def adversary_is_server(self) -> bool:
        """Distributed DP: the server is not trusted, and it chose who took part."""
        return self.dp is not None and self.dp.distributed

    @property
    def budget_accountant(self) -> PrivacyAccountant | None:
        """The accounting of the configured threat model: without amplification against a
        server that samples (distributed DP), with it against whoever sees the released model."""
        if self.accountant is None:
            return None
        return (
            self.accountant.without_amplification() if self.adversary_is_server else self.accountant
        )

    @property
    def releases_empty_rounds(self) -> bool:
        """Central DP noises even a round nobody joined: the accountant assumes every round
        releases a noised sum, and skipping one would tell that nobody was sampled. Under
        distributed DP the noise is the clients' shares, so an empty round (fewer than m
        survivors) aborts instead and is not accounted: the server, the adversary there,
        knows who took part anyway, but a released-model observer sees a round skipped,
        which the amplified figure does not cover."""
        return self.dp is not None and not self.dp.distributed

    def budget_exhausted(self) -> bool:
        """True when one more round would spend more than the target epsilon (of the
        configured threat model)."""
        acc = self.budget_accountant
        if self.dp is None or self.dp.target_epsilon is None or acc is None:
            return False
        return acc.would_exceed(self.dp.target_epsilon, self.dp.delta)

    def finalize(self, acc: Accumulator, round_: int, participants: Any) -> Accumulator:
        """Noise (central DP), threshold the per-row counts, fix the denominator, account."""
        self.participation[torch.as_tensor(participants, dtype=torch.long)] += 1
        if self.dp is None:
            return acc
        dp = self.dp
        clip = self.clip
        assert clip is not None and self.accountant is not None
        if dp.distributed:
            try:
                check_survivors(acc.clients, self.min_survivors())
            except TooFewSurvivorsError as err:
                # Secure aggregation stops such a round before unmasking; reaching here means
                # the server already holds the sum, so the round is accounted, never applied.
                self.accountant.step(1)
                raise RoundAbortedError(
                    f"{err}; the server already held this sum, so the round is accounted",
                    released=True,
                ) from err
        else:
            gen = torch.Generator().manual_seed(int(rng.hash64(self.seed, round_, DP_NOISE)))
            std = self.update_noise_multiplier * clip
            # A parameter of weight w was clipped as w times its update: noise std on the
            # weighted sum, then divided by w (the same as the vector path's split).
            for name in sorted(acc.item_sum):
                noise = torch.randn(acc.item_sum[name].shape, generator=gen)
                acc.item_sum[name] = self._weighed_noise(name, acc.item_sum[name], noise, std)
            if dp.count_scale is not None:
                acc.item_weight += (std / dp.count_scale) * torch.randn(
                    acc.item_weight.shape, generator=gen
                )
            for name in sorted(acc.dense_sum):
                noise = torch.randn(acc.dense_sum[name].shape, generator=gen)
                acc.dense_sum[name] = self._weighed_noise(name, acc.dense_sum[name], noise, std)
            if self.adaptive is not None:
                acc.below_centred += self.adaptive.count_noise_std * float(
                    torch.randn((), generator=gen, dtype=torch.float64)
                )
        acc.item_weight = torch.where(
            acc.item_weight >= dp.min_count, acc.item_weight, torch.zeros_like(acc.item_weight)
        )
        acc.weight_total = torch.tensor(self.sampling.expected_clients, dtype=torch.float64)
        if self.adaptive is not None:
            self.adaptive.update_from_noisy_count(acc.below_centred)
        self.accountant.step(1)
        return acc

    def _weighed_noise(self, name: str, total: Tensor, noise: Tensor, std: float) -> Tensor:
        """``total`` plus central noise for a parameter of clip weight w: std / w (w = 0: the
        parameter is not aggregated at all)."""
        assert self.dp is not None
        w = float(self.dp.weights.get(name, 1.0))
        if w == 0.0:
            return torch.zeros_like(total)
        return total + (std / w) * noise

    # ------------------------------------------------------------------ reporting
    def report(self) -> dict[str, Any]:
        """What a round record and the run summary say about privacy so far."""
        out: dict[str, Any] = {}
        budget = self.budget_accountant
        if self.dp is not None and self.accountant is not None and budget is not None:
            delta = self.dp.delta
            # Top level: the configured threat model's figure (what the budget spends).
            out.update(budget.describe(delta))
            out["threat_model"] = "server" if self.adversary_is_server else "released-model"
            released = self.accountant.describe(delta)
            out["epsilon_released_model"] = released["epsilon"]
            out["accounting"] = {"released_model": released}
            if self.adversary_is_server and self.accountant.sampling_rate < 1.0:
                out["epsilon_vs_server"] = out["epsilon"]
                out["accounting"]["vs_server"] = budget.describe(delta)
            out["mechanism"] = "dp-distributed" if self.dp.distributed else "dp-central"
            out["clip"] = self.clip
            out["update_noise_multiplier"] = self.update_noise_multiplier
            if self.dp.target_epsilon is not None:
                out["target_epsilon"] = self.dp.target_epsilon
        if self.ldp is not None:
            most = int(self.participation.max()) if len(self.participation) else 0
            out.update(
                {
                    "mechanism": "ldp",
                    "ldp_mechanism": self.ldp.mechanism,
                    "epsilon_per_round": self.ldp.epsilon_per_round,
                    "delta_per_round": self.ldp.delta_per_round,
                    "max_client_rounds": most,
                    # privacy.ldp.delta (0 for Laplace: its pure bound composes exactly).
                    "delta": self.ldp.delta_per_round,
                }
            )
            out["epsilon"] = self.ldp.composed_epsilon(most, out["delta"]) if most else 0.0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "accountant": None if self.accountant is None else self.accountant.to_dict(),
            "adaptive": None if self.adaptive is None else self.adaptive.to_dict(),
            "participation": self.participation.clone(),
            "noise_multiplier": self.noise_multiplier,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["accountant"] is not None:
            self.accountant = PrivacyAccountant.from_dict(state["accountant"])
        if state["adaptive"] is not None:
            self.adaptive = AdaptiveClip.from_dict(state["adaptive"])
        self.participation = state["participation"].clone()
        self.noise_multiplier = float(state["noise_multiplier"])
