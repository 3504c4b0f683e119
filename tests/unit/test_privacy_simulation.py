"""Privacy mechanisms wired into simulated rounds: what they change, and what they must not."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from fedrec.config import RunConfig
from fedrec.federated.server import run_round
from fedrec.simulation.protected import AggregateObservation, Observation
from fedrec.simulation.training import Simulation, build_simulation, train_federated
from tests.synthetic import two_taste_split as _split


def _cfg(privacy: dict[str, Any], **fed: Any) -> RunConfig:
    base: dict[str, Any] = {
        "rounds": 3,
        "eval_every": 3,
        "patience": 0,
        "checkpoint_every": 0,
        "weighting": "uniform",
        "local": {"epochs": 1, "batch_size": 8, "lr": 0.3, "negatives": 2},
    }
    base.update(fed)
    return RunConfig.model_validate(
        {
            "mode": "federated",
            "seed": 1,
            "model": {"name": "mf", "dim": 4, "init_std": 0.1},
            "eval": {"ks": [5]},
            "train": {"monitor": "HR@5"},
            "federated": base,
            "privacy": privacy,
        }
    )


def _rounds(
    sim: Simulation, n: int, per_row: bool = True
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    state, reports = sim.state, []
    for _ in range(n):
        state, rep = run_round(
            state,
            strategy=sim.strategy,
            selection=sim.selection,
            runner=sim.engine,
            n_clients=sim.partition.n_clients,
            per_row_items=per_row,
            finalizer=sim.privacy,
        )
        reports.append(rep.as_dict())
    return state.shared, reports


SPLIT = _split(n_users=30, n_items=24)


def test_secure_aggregation_gives_the_plain_uniform_model_up_to_quantisation() -> None:
    plain, _ = _rounds(build_simulation(_cfg({}), SPLIT), 2)
    sec, reports = _rounds(build_simulation(_cfg({"secagg": {"enabled": True}}), SPLIT), 2)
    for k in plain:
        torch.testing.assert_close(sec[k], plain[k], rtol=0, atol=1e-4)
        assert not torch.equal(sec[k], plain[k]) or k == "global_bias"  # really went through it
    # dense uploads: every client sends the same (large) amount, whatever it touched
    assert reports[0]["bytes_up_per_client"] > 24 * 5 * 4


def test_public_denominator_uploads_carry_no_counts_and_give_the_plain_model() -> None:
    fed = {"item_aggregation": "fedavg"}
    plain, _ = _rounds(build_simulation(_cfg({}, **fed), SPLIT), 2, per_row=False)
    sim = build_simulation(_cfg({"secagg": {"enabled": True}}, **fed), SPLIT)
    sec, reports = _rounds(sim, 2, per_row=False)
    for k in plain:
        torch.testing.assert_close(sec[k], plain[k], rtol=0, atol=1e-4)
    with_counts = build_simulation(_cfg({"secagg": {"enabled": True}}), SPLIT)
    _, counted = _rounds(with_counts, 1)
    # 24 count entries fewer per upload, at 4 bytes each in the 32-bit ring
    assert counted[0]["bytes_up_per_client"] - reports[0]["bytes_up_per_client"] == 24 * 4


def test_secagg_with_distributed_dp_is_the_same_in_both_engines() -> None:
    privacy = {
        "secagg": {"enabled": True},
        "dp": {"enabled": True, "mode": "distributed", "noise_multiplier": 0.5, "clip": 0.5},
    }
    a, _ = _rounds(build_simulation(_cfg(privacy), SPLIT, engine="batched"), 2)
    b, _ = _rounds(build_simulation(_cfg(privacy), SPLIT, engine="sequential"), 2)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)


def test_too_many_late_dropouts_abort_the_round_and_keep_the_model() -> None:
    cfg = _cfg({"secagg": {"enabled": True, "neighbours": 4, "threshold": 0.9}}, dropout=0.7)
    sim = build_simulation(cfg, SPLIT)
    before = {k: v.clone() for k, v in sim.state.shared.items()}
    shared, reports = _rounds(sim, 1)
    assert "aborted" in reports[0] and "secure aggregation" in reports[0]["aborted"]
    for k in before:
        assert torch.equal(shared[k], before[k])


def test_central_dp_accounts_every_round_and_stops_at_the_budget() -> None:
    privacy = {
        "dp": {"enabled": True, "noise_multiplier": 1.0, "target_epsilon": 10.0, "clip": 1.0}
    }
    res = train_federated(_cfg(privacy, rounds=40, sampling="poisson", rate=0.5), SPLIT)
    assert res.privacy is not None
    eps = [r["epsilon"] for r in res.history]
    assert all(b > a for a, b in itertools.pairwise(eps))
    assert 8.0 < eps[-1] <= 10.0  # spent close to the budget, never over
    assert res.rounds_run == 7 and "budget" in res.stop_reason
    for key in ("epsilon", "delta", "noise_multiplier", "sampling_rate", "sampling", "rounds"):
        assert key in res.privacy
    assert res.privacy["sampling"] == "poisson" and res.privacy["sampling_rate"] == 0.5


def test_calibrated_noise_spends_the_target_over_the_configured_rounds() -> None:
    privacy = {"dp": {"enabled": True, "target_epsilon": 8.0, "clip": 1.0}}
    res = train_federated(_cfg(privacy, rounds=4, sampling="poisson", rate=0.3), SPLIT)
    assert res.privacy is not None and res.rounds_run == 4
    assert 7.0 < res.privacy["epsilon"] <= 8.0


def test_noise_really_reaches_the_model() -> None:
    quiet = _cfg({"dp": {"enabled": True, "noise_multiplier": 0.0, "clip": 100.0}})
    loud = _cfg({"dp": {"enabled": True, "noise_multiplier": 5.0, "clip": 100.0}})
    a, _ = _rounds(build_simulation(quiet, SPLIT), 1)
    b, _ = _rounds(build_simulation(loud, SPLIT), 1)
    assert (a["item_emb.weight"] - b["item_emb.weight"]).abs().max() > 0.1


def test_distributed_noise_covers_the_configured_dropout_allowance() -> None:
    def share(allowance: float | None) -> float:
        dp = {"enabled": True, "mode": "distributed", "noise_multiplier": 1.0, "clip": 1.0}
        if allowance is not None:
            dp["dropout_allowance"] = allowance
        sim = build_simulation(_cfg({"secagg": {"enabled": True}, "dp": dp}), SPLIT)
        assert sim.privacy is not None
        return sim.privacy.client_protection().noise_std

    # default: 10% may drop, so each of the 30 clients adds noise for 27 (all 30 then carry
    # 30/27 of the central variance); with no allowance, for all 30
    assert share(None) == pytest.approx(1.0 / 27**0.5)
    assert share(0.0) == pytest.approx(1.0 / 30**0.5)
    assert share(0.5) == pytest.approx(1.0 / 15**0.5)


WEIGHTS = {"global_bias": 0.0, "item_bias.weight": 0.25}


@pytest.mark.parametrize("mode", ["central", "distributed"])
def test_clip_weights_share_the_bound_and_weight_zero_is_never_aggregated(mode: str) -> None:
    """Without noise, a tight clip on the weighted upload gives the same model whether the
    trusted server clips plain uploads or clients clip their secure-aggregation vectors; weight
    0 leaves the global bias at its initial value, and the weights really change the clip."""

    def run(weights: dict[str, float], m: str) -> dict[str, torch.Tensor]:
        dp = {"enabled": True, "mode": m, "noise_multiplier": 0.0, "clip": 0.05}
        dp["clip_weights"] = weights
        privacy: dict[str, Any] = {"dp": dp}
        if m == "distributed":
            privacy["secagg"] = {"enabled": True}
        sim = build_simulation(_cfg(privacy, item_aggregation="fedavg"), SPLIT)
        init = sim.state.shared["global_bias"].clone()
        shared, _ = _rounds(sim, 2, per_row=False)
        assert torch.equal(shared["global_bias"], init) == ("global_bias" in weights)
        return shared

    weighted = run(WEIGHTS, mode)
    plain = run({}, "central")
    reference = run(WEIGHTS, "central")
    for k in weighted:
        torch.testing.assert_close(weighted[k], reference[k], rtol=0, atol=1e-4)
    # the embeddings got a larger share of the clip than without weights
    assert not torch.allclose(weighted["item_emb.weight"], plain["item_emb.weight"], atol=1e-4)


def test_central_noise_is_divided_by_each_parameters_clip_weight() -> None:
    dp = {"enabled": True, "noise_multiplier": 1.0, "clip": 2.0}
    dp["clip_weights"] = {"global_bias": 0.0, "item_bias.weight": 4.0}
    sim = build_simulation(_cfg({"dp": dp}), _split(n_users=30, n_items=4000))
    assert sim.privacy is not None
    from fedrec.federated.aggregate import Accumulator

    acc = Accumulator.zeros(sim.layout, sim.state.shared, 4000)
    out = sim.privacy.finalize(acc, 0, [0])
    assert float(out.item_sum["item_emb.weight"].std()) == pytest.approx(2.0, rel=0.03)
    assert float(out.item_sum["item_bias.weight"].std()) == pytest.approx(0.5, rel=0.05)
    assert float(out.dense_sum["global_bias"]) == 0.0


def test_clip_weights_must_name_shared_parameters() -> None:
    dp = {"enabled": True, "noise_multiplier": 1.0, "clip_weights": {"user_emb.weight": 0.0}}
    with pytest.raises(ValueError, match=r"user_emb.weight.*does not share.*item_emb.weight"):
        build_simulation(_cfg({"dp": dp}), SPLIT)
    with pytest.raises(ValueError, match=r"clip_weights\['global_bias'\] = -1.0"):
        _cfg(
            {"dp": {"enabled": True, "noise_multiplier": 1.0, "clip_weights": {"global_bias": -1}}}
        )


def test_local_dp_reports_per_round_and_composed_epsilon() -> None:
    privacy = {"ldp": {"enabled": True, "epsilon": 4.0, "clip": 0.5}}
    res = train_federated(_cfg(privacy, rounds=2), SPLIT)
    assert res.privacy is not None
    assert res.privacy["epsilon_per_round"] == 4.0 and res.privacy["max_client_rounds"] == 2
    assert 4.0 < res.privacy["epsilon"] <= 8.0


class _Recorder:
    def __init__(self) -> None:
        self.clients: list[Observation] = []
        self.sums: list[AggregateObservation] = []

    def client(self, obs: Observation) -> None:
        self.clients.append(obs)

    def aggregate(self, obs: AggregateObservation) -> None:
        self.sums.append(obs)


@pytest.mark.parametrize(
    ("privacy", "sees"),
    [
        ({}, "rows"),
        ({"ldp": {"enabled": True, "epsilon": 4.0}}, "vector"),
        ({"secagg": {"enabled": True}}, "sum"),
    ],
)
def test_the_server_sees_exactly_what_the_mechanism_lets_through(
    privacy: dict[str, Any], sees: str
) -> None:
    rec = _Recorder()
    sim = build_simulation(_cfg(privacy), SPLIT, observer=rec)
    _rounds(sim, 1)
    if sees == "sum":
        assert not rec.clients and len(rec.sums) == 1
        assert len(rec.sums[0].clients) == sim.partition.n_clients
    else:
        assert len(rec.clients) == sim.partition.n_clients and not rec.sums
        first = rec.clients[0]
        assert (first.item_ids is not None) == (sees == "rows")
        assert (first.vector is not None) == (sees == "vector")


def test_homomorphic_encryption_gives_the_plain_uniform_model() -> None:
    plain, _ = _rounds(build_simulation(_cfg({}), SPLIT), 1)
    enc, reports = _rounds(build_simulation(_cfg({"he": {"enabled": True}}), SPLIT), 1)
    for k in plain:
        torch.testing.assert_close(enc[k], plain[k], rtol=0, atol=1e-4)
    assert reports[0]["bytes_up_per_client"] > 50_000  # ciphertexts, not floats


def test_privacy_needs_uniform_weighting_and_valid_combinations() -> None:
    with pytest.raises(ValueError, match="uniform"):
        _cfg({"secagg": {"enabled": True}}, weighting="examples")
    with pytest.raises(ValueError, match="not both"):
        _cfg({"secagg": {"enabled": True}, "he": {"enabled": True}})
    with pytest.raises(ValueError, match="distributed"):
        _cfg({"dp": {"enabled": True, "mode": "distributed", "noise_multiplier": 1.0}})
    with pytest.raises(ValueError, match="noise_multiplier"):
        _cfg({"dp": {"enabled": True}})
    with pytest.raises(ValueError, match=r"dropout_allowance = 0\.05 is below"):
        dp = {"enabled": True, "noise_multiplier": 1.0, "dropout_allowance": 0.05}
        _cfg({"dp": dp}, dropout=0.2)


def test_pseudo_items_join_the_upload_and_both_engines_agree() -> None:
    privacy = {"obfuscation": {"pseudo_items": 5}}
    rec = _Recorder()
    _rounds(build_simulation(_cfg({}), SPLIT, observer=rec), 1)
    plain = {o.client: set(o.item_ids.tolist()) for o in rec.clients if o.item_ids is not None}
    rec = _Recorder()
    a, _ = _rounds(build_simulation(_cfg(privacy), SPLIT, observer=rec), 1)
    obf = {o.client: set(o.item_ids.tolist()) for o in rec.clients if o.item_ids is not None}
    train = SPLIT.train
    looks_positive = []
    for o in rec.clients:
        assert o.item_ids is not None and o.rows is not None
        mine = set(train.items[train.users == o.client].tolist())
        assert mine <= obf[o.client]
        extra = sorted(obf[o.client] - plain[o.client])  # rows the plain upload did not have
        assert extra
        ids = o.item_ids.tolist()
        bias = o.rows["item_bias.weight"][:, 0]
        looks_positive += [float(bias[ids.index(i)]) > 0 for i in extra]
    assert sum(looks_positive) > 0.9 * len(looks_positive)  # virtual label 1: like positives
    b, _ = _rounds(build_simulation(_cfg(privacy), SPLIT, engine="sequential"), 1)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    drawn = {"obfuscation": {"pseudo_items": 5, "virtual_labels": "model"}}
    c, _ = _rounds(build_simulation(_cfg(drawn), SPLIT), 1)
    d, _ = _rounds(build_simulation(_cfg(drawn), SPLIT, engine="sequential"), 1)
    for k in c:
        torch.testing.assert_close(c[k], d[k], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(a["item_emb.weight"], c["item_emb.weight"])
    with pytest.raises(ValueError, match="pseudo_items"):
        RunConfig.model_validate(
            {
                "mode": "federated",
                "train": {"loss": "bpr"},
                "privacy": {"obfuscation": {"pseudo_items": 2}},
            }
        )
