"""Scale: seconds per federated round for synthetic populations of 1k, 10k and 100k clients
over a catalogue of 50,000 items, with 10% of the clients sampled each round.

    python benchmarks/scale.py [--clients 1000 10000 100000] [--items 50000] [--rounds 3]

Each client holds a few dozen interactions drawn from a Zipf-like item popularity (as real
catalogues have), so a sampled round trains about as many samples as 10% of the population
holds. FedMF d = 32, 1 local epoch, 4 negatives, batch 64, batched engine, per-row item
averaging. The first round is reported apart (it includes one-time set-up); the figure is
the median of the following ones. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import RunConfig
from fedrec.data.table import Holdout, Interactions, Split
from fedrec.federated.server import run_round
from fedrec.report.machine import describe_machine, machine_markdown
from fedrec.report.results import write_results
from fedrec.simulation.training import build_simulation


def synthetic(n_users: int, n_items: int, mean_items: int, seed: int) -> Split:
    """Users with geometric-ish history lengths (at least 5) over Zipf(1.1) item popularity."""
    rng = np.random.default_rng(seed)
    sizes = np.clip(rng.geometric(1.0 / mean_items, n_users), 5, 20 * mean_items)
    pop = 1.0 / np.arange(1, n_items + 1) ** 1.1
    pop /= pop.sum()
    users = np.repeat(np.arange(n_users), sizes)
    items = rng.choice(n_items, size=len(users), p=pop)
    keys = np.unique(users.astype(np.int64) * n_items + items)
    users, items = keys // n_items, keys % n_items
    train = Interactions(
        name=f"synthetic-{n_users}x{n_items}",
        users=users,
        items=items,
        ratings=np.ones(len(users), dtype=np.float32),
        timestamps=None,
        user_ids=np.arange(n_users),
        item_ids=np.arange(n_items),
    )
    empty = Holdout(
        users=np.zeros(0, np.int64), items=np.zeros(0, np.int64), ratings=np.zeros(0, np.float32)
    )
    return Split(train=train, valid=empty, test=empty, protocol="synthetic")


def config(fraction: float) -> RunConfig:
    return RunConfig.model_validate(
        {
            "mode": "federated",
            "seed": 0,
            "threads": 2,
            "model": {"name": "mf", "dim": 32},
            "federated": {
                "sampling": "fraction",
                "fraction": fraction,
                "local": {"epochs": 1, "batch_size": 64, "negatives": 4, "lr": 8.0},
            },
        }
    )


def measure(n_clients: int, n_items: int, mean_items: int, rounds: int) -> dict[str, Any]:
    split = synthetic(n_clients, n_items, mean_items, seed=n_clients)
    cfg = config(0.1)
    t0 = time.perf_counter()
    sim = build_simulation(cfg, split)
    setup_s = time.perf_counter() - t0
    state, times, samples = sim.state, [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        state, report = run_round(
            state,
            strategy=sim.strategy,
            selection=sim.selection,
            runner=sim.engine,
            n_clients=sim.partition.n_clients,
            per_row_items=True,
        )
        times.append(time.perf_counter() - t0)
        samples.append(report.examples)
    steady = times[1:] or times
    return {
        "clients": n_clients,
        "items": n_items,
        "interactions": len(split.train),
        "sampled_per_round": round(0.1 * n_clients),
        "positives_per_round": int(statistics.median(samples)),
        "setup_s": setup_s,
        "first_round_s": times[0],
        "round_s": statistics.median(steady),
        "rounds_timed": len(steady),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--mean-items", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    rows = [measure(n, args.items, args.mean_items, args.rounds) for n in args.clients]
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    m = describe_machine()
    command = shlex.join(["python", "benchmarks/scale.py", *sys.argv[1:]])
    lines = [
        "# Federated simulation at scale",
        "",
        f"Command: `{command}`. Synthetic clients over {args.items:,} items (Zipf 1.1),",
        f"{args.mean_items} interactions per client on average; 10% of clients per round;",
        "FedMF d = 32, 1 local epoch, 4 negatives, batch 64. Round time is the median after",
        "the first round.",
        "",
        "| clients | interactions | sampled/round | positives/round | set-up s "
        "| first round s | round s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']:,} | {r['interactions']:,} | {r['sampled_per_round']:,} "
            f"| {r['positives_per_round']:,} | {r['setup_s']:.2f} | {r['first_round_s']:.2f} "
            f"| {r['round_s']:.2f} |"
        )
    lines += ["", f"Peak RSS of the whole benchmark: {peak_rss_mb:.0f} MB.", ""]
    lines += [machine_markdown(m), ""]
    md = "\n".join(lines)
    result = {
        "round_s": {str(r["clients"]): r["round_s"] for r in rows},
        "peak_rss_mb": peak_rss_mb,
        "rows": rows,
        "command": command,
    }
    write_results(args.out, "scale", result, md, m)
    print(md)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
