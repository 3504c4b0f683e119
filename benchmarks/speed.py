"""Federated simulation speed and memory: one batched round against one centralized epoch of the
same model over the same samples, and against the one-client reference engine.

    python benchmarks/speed.py [--out DIR] [--reference-clients N] [--threads N] [--quick]
                               [--models mf neumf pfedrec]

Setting (federated-engine issue): ML-1M (NCF split), FedMF d = 32, all 6,040 clients every
round, 1 local epoch, 4 negatives per positive; FedNCF (NeuMF) and PFedRec are timed on the
same setting. The JSON's top-level figures are FedMF's. The reference engine is timed on a random
subset of clients and scaled by the share of local samples they hold (said in the output).
The last line printed is one JSON object.
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

from fedrec.config import RunConfig
from fedrec.experiment.pipeline import prepare
from fedrec.federated.server import run_round
from fedrec.report.machine import describe_machine, machine_markdown
from fedrec.report.results import write_results
from fedrec.simulation.training import build_simulation
from fedrec.training.centralized import train_centralized


def config(data: str, model: str, batch_size: int, threads: int = 2) -> RunConfig:
    split = "ncf" if data == "ml-1m" else "loo-time"
    return RunConfig.model_validate(
        {
            "mode": "federated",
            "seed": 0,
            "threads": threads,
            "data": {"name": data, "split": split},
            "model": {"name": model, "dim": 32, "mlp_layers": [64, 32, 16]},
            "train": {
                "loss": "bce",
                "negatives": 4,
                "epochs": 1,
                "batch_size": 1024,
                "patience": 0,
                "lr": 0.001,
            },
            "federated": {
                "rounds": 1,
                "sampling": "all",
                "local": {"epochs": 1, "batch_size": batch_size, "negatives": 4, "lr": 0.1},
            },
        }
    )


def measure(
    data: str, model: str, batch_size: int, reference_clients: int, threads: int
) -> dict[str, Any]:
    cfg = config(data, model, batch_size, threads)
    prepared = prepare(cfg)
    split = prepared.split

    central = train_centralized(cfg, split)
    central_epoch_s = central.seconds_per_epoch

    sim = build_simulation(cfg, split)
    n = sim.partition.n_clients
    t0 = time.perf_counter()
    _, report = run_round(
        sim.state,
        strategy=sim.strategy,
        selection=sim.selection,
        runner=sim.engine,
        n_clients=n,
        per_row_items=True,
    )
    batched_round_s = time.perf_counter() - t0

    ref = build_simulation(cfg, split, engine="sequential")
    rng = np.random.default_rng(0)
    subset = np.sort(rng.choice(n, size=min(reference_clients, n), replace=False))
    share = ref.group.sizes[subset].sum() / ref.group.sizes.sum()
    t0 = time.perf_counter()
    ref.engine.run(subset, ref.state.shared, 0)
    subset_s = time.perf_counter() - t0
    return {
        "data": data,
        "model": model,
        "clients": n,
        "local_batch_size": batch_size,
        "samples_per_round": int(split.train.users.size * 5),
        "batched_round_s": batched_round_s,
        "central_epoch_s": central_epoch_s,
        "ratio_round_to_epoch": batched_round_s / central_epoch_s,
        "reference_round_s": subset_s / share,
        "reference_timed_clients": len(subset),
        "reference_timed_s": subset_s,
        "speedup_vs_reference": (subset_s / share) / batched_round_s,
        "bytes_up_per_client": report.bytes_up_per_client,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--reference-clients", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (both sides)")
    ap.add_argument("--quick", action="store_true", help="ML-100K FedMF only")
    ap.add_argument(
        "--models",
        nargs="+",
        default=["mf", "neumf", "pfedrec"],
        choices=["mf", "gmf", "mlp", "neumf", "pfedrec"],
        help="models timed on ML-1M (FedMF first: it is the target setting); ML-100K runs FedMF",
    )
    args = ap.parse_args(argv)
    if args.quick:
        settings = [("ml-100k", "mf")]
    else:
        ml1m = ["mf", *[m for m in args.models if m != "mf"]]
        settings = [*(("ml-1m", m) for m in ml1m), ("ml-100k", "mf")]
    rows = []
    for data, model in settings:
        row = measure(data, model, args.batch_size, args.reference_clients, args.threads)
        # The process's peak so far: for the first row (ML-1M FedMF, the memory target) it is
        # that setting's own peak; later rows can only raise it.
        row["peak_rss_mb_so_far"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(row)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    m = describe_machine()
    command = shlex.join(["python", "benchmarks/speed.py", *sys.argv[1:]])
    lines = [
        "# Federated simulation speed",
        "",
        f"Command: `{command}`. All clients every round, 1 local epoch, 4 negatives, d = 32.",
        "The reference engine is timed on a random subset of clients and scaled by their",
        "share of the samples.",
        "",
        "| data | model | clients | batched round s | central epoch s | ratio "
        "| reference round s | speed-up | up KiB/client |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['data']} | {r['model']} | {r['clients']} | {r['batched_round_s']:.2f} "
            f"| {r['central_epoch_s']:.2f} | {r['ratio_round_to_epoch']:.2f} "
            f"| {r['reference_round_s']:.1f} | {r['speedup_vs_reference']:.1f}x "
            f"| {r['bytes_up_per_client'] / 1024:.1f} |"
        )
    lines += [
        "",
        f"Peak RSS after the first row (ML-1M FedMF, the memory target): "
        f"{rows[0]['peak_rss_mb_so_far']:.0f} MB; of the whole benchmark: {peak_rss_mb:.0f} MB.",
        "",
        machine_markdown(m),
        "",
    ]
    md = "\n".join(lines)
    head = rows[0]
    result = {
        "batched_round_s": head["batched_round_s"],
        "central_epoch_s": head["central_epoch_s"],
        "reference_round_s": head["reference_round_s"],
        "reference_scaled_from_clients": head["reference_timed_clients"],
        "peak_rss_mb": rows[0]["peak_rss_mb_so_far"],
        "peak_rss_mb_whole_benchmark": peak_rss_mb,
        "rows": rows,
        "command": command,
    }
    write_results(args.out, "speed", result, md, m)
    print(md)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
