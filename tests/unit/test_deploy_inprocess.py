"""The deployment's server and client logic without Flower: the same model as the simulator,
SecAgg+ over messages with a client lost mid-round, hostile uploads refused, replays refused,
client state on disk, server resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedrec.config import RunConfig
from fedrec.data.table import Split
from fedrec.deploy.client import ClientError, ClientState, Device, recommend_from_state
from fedrec.deploy.inprocess import InProcessTransport
from fedrec.deploy.node import handle
from fedrec.deploy.payload import Payload
from fedrec.deploy.server import serve
from fedrec.deploy.shards import ClientShard, write_shards
from fedrec.experiment.outputs import RunDirectory
from fedrec.federated.configure import secagg_config
from fedrec.simulation.training import train_federated
from tests.synthetic import two_taste_split


def _split() -> Split:
    return two_taste_split(40, 30, per_user=7, string_ids=True)


def _cfg(**over: Any) -> RunConfig:
    fed: dict[str, Any] = {
        "rounds": 3,
        "partition": "random",
        "silos": 5,
        "eval_every": 1,
        "patience": 0,
        "checkpoint_every": 1,
        "server_lr": 2.0,
        "local": {"epochs": 1, "batch_size": 8, "lr": 1.0, "negatives": 2},
    }
    privacy: dict[str, Any] = {}
    if over.pop("secagg", False):
        fed["weighting"] = "uniform"
        privacy = {"secagg": {"enabled": True, "clip": 4.0}}
    fed.update(over)
    return RunConfig.model_validate(
        {
            "mode": "federated",
            "seed": 3,
            "model": {"name": "mf", "dim": 8, "init_std": 0.1},
            "eval": {"ks": [5]},
            "train": {"monitor": "HR@5"},
            "federated": fed,
            "privacy": privacy,
            "deploy": {"client_randomness": "run-seed", "wait_clients_s": 5},
        }
    )


def _devices(cfg: RunConfig, split: Split, root: Path) -> dict[int, Device]:
    paths = write_shards(cfg, split, root / "shards")
    return {i: Device(p, root / "state" / p.name) for i, p in enumerate(paths)}


def _serve(cfg: RunConfig, split: Split, root: Path, **kw: Any) -> tuple[dict[str, Any], Path]:
    transport = InProcessTransport(_devices(cfg, split, root), **kw)
    out = root / "out"
    return serve(cfg, transport, RunDirectory(out)), out


def test_deployment_computes_the_simulators_model(tmp_path: Path) -> None:
    split, cfg = _split(), _cfg()
    summary, out = _serve(cfg, split, tmp_path)
    sim = train_federated(cfg, split, checkpoint_dir=tmp_path / "sim")
    shared = torch.load(out / "shared_model.pt", weights_only=True)
    final = torch.load(tmp_path / "sim" / "checkpoint.pt", weights_only=False)["server"]["shared"]
    assert sim.best_round == summary["best_round"]
    for k, v in shared.items():
        assert torch.allclose(v, final[k], atol=1e-6), k
    assert summary["valid"] == pytest.approx(sim.best_valid, abs=1e-9)
    assert summary["test"] == pytest.approx(sim.test_metrics, abs=1e-9)
    assert (out / "config.toml").exists() and (out / "metrics.jsonl").exists()


def test_deployment_reads_test_once_at_the_end_with_the_selected_rounds_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spy on each client's training and evaluation: validation only while rounds run, then
    one test read per client, with the rows it kept for the round selected on validation (the
    simulator's test figures, which are computed that way)."""
    import fedrec.deploy.client as client

    calls: list[str] = []
    shards: list[ClientShard] = []
    evaluate_sampled, client_update, shard = (
        client.evaluate_sampled,
        client.client_update,
        client.Device.shard,
    )

    def spy_shard(self: Device) -> ClientShard:
        shards.append(shard(self))
        return shards[-1]

    def spy_eval(scorer: Any, h: Any, ks: list[int]) -> Any:
        calls.append("test" if any(h is s.test for s in shards) else "valid")
        return evaluate_sampled(scorer, h, ks)

    def spy_train(*args: Any, **kw: Any) -> Any:
        calls.append("train")
        return client_update(*args, **kw)

    monkeypatch.setattr(client.Device, "shard", spy_shard)
    monkeypatch.setattr(client, "evaluate_sampled", spy_eval)
    monkeypatch.setattr(client, "client_update", spy_train)
    split, cfg = _split(), _cfg(rounds=4, eval_every=2)
    summary, _ = _serve(cfg, split, tmp_path)
    last_train = max(i for i, c in enumerate(calls) if c == "train")
    tests = [i for i, c in enumerate(calls) if c == "test"]
    assert len(tests) == cfg.federated.silos and min(tests) > last_train
    assert calls.count("valid") == 2 * cfg.federated.silos
    sim = train_federated(cfg, split)
    assert summary["best_round"] == sim.best_round
    assert summary["test"] == pytest.approx(sim.test_metrics, abs=1e-9)


