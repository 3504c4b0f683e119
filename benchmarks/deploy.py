"""A real deployment on loopback against the simulator, same configuration: seconds and bytes
per round for 20 and 50 clients.

    python benchmarks/deploy.py [--clients 20 50] [--rounds 2] [--config PATH] [--out DIR]

Each client is a Flower SuperNode (its own process; each message is answered by a fresh
ClientApp process, as Flower runs them), over TLS with authenticated nodes, on this one
machine. The configuration is ``configs/deploy-ml-100k-secagg.toml`` (FedMF on ML-100K, users
dealt into N organisations, SecAgg+) with ``federated.silos = N``; the simulator runs the
same configuration in one process. Round time is the median of the rounds (the deployment's
includes its five message exchanges); bytes are what each client sent and received per
round as the server counts them (message content, framing aside). Evaluation happens once,
after the last round, and is not in the round times. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import RunConfig, load_config
from fedrec.deploy.launcher import LocalFederation
from fedrec.experiment.outputs import RunDirectory
from fedrec.experiment.pipeline import prepare, run_experiment
from fedrec.report.machine import describe_machine, machine_markdown
from fedrec.report.results import merge_rows, write_results
from fedrec.utils.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "deploy-ml-100k-secagg.toml"


def _config(path: Path, n: int, rounds: int) -> RunConfig:
    return load_config(
        path,
        [
            f"federated.silos={n}",
            f"federated.rounds={rounds}",
            f"federated.eval_every={rounds}",
            "federated.checkpoint_every=1",
            "threads=1",
            # dozens of nodes share two cores here: be patient before calling anyone lost
            "deploy.wait_clients_s=1800",
            "deploy.reply_timeout_s=1800",
        ],
    )


def _rounds(metrics: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]


def measure(path: Path, n: int, rounds: int, work: Path) -> dict[str, Any]:
    cfg = _config(path, n, rounds)
    split = prepare(cfg).split
    out = work / f"deploy-{n}"
    fed = LocalFederation(cfg, work / f"federation-{n}", n)
    fed.prepare(split)
    t0 = time.perf_counter()
    with fed:
        fed.start()
        started = time.perf_counter() - t0
        cfg_path = work / f"deploy-{n}.toml"
        atomic_write_text(cfg_path, (fed.root / "run-config.toml").read_text())
        t1 = time.perf_counter()
        summary = fed.wait(out, fed.submit(cfg_path, out), timeout=7200)
        wall = time.perf_counter() - t1
    dep = _rounds(out / "metrics.jsonl")
    sim_out = work / f"sim-{n}"
    sim_summary = run_experiment(cfg, RunDirectory(sim_out, overwrite=True))
    sim = _rounds(sim_out / "metrics.jsonl")
    return {
        "clients": n,
        "rounds": rounds,
        "start_s": started,
        "run_wall_s": wall,
        "deploy_round_s": float(np.median([r["seconds"] for r in dep])),
        "sim_round_s": float(np.median([r["seconds"] for r in sim])),
        "deploy_up_per_client": float(np.mean([r["bytes_up_per_client"] for r in dep])),
        "deploy_down_per_client": float(np.mean([r["bytes_down_per_client"] for r in dep])),
        "sim_up_per_client": float(np.mean([r["bytes_up_per_client"] for r in sim])),
        "sim_down_per_client": float(np.mean([r["bytes_down_per_client"] for r in sim])),
        "deploy_test_hr10": summary["test"].get("HR@10"),
        "sim_test_hr10": sim_summary["test"].get("HR@10"),
        "participants": [r["participants"] for r in dep],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[20, 50])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-deploy")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    rows = [measure(args.config, n, args.rounds, args.work) for n in args.clients]
    rows = merge_rows(
        args.out / "deploy.json",
        rows,
        key=lambda r: r["clients"],
        order=sorted({20, 50, *args.clients}),
    )
    m = describe_machine()
    command = shlex.join(["python", "benchmarks/deploy.py", *sys.argv[1:]])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        "# Deployment on loopback against the simulator",
        "",
        f"Command: `{command}`. Configuration `{args.config.relative_to(ROOT)}` (FedMF on "
        "ML-100K, SecAgg+) with the users dealt into N organisations, one SuperNode each, TLS "
        "and node authentication; the simulator runs the same configuration in one process. "
        "Round time: median over the rounds; bytes: content each client sent / received per "
        "round, as the server counts it.",
        "",
        "| clients | rounds | deploy s / round | simulator s / round | ratio "
        "| KiB up / client (deploy / sim) | KiB down / client (deploy / sim) "
        "| test HR@10 (deploy / sim) | federation start s |",
        "|---:|---:|---:|---:|---:|---|---|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['rounds']} | {r['deploy_round_s']:.1f} "
            f"| {r['sim_round_s']:.2f} | {r['deploy_round_s'] / r['sim_round_s']:.0f}x "
            f"| {r['deploy_up_per_client'] / 1024:.1f} / {r['sim_up_per_client'] / 1024:.1f} "
            f"| {r['deploy_down_per_client'] / 1024:.1f} / {r['sim_down_per_client'] / 1024:.1f} "
            f"| {r['deploy_test_hr10']:.4f} / {r['sim_test_hr10']:.4f} | {r['start_s']:.0f} |"
        )
    lines += [
        "",
        "Where a deployed round's time goes: Flower answers each message with a fresh "
        "ClientApp process (Python, Flower and, for training, torch start each time) and an "
        "idle SuperNode polls for messages every 3 s; a SecAgg+ round is five exchanges. "
        "The simulator runs the same clients' updates and the same SecAgg+ messages in one "
        f"process. Peak RSS of this script: {peak:.0f} MB (the federation's processes are "
        "separate).",
        "",
        machine_markdown(m),
        "",
    ]
    md = "\n".join(lines)
    result = {"rows": rows, "command": command}
    write_results(args.out, "deploy", result, md, m)
    print(md)
    print(json.dumps({str(r["clients"]): r for r in rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
