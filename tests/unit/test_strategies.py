"""Server optimisers: each formula against hand-computed values (Reddi et al. 2021, Algorithm 2,
with this code's conventions: v starts at tau^2 and the step divides by sqrt(v) + tau), the one
name registry the configuration reads, and a toy optimiser added from a test alone."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from pydantic import ValidationError

from fedrec.config import FederatedConfig, RunConfig
from fedrec.federated.configure import strategy_of
from fedrec.federated.strategies import (
    STRATEGIES,
    FedYogi,
    Params,
    State,
    StrategySettings,
    make_strategy,
    register,
)
from fedrec.simulation.training import train_federated
from tests.synthetic import two_taste_split

# Easy numbers for the hand computation; the code's defaults are tested elsewhere.
SETTINGS = StrategySettings(server_lr=0.5, momentum=0.5, beta1=0.5, beta2=0.75, tau=0.5)
THETA0 = [1.0, -1.0]
DELTAS = ([2.0, -1.0], [1.0, 3.0])


def _two_steps(name: str) -> list[tuple[list[float], dict[str, list[float]]]]:
    """Parameters and state after each of the two steps (float64, so values compare tightly)."""
    strat = make_strategy(name, SETTINGS)
    shared = {"w": torch.tensor(THETA0, dtype=torch.float64)}
    state = strat.init_state(shared)
    out = []
    for d in DELTAS:
        shared, state = strat.apply(shared, {"w": torch.tensor(d, dtype=torch.float64)}, state)
        out.append((shared["w"].tolist(), {k: v.tolist() for k, v in state.items()}))
    return out


def _close(got: list[float], want: list[float]) -> None:
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_fedavg_by_hand() -> None:
    # theta <- theta + 0.5 delta: [1, -1] + [1, -0.5], then + [0.5, 1.5]
    (t1, s1), (t2, s2) = _two_steps("fedavg")
    _close(t1, [2.0, -1.5])
    _close(t2, [2.5, 0.0])
    assert s1 == s2 == {}


def test_fedavgm_by_hand() -> None:
    # m1 = 0.5*0 + [2, -1] = [2, -1];            theta1 = [1, -1] + 0.5*[2, -1] = [2, -1.5]
    # m2 = 0.5*[2, -1] + [1, 3] = [2, 2.5];      theta2 = [2, -1.5] + 0.5*[2, 2.5] = [3, -0.25]
    (t1, s1), (t2, s2) = _two_steps("fedavgm")
    _close(s1["m/w"], [2.0, -1.0])
    _close(t1, [2.0, -1.5])
    _close(s2["m/w"], [2.0, 2.5])
    _close(t2, [3.0, -0.25])
    assert set(s2) == {"m/w"}


# The first moment is the same for the three adaptive rules (beta1 = 0.5):
# m1 = 0.5*0 + 0.5*[2, -1] = [1, -0.5];  m2 = 0.5*[1, -0.5] + 0.5*[1, 3] = [1, 1.25]
M1, M2 = [1.0, -0.5], [1.0, 1.25]


def _check_adaptive(name: str, v1: list[float], v2: list[float]) -> None:
    """theta_t = theta_{t-1} + 0.5 * m_t / (sqrt(v_t) + 0.5), written out per element."""
    (t1, s1), (t2, s2) = _two_steps(name)
    _close(s1["m/w"], M1)
    _close(s2["m/w"], M2)
    _close(s1["v/w"], v1)
    _close(s2["v/w"], v2)
    want1 = [
        1.0 + 0.5 * 1.0 / (math.sqrt(v1[0]) + 0.5),
        -1.0 + 0.5 * -0.5 / (math.sqrt(v1[1]) + 0.5),
    ]
    want2 = [
        want1[0] + 0.5 * 1.0 / (math.sqrt(v2[0]) + 0.5),
        want1[1] + 0.5 * 1.25 / (math.sqrt(v2[1]) + 0.5),
    ]
    _close(t1, want1)
    _close(t2, want2)
    assert set(s2) == {"m/w", "v/w"}


def test_adaptive_state_starts_at_tau_squared() -> None:
    for name in ("fedadam", "fedyogi", "fedadagrad"):
        state = make_strategy(name, SETTINGS).init_state({"w": torch.zeros(2)})
        assert state["m/w"].tolist() == [0.0, 0.0]
        assert state["v/w"].tolist() == [0.25, 0.25]


def test_fedadam_by_hand() -> None:
    # v1 = 0.75*0.25 + 0.25*[4, 1] = [1.1875, 0.4375]
    # v2 = 0.75*[1.1875, 0.4375] + 0.25*[1, 9] = [1.140625, 2.578125]
    _check_adaptive("fedadam", [1.1875, 0.4375], [1.140625, 2.578125])


def test_fedyogi_by_hand() -> None:
    # v1 = 0.25 - 0.25*[4, 1]*sign(0.25 - [4, 1]) = 0.25 + [1, 0.25] = [1.25, 0.5]
    # v2 = [1.25, 0.5] - 0.25*[1, 9]*sign([1.25 - 1, 0.5 - 9]) = [1.25 - 0.25, 0.5 + 2.25]
    _check_adaptive("fedyogi", [1.25, 0.5], [1.0, 2.75])
    # The second step of element 0 is therefore 0.5 * 1 / (1 + 0.5) = 1/3 exactly.
    (t1, _), (t2, _) = _two_steps("fedyogi")
    assert t2[0] - t1[0] == pytest.approx(1 / 3, rel=1e-12)


def test_fedadagrad_by_hand() -> None:
    # v1 = 0.25 + [4, 1] = [4.25, 1.25];  v2 = [4.25 + 1, 1.25 + 9] = [5.25, 10.25]
    _check_adaptive("fedadagrad", [4.25, 1.25], [5.25, 10.25])


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_strategies_move_along_the_update(name: str) -> None:
    shared = {"w": torch.zeros(3)}
    strat = make_strategy(name, StrategySettings(server_lr=0.1))
    state = strat.init_state(shared)
    delta = {"w": torch.tensor([1.0, -2.0, 0.0])}
    new, state = strat.apply(shared, delta, state)
    assert new["w"][0] > 0 and new["w"][1] < 0 and new["w"][2] == 0
    if name == "fedadam":  # m = 0.1 d, v = 0.99 tau^2 + 0.01 d^2
        m = 0.1 * 1.0
        v = 0.99 * 1e-6 + 0.01
        assert new["w"][0].item() == pytest.approx(0.1 * m / (v**0.5 + 1e-3), rel=1e-5)


def test_apply_leaves_its_inputs_alone() -> None:
    for name in STRATEGIES:
        strat = make_strategy(name, SETTINGS)
        shared = {"w": torch.tensor([1.0, 2.0])}
        state = strat.init_state(shared)
        before = {k: v.clone() for k, v in state.items()}
        strat.apply(shared, {"w": torch.tensor([0.5, -0.5])}, state)
        assert shared["w"].tolist() == [1.0, 2.0]
        assert all(torch.equal(state[k], before[k]) for k in before)


def _run_cfg(strategy: str, **fed: Any) -> dict[str, Any]:
    return {
        "mode": "federated",
        "seed": 3,
        "model": {"name": "mf", "dim": 8, "init_std": 0.1},
        "eval": {"ks": [5]},
        "train": {"monitor": "HR@5"},
        "federated": {
            "rounds": 2,
            "eval_every": 1,
            "patience": 0,
            "strategy": strategy,
            "local": {"epochs": 1, "batch_size": 8, "lr": 0.5, "negatives": 2},
            **fed,
        },
    }


def test_the_configuration_accepts_exactly_the_registered_names() -> None:
    assert set(STRATEGIES) == {"fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad"}
    for name in STRATEGIES:
        assert RunConfig.model_validate(_run_cfg(name)).federated.strategy == name
    with pytest.raises(ValidationError, match=r"federated\.strategy[\s\S]*unknown strategy"):
        RunConfig.model_validate(_run_cfg("fedsgd"))
    with pytest.raises(ValueError, match="already registered"):
        register("fedavg")(type("Again", (), {}))


def test_every_optimiser_setting_is_a_federated_option() -> None:
    cfg = RunConfig.model_validate(_run_cfg("fedyogi", server_lr=0.3, beta2=0.9, tau=0.01))
    strat = strategy_of(cfg)
    assert isinstance(strat, FedYogi)
    assert (strat.server_lr, strat.beta1, strat.beta2, strat.tau) == (0.3, 0.9, 0.9, 0.01)
    fields = {f.name for f in dataclasses.fields(StrategySettings)}
    assert fields <= set(FederatedConfig.model_fields)


# ------------------------------------------------------------------ a toy optimiser, in one file


@dataclass(frozen=True)
class _SignStep:
    """Server signSGD: theta <- theta + lr * sign(delta); it takes only the settings it names."""

    name: ClassVar[str]
    calls: ClassVar[list[tuple[Params, Params]]] = []
    server_lr: float = 1.0

    def init_state(self, shared: Params) -> State:
        return {}

    def apply(self, shared: Params, delta: Params, state: State) -> tuple[Params, State]:
        new = {k: p + self.server_lr * delta[k].sign() for k, p in shared.items()}
        _SignStep.calls.append(({k: v.clone() for k, v in shared.items()}, new))
        return new, dict(state)


@pytest.fixture
def toy() -> Iterator[str]:
    register("toy-sign")(_SignStep)
    _SignStep.calls.clear()
    try:
        yield "toy-sign"
    finally:
        del STRATEGIES["toy-sign"]


def test_a_registered_toy_optimiser_runs_a_simulated_round(toy: str) -> None:
    cfg = RunConfig.model_validate(_run_cfg(toy, server_lr=0.25))
    result = train_federated(cfg, two_taste_split())
    assert len(_SignStep.calls) == 2  # one server step per round
    before, after = _SignStep.calls[0]
    steps = torch.cat([(after[k] - before[k]).flatten() for k in before])
    # Every coordinate moved by exactly the server step or not at all (rows nobody trained).
    moved = (steps.abs() - 0.25).abs() < 1e-6
    assert bool((moved | (steps == 0)).all()) and bool(moved.any())
    final = dict(result.model.named_parameters())  # the model of the best validation round
    for k, v in _SignStep.calls[result.best_round - 1][1].items():
        assert torch.equal(final[k].detach(), v), k


def test_a_registered_toy_optimiser_runs_in_the_in_process_deployment(
    toy: str, tmp_path: Path
) -> None:
    from fedrec.deploy.client import Device
    from fedrec.deploy.inprocess import InProcessTransport
    from fedrec.deploy.server import serve
    from fedrec.deploy.shards import write_shards
    from fedrec.experiment.outputs import RunDirectory

    split = two_taste_split(40, 30, per_user=7, string_ids=True)
    raw = _run_cfg(toy, server_lr=0.25, partition="random", silos=5, checkpoint_every=1)
    raw["deploy"] = {"client_randomness": "run-seed", "wait_clients_s": 5}
    cfg = RunConfig.model_validate(raw)
    paths = write_shards(cfg, split, tmp_path / "shards")
    devices = {i: Device(p, tmp_path / "state" / p.name) for i, p in enumerate(paths)}
    serve(cfg, InProcessTransport(devices), RunDirectory(tmp_path / "out"))
    deployed = _SignStep.calls[:]
    assert len(deployed) == 2
    _SignStep.calls.clear()
    train_federated(cfg, split)
    assert len(_SignStep.calls) == 2
    for (_, dep), (_, sim) in zip(deployed, _SignStep.calls, strict=True):
        for k in sim:
            torch.testing.assert_close(dep[k], sim[k], rtol=0, atol=1e-6)