def test_deployed_distributed_dp_with_clip_weights_is_the_simulators_model(
    tmp_path: Path,
) -> None:
    """Clients weigh, clip and noise their vectors, the server unweighs the unmasked sum:
    both sides read the weights from the run's configuration, as the simulator does."""
    split, cfg = _split(), _cfg(secagg=True, item_aggregation="fedavg")
    dp = {"enabled": True, "mode": "distributed", "noise_multiplier": 0.3, "clip": 0.5}
    dp["clip_weights"] = {"global_bias": 0.0, "item_bias.weight": 0.5}
    cfg = RunConfig.model_validate(
        {**cfg.model_dump(), "privacy": {**cfg.privacy.model_dump(), "dp": dp}}
    )
    summary, out = _serve(cfg, split, tmp_path)
    train_federated(cfg, split, checkpoint_dir=tmp_path / "sim")
    shared = torch.load(out / "shared_model.pt", weights_only=True)
    final = torch.load(tmp_path / "sim" / "checkpoint.pt", weights_only=False)["server"]["shared"]
    for k, v in shared.items():
        torch.testing.assert_close(v, final[k], rtol=0, atol=1e-4)
    assert float(shared["global_bias"]) == 0.0  # weight 0: never aggregated, still at init
    assert summary["privacy"]["epsilon"] > 0


def test_secagg_round_survives_a_client_lost_mid_round(tmp_path: Path) -> None:
    split, cfg = _split(), _cfg(secagg=True, rounds=2)

    transport = InProcessTransport(_devices(cfg, split, tmp_path))
    original = transport.exchange

    def exchange(kind: str, requests: dict[int, Payload], timeout: float) -> dict[int, Payload]:
        # client 2 dies in round 2 after sharing its keys: no masked input, no unmasking
        meta = next(iter(requests.values())).meta if requests else {}
        if kind == "secagg" and meta.get("round") == 1 and meta.get("stage") in ("mask", "unmask"):
            requests = {c: p for c, p in requests.items() if c != 2}
        return original(kind, requests, timeout)

    transport.exchange = exchange  # type: ignore[method-assign]
    summary = serve(cfg, transport, RunDirectory(tmp_path / "out"))
    assert summary["rounds"] == 2
    records = [r for r in _metrics(tmp_path / "out")]
    assert records[1]["participants"] == 4 and records[1]["dropped"] == 1
    assert any(e["client"] == 2 for e in records[1]["events"])
    assert np.isfinite(summary["test"]["HR@5"])
    block, expected = summary["secagg"], secagg_config(cfg).analysis(5)
    assert (block["neighbours"], block["threshold"]) == (expected.k, expected.t)
    assert block["predicted_failure"] == expected.failure and block["aborts"] == 0


