"""Issue 18's reproduction on ML-100K: the shipped SecAgg+ distributed-DP configuration with
Poisson rate 0.05, dropout 0.3 and allowance 0.3 (m = floor(943 * 0.05 * 0.7) = 33). Its third
round keeps 30 clients: that sum must never be unmasked, nor accounted, nor applied."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch

from fedrec.config import RunConfig
from fedrec.experiment.pipeline import prepare
from fedrec.federated.server import run_round
from fedrec.privacy.secagg import SecAggServer
from fedrec.simulation.training import build_simulation

pytestmark = pytest.mark.realdata

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "ml-100k-fedmf-secagg-dp.toml"


def test_ml100k_round_with_30_of_33_survivors_is_never_unmasked(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tomllib.loads(CONFIG.read_text())
    raw["data"]["dir"] = str(data_dir)
    raw["federated"].update(sampling="poisson", rate=0.05, dropout=0.3, rounds=3)
    raw["privacy"]["dp"]["dropout_allowance"] = 0.3
    cfg = RunConfig.model_validate(raw)
    sim = build_simulation(cfg, prepare(cfg).split)
    assert sim.privacy is not None and sim.privacy.accountant is not None
    assert sim.privacy.min_survivors() == 33
    unmasked: list[int] = []
    real = SecAggServer.aggregate

    def spy(server: SecAggServer) -> Any:
        out = real(server)
        unmasked.append(len(out.included))
        return out

    monkeypatch.setattr(SecAggServer, "aggregate", spy)
    state, reports = sim.state, []
    for _ in range(3):
        before = {k: v.clone() for k, v in state.shared.items()}
        steps = sim.privacy.accountant.steps
        state, rep = run_round(
            state,
            strategy=sim.strategy,
            selection=sim.selection,
            runner=sim.engine,
            n_clients=sim.partition.n_clients,
            per_row_items=False,
            finalizer=sim.privacy,
        )
        reports.append(rep.as_dict())
    # Rounds 1-2 keep 36 and 37 clients; round 3 keeps 30 (seed 0, as in the issue).
    assert [r["participants"] for r in reports] == [36, 37, 30]
    assert unmasked == [36, 37]  # round 3's sum was never unmasked
    assert "before unmasking" in reports[2]["aborted"]
    assert sim.privacy.accountant.steps == steps == 2
    for k in before:
        assert torch.equal(state.shared[k], before[k]), k
