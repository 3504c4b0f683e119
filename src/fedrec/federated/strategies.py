"""Server optimisers: FedAvg, FedAvgM, and the adaptive FedAdam / FedYogi / FedAdagrad.

Each treats the aggregated client update Δ as a pseudo-gradient step (Reddi et al., ICLR 2021,
"Adaptive Federated Optimization", Algorithm 2). State is a dict of tensors so it checkpoints
with the rest of the server state.

One class per optimiser behind the :class:`Strategy` protocol, and ONE name registry,
:data:`STRATEGIES`: the run configuration accepts exactly its names, so a new optimiser is a
class plus :func:`register`. This module imports no torch at run time (tensor methods only),
so the configuration can validate names without loading torch.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

if TYPE_CHECKING:
    from torch import Tensor

Params = dict[str, "Tensor"]
State = dict[str, "Tensor"]


class Strategy(Protocol):
    """A server optimiser: the next shared parameters from the round's mean update."""

    name: ClassVar[str]

    def init_state(self, shared: Params) -> State:
        """The optimiser state before the first round (checkpointed as plain tensors)."""
        ...

    def apply(self, shared: Params, delta: Params, state: State) -> tuple[Params, State]:
        """New shared parameters and state; the inputs are not modified."""
        ...


@dataclass(frozen=True)
class StrategySettings:
    """Every optimiser hyper-parameter a run can set; each optimiser takes the ones it names.
    Each field is read from the ``federated`` section of the same name."""

    server_lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    """Adaptivity floor of the adaptive rules (Reddi et al. use 1e-3 and smaller)."""


STRATEGIES: dict[str, type[Strategy]] = {}
"""Name -> optimiser class; the configuration's ``federated.strategy`` must be one of these."""

_S = TypeVar("_S", bound=type[Any])


def register(name: str) -> Callable[[_S], _S]:
    """Class decorator adding an optimiser to :data:`STRATEGIES` under ``name``."""

    def add(cls: _S) -> _S:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered")
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return add


def strategy_names() -> tuple[str, ...]:
    return tuple(STRATEGIES)


def make_strategy(name: str, settings: StrategySettings | None = None) -> Strategy:
    """The optimiser ``name``, given the settings its constructor names."""
    cls = STRATEGIES.get(name)
    if cls is None:
        raise ValueError(f"unknown strategy {name!r}; choose one of {strategy_names()}")
    given = dataclasses.asdict(settings or StrategySettings())
    wanted = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in given.items() if k in wanted})


@register("fedavg")
@dataclass(frozen=True)
class FedAvg:
    """θ ← θ + η Δ (η = 1 adopts the clients' mean model)."""

    name: ClassVar[str]
    server_lr: float = 1.0

    def init_state(self, shared: Params) -> State:
        return {}

    def apply(self, shared: Params, delta: Params, state: State) -> tuple[Params, State]:
        return {k: p + self.server_lr * delta[k] for k, p in shared.items()}, dict(state)


@register("fedavgm")
@dataclass(frozen=True)
class FedAvgM:
    """Server momentum (Hsu et al., 2019): m ← μ m + Δ, θ ← θ + η m."""

    name: ClassVar[str]
    server_lr: float = 1.0
    momentum: float = 0.9

    def init_state(self, shared: Params) -> State:
        return {f"m/{k}": v.new_zeros(v.shape) for k, v in shared.items()}

    def apply(self, shared: Params, delta: Params, state: State) -> tuple[Params, State]:
        new: Params = {}
        st = dict(state)
        for k, p in shared.items():
            m = self.momentum * state[f"m/{k}"] + delta[k]
            st[f"m/{k}"] = m
            new[k] = p + self.server_lr * m
        return new, st


@dataclass(frozen=True)
class _Adaptive:
    """Reddi et al.'s Algorithm 2: m ← β1 m + (1-β1) Δ, v from the subclass's rule,
    θ ← θ + η m / (√v + τ), with v starting at τ²."""

    server_lr: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def second_moment(self, v0: Tensor, d2: Tensor) -> Tensor:
        raise NotImplementedError

    def init_state(self, shared: Params) -> State:
        state = {f"m/{k}": v.new_zeros(v.shape) for k, v in shared.items()}
        init = self.tau**2
        state.update({f"v/{k}": v.new_full(v.shape, init) for k, v in shared.items()})
        return state

    def apply(self, shared: Params, delta: Params, state: State) -> tuple[Params, State]:
        new: Params = {}
        st = dict(state)
        for k, p in shared.items():
            d = delta[k]
            m = self.beta1 * state[f"m/{k}"] + (1 - self.beta1) * d
            v = self.second_moment(state[f"v/{k}"], d * d)
            st[f"m/{k}"], st[f"v/{k}"] = m, v
            new[k] = p + self.server_lr * m / (v.sqrt() + self.tau)
        return new, st


@register("fedadam")
@dataclass(frozen=True)
class FedAdam(_Adaptive):
    """v ← β2 v + (1-β2) Δ²."""

    name: ClassVar[str]

    def second_moment(self, v0: Tensor, d2: Tensor) -> Tensor:
        return self.beta2 * v0 + (1 - self.beta2) * d2


@register("fedyogi")
@dataclass(frozen=True)
class FedYogi(_Adaptive):
    """v ← v - (1-β2) Δ² sign(v - Δ²)."""

    name: ClassVar[str]

    def second_moment(self, v0: Tensor, d2: Tensor) -> Tensor:
        return v0 - (1 - self.beta2) * d2 * (v0 - d2).sign()


@register("fedadagrad")
@dataclass(frozen=True)
class FedAdagrad(_Adaptive):
    """v ← v + Δ² (β2 is unused)."""

    name: ClassVar[str]

    def second_moment(self, v0: Tensor, d2: Tensor) -> Tensor:
        return v0 + d2