def _metrics(out: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _tampered(mutate: Any) -> Any:
    def tamper(kind: str, client: int, reply: Payload) -> Payload | None:
        if kind == "train" and client == 1:
            mutate(reply)
        return reply

    return tamper


def _nan(p: Payload) -> None:
    p.arrays["item_deltas/item_emb.weight"][0, 0] = np.nan


def _shape(p: Payload) -> None:
    p.arrays["dense/global_bias"] = np.zeros((3,), np.float32)


def _dtype(p: Payload) -> None:
    p.arrays["item_deltas/item_emb.weight"] = p.arrays["item_deltas/item_emb.weight"].astype(
        np.float64
    )


def _item_range(p: Payload) -> None:
    p.arrays["item_ids"] = p.arrays["item_ids"].copy()
    p.arrays["item_ids"][0] = 10_000


def _replay(p: Payload) -> None:
    p.meta["round"] = p.meta["round"] - 1


def _oversize(p: Payload) -> None:
    p.arrays["junk"] = np.zeros(300_000, np.float32)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (_nan, "NaN"),
        (_shape, "shape"),
        (_dtype, "dtype"),
        (_item_range, "outside the catalogue"),
        (_replay, "replayed"),
        (_oversize, "exceeds the limit"),
    ],
)
def test_hostile_upload_is_rejected_and_the_round_goes_on(
    tmp_path: Path, mutate: Any, reason: str
) -> None:
    split = _split()
    cfg = _cfg(rounds=2)
    cfg = cfg.model_copy(update={"deploy": cfg.deploy.model_copy(update={"max_upload_mb": 1.0})})
    summary, out = _serve(cfg, split, tmp_path, tamper=_tampered(mutate))
    records = _metrics(out)
    assert all(r["participants"] == 4 for r in records)
    events = [e for r in records for e in r["events"]]
    assert events and all(e["client"] == 1 and reason in e["event"] for e in events)
    assert all(np.isfinite(v).all() for v in torch.load(out / "shared_model.pt").values())
    assert summary["rounds"] == 2


def test_client_refuses_an_old_round_and_keeps_state_on_disk(tmp_path: Path) -> None:
    split, cfg = _split(), _cfg(rounds=2)
    _serve(cfg, split, tmp_path)
    dev = Device(tmp_path / "shards" / "client-00000", tmp_path / "state" / "client-00000")
    (run_dir,) = dev.state_dir.glob("run-*")
    st = ClientState.load(run_dir)
    assert st is not None and st.round == 2 and st.shared is not None
    assert (run_dir / "state.pt").stat().st_mode & 0o077 == 0
    from fedrec.config import dump_config

    run = run_dir.name.removeprefix("run-")
    meta = {"config": dump_config(cfg), "round": 0, "nonce": "x", "dense": False, "run": run}
    req = Payload(meta=meta)
    req.put_params("shared", st.shared)
    with pytest.raises(ClientError, match="replayed"):
        handle(dev, "train", req)
    shard = ClientShard.load(dev.shard_dir)
    recs = recommend_from_state(dev.state_dir, shard.raw_users[0], k=5)
    assert len(recs) == 5 and [r["rank"] for r in recs] == [1, 2, 3, 4, 5]
    owned = set(shard.group.items[shard.group.users == 0].tolist())
    assert not owned & {int(r["item"]) for r in recs}
    with pytest.raises(ClientError, match="not on this device"):
        recommend_from_state(dev.state_dir, "nobody", k=5)
    from typer.testing import CliRunner

    from fedrec.cli.main import app

    res = CliRunner().invoke(
        app, ["recommend", "--state", str(dev.state_dir), "--user", shard.raw_users[0], "-k", "3"]
    )
    assert res.exit_code == 0, res.output
    assert str(recs[0]["item"]) in res.output


def test_server_restart_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    split = _split()
    full, out_full = _serve(_cfg(rounds=3), split, tmp_path / "full")
    root = tmp_path / "restart"
    devices = _devices(_cfg(rounds=2), split, root)
    serve(_cfg(rounds=2), InProcessTransport(devices), RunDirectory(root / "out"))
    # the server restarts with a longer run: it resumes at round 2, clients keep their state
    (root / "out" / "summary.json").unlink()
    again = serve(
        _cfg(rounds=3), InProcessTransport(devices), RunDirectory(root / "out"), resume=True
    )
    assert again["resumed_from_round"] == 2
    a = torch.load(out_full / "shared_model.pt")
    b = torch.load(root / "out" / "shared_model.pt")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert again["test"] == pytest.approx(full["test"], abs=1e-9)


def test_shards_are_the_simulators_partition(tmp_path: Path) -> None:
    split, cfg = _split(), _cfg()
    paths = write_shards(cfg, split, tmp_path)
    shards = [ClientShard.load(p) for p in paths]
    assert sum(s.n_examples for s in shards) == len(split.train)
    users = np.concatenate([s.users for s in shards])
    assert len(np.unique(users)) == len(users) == split.train.n_users
    assert sum(len(s.test) for s in shards) == len(split.test)
    with pytest.raises(ValueError, match="not a client shard"):
        ClientShard.load(tmp_path)
