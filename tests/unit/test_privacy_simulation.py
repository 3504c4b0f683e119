"""Privacy mechanisms wired into simulated rounds: what they change, and what they must not."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedrec.config import RunConfig
from fedrec.federated.server import run_round
from fedrec.privacy.accounting import PrivacyAccountant
from fedrec.privacy.ldp import LocalDP
from fedrec.privacy.upload import ClientProtection, UploadVector
from fedrec.simulation.protected import AggregateObservation, Chunk, Observation, SparseSink
from fedrec.simulation.training import Simulation, build_simulation, train_federated
from tests.synthetic import mf_run_config
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
    return mf_run_config(base, privacy)


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


# ----------------------------------------------------------------- the adversary's epsilon
def _distributed(**dp: Any) -> dict[str, Any]:
    base = {"enabled": True, "mode": "distributed", "clip": 1.0, "dropout_allowance": 0.9}
    return {"secagg": {"enabled": True}, "dp": {**base, **dp}}


def test_distributed_dp_states_epsilon_against_the_server_and_the_released_model() -> None:
    privacy = _distributed(noise_multiplier=2.0, accountant="pld")
    res = train_federated(_cfg(privacy, rounds=3, sampling="poisson", rate=0.5), SPLIT)
    p = res.privacy
    assert p is not None and p["threat_model"] == "server" and p["rounds"] == 3
    # against the server that picked them: 3 plain Gaussian rounds at z = 2, i.e. sqrt(3)/2-GDP
    from tests.unit.test_accounting import _gdp_epsilon

    assert p["epsilon_vs_server"] == pytest.approx(_gdp_epsilon(3**0.5 / 2.0, 1e-5), rel=1e-5)
    assert p["epsilon"] == p["epsilon_vs_server"]
    released = PrivacyAccountant(2.0, 0.5, accountant="pld")
    released.step(3)
    assert p["epsilon_released_model"] == pytest.approx(released.epsilon(1e-5), rel=1e-12)
    assert p["epsilon_released_model"] < p["epsilon_vs_server"]
    # each figure comes with what recomputes it
    server, model = p["accounting"]["vs_server"], p["accounting"]["released_model"]
    assert (server["amplification"], model["amplification"]) == (False, True)
    for d in (server, model):
        assert (d["noise_multiplier"], d["sampling_rate"], d["rounds"]) == (2.0, 0.5, 3)
        assert (d["delta"], d["accountant"]) == (1e-5, "pld")
    assert res.history[-1]["epsilon_vs_server"] == p["epsilon_vs_server"]


def test_one_epsilon_when_the_server_is_trusted_or_samples_everyone() -> None:
    central = {"dp": {"enabled": True, "noise_multiplier": 2.0, "clip": 1.0}}
    p = train_federated(_cfg(central, rounds=2, sampling="poisson", rate=0.5), SPLIT).privacy
    assert p is not None and "epsilon_vs_server" not in p and p["threat_model"] == "released-model"
    assert p["epsilon"] == p["epsilon_released_model"] and p["amplification"] is True
    everyone = train_federated(_cfg(_distributed(noise_multiplier=2.0), rounds=2), SPLIT).privacy
    assert everyone is not None and "epsilon_vs_server" not in everyone
    assert everyone["epsilon"] == pytest.approx(everyone["epsilon_released_model"], rel=1e-12)


def test_distributed_budget_stops_on_the_epsilon_against_the_server() -> None:
    """z = 1, q = 0.5, budget 10: amplified, 7 rounds fit; against the server, who knows who
    took part, 3 (epsilon 4.73, 7.08, 9.01, then 10.7 at delta 1e-5)."""
    privacy = _distributed(noise_multiplier=1.0, target_epsilon=10.0)
    res = train_federated(_cfg(privacy, rounds=40, sampling="poisson", rate=0.5), SPLIT)
    assert res.rounds_run == 3 and "against the server" in res.stop_reason
    assert res.privacy is not None and res.privacy["epsilon"] == pytest.approx(9.00996, abs=1e-4)


def test_distributed_calibration_spends_the_target_against_the_server() -> None:
    privacy = _distributed(target_epsilon=8.0)
    res = train_federated(_cfg(privacy, rounds=4, sampling="poisson", rate=0.3), SPLIT)
    assert res.privacy is not None and res.rounds_run == 4
    assert 7.0 < res.privacy["epsilon_vs_server"] <= 8.0


# ----------------------------------------------------------------- empty rounds
def _empty_round(privacy: dict[str, Any]) -> tuple[Simulation, dict[str, Any], bool]:
    """One round in which Poisson sampling (rate 1e-4 of 30 clients) picks nobody."""
    sim = build_simulation(_cfg(privacy, sampling="poisson", rate=1e-4), SPLIT)
    before = {k: v.clone() for k, v in sim.state.shared.items()}
    shared, reports = _rounds(sim, 1)
    assert reports[0]["selected"] == 0
    return sim, reports[0], all(torch.equal(shared[k], before[k]) for k in before)


def test_an_empty_round_under_central_dp_releases_noise_and_is_accounted() -> None:
    dp = {"enabled": True, "noise_multiplier": 1.0, "clip": 1.0, "min_count": 1e-3}
    sim, report, unchanged = _empty_round({"dp": dp})
    assert sim.privacy is not None and sim.privacy.accountant is not None
    assert sim.privacy.accountant.steps == 1 and sim.privacy.report()["epsilon"] > 0
    assert not unchanged and "aborted" not in report


def test_an_empty_round_under_distributed_dp_releases_and_accounts_nothing() -> None:
    sim, _, unchanged = _empty_round(_distributed(noise_multiplier=1.0))
    assert sim.privacy is not None and sim.privacy.accountant is not None
    assert sim.privacy.accountant.steps == 0 and unchanged


# ----------------------------------------------------------------- local DP
def test_local_dp_composes_at_the_configured_delta() -> None:
    privacy = {"ldp": {"enabled": True, "epsilon": 4.0, "clip": 0.5, "delta": 1e-3}}
    res = train_federated(_cfg(privacy, rounds=2), SPLIT)
    assert res.privacy is not None and res.privacy["delta"] == 1e-3
    expected = LocalDP("gaussian", 4.0, 1e-3, 0.5).composed_epsilon(2, 1e-3)
    assert res.privacy["epsilon"] == pytest.approx(expected, rel=1e-12)
    assert expected < LocalDP("gaussian", 4.0, 1e-3, 0.5).composed_epsilon(2, 1e-5)


# ----------------------------------------------------------------- encoding and the clip
_SIM = build_simulation(_cfg({"dp": {"enabled": True, "noise_multiplier": 0.0}}), SPLIT)


@settings(max_examples=60, deadline=None)
@given(
    rows=arrays(np.float32, (5, 5), elements=st.floats(-8, 8, width=32)),
    bias=st.floats(-8, 8, width=32),
    clip=st.floats(0.01, 4.0),
    encoding=st.sampled_from(["int8", "float16"]),
    count_scale=st.sampled_from([None, 0.1]),
)
def test_central_dp_clips_what_is_sent_after_encoding(
    rows: np.ndarray, bias: float, clip: float, encoding: str, count_scale: float | None
) -> None:
    """A row clipped before rounding can come back above C; the bound holds on the encoded
    upload the server sums (up to float32 rounding of the scale)."""
    sim = _SIM
    shared, layout = sim.state.shared, sim.layout
    vector = UploadVector.of(layout, shared, SPLIT.train.n_items, count_scale)
    sink = SparseSink(
        layout,
        shared,
        SPLIT.train.n_items,
        np.array([0]),
        encoding=encoding,
        uniform=True,
        protection=ClientProtection(clip=clip),
        vector=vector,
    )
    t = torch.from_numpy(rows)
    sink.add(
        Chunk(
            clients=np.array([0]),
            item_ids=torch.tensor([1, 3, 4, 7, 9]),
            item_offsets=np.array([0, 5]),
            item_deltas={"item_emb.weight": t[:, :4].contiguous(), "item_bias.weight": t[:, 4:]},
            dense_deltas={"global_bias": torch.tensor([bias])},
            num_examples=np.array([5]),
            losses=torch.tensor([0.5]),
        )
    )
    acc, _ = sink.finish()
    sq = sum(float(v.double().pow(2).sum()) for v in acc.item_sum.values())
    sq += sum(float(v.double().pow(2).sum()) for v in acc.dense_sum.values())
    if count_scale is not None:
        sq += count_scale**2 * float(acc.item_weight.double().pow(2).sum())
    assert math.sqrt(sq) <= clip * (1 + 1e-6)
