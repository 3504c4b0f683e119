"""Federated accuracy against the same model trained centrally: one command, JSON + Markdown.

    python benchmarks/federated_accuracy.py [--only NAME ...] [--quick] [--out DIR]
                                            [--runs DIR]

Each entry runs a federated configuration from ``configs/`` end to end (as ``fedrec run``
does, run directory included, under ``--runs``) and its centralized counterpart: the tuned
centralized configuration of the same data set with the model made identical (same
architecture and sizes). Rounds, like epochs, are chosen on validation only; test metrics
are computed once, at the best round. The results hold aggregate metrics only.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrec.config import load_config
from fedrec.experiment.outputs import RunDirectory, finished_run
from fedrec.experiment.pipeline import run_experiment
from fedrec.report.machine import describe_machine, machine_markdown
from fedrec.report.results import merge_rows, write_results

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Entry:
    name: str
    federated: str
    central: str
    central_overrides: tuple[str, ...]


ENTRIES = [
    Entry("ml-1m-fedmf", "ml-1m-fedmf", "ml-1m-central-mf", ("model.dim=32",)),
    Entry(
        "ml-1m-fedncf",
        "ml-1m-fedncf",
        "ml-1m-central-neumf",
        ("model.dim=32", "model.mlp_layers=[64, 32, 16]"),
    ),
    Entry(
        "ml-1m-pfedrec",
        "ml-1m-pfedrec",
        "ml-1m-central-mf",
        ('model.name="pfedrec"', "model.dim=32"),
    ),
    Entry("ml-100k-fedmf", "ml-100k-fedmf", "ml-100k-central-mf", ("model.dim=32",)),
    Entry(
        "ml-100k-two-tower",
        "ml-100k-fed-two-tower",
        "ml-100k-central-mf",
        ('model.name="two-tower"', "model.dim=32", "model.tower_layers=[64, 32]"),
    ),
    Entry(
        "lastfm-2k-fedmf",
        "lastfm-2k-fedmf",
        "ml-100k-central-mf",
        ('data.name="lastfm-2k"', 'data.split="loo-random"', "model.dim=32"),
    ),
]
QUICK = ["ml-100k-fedmf"]


def _run(
    config: str, overrides: list[str], out: Path, reuse: bool, threads: int | None
) -> dict[str, Any]:
    extra = [] if threads is None else [f"threads={threads}"]
    cfg = load_config(ROOT / "configs" / f"{config}.toml", overrides + extra)
    if reuse and (done := finished_run(cfg, out)) is not None:
        done.setdefault("wall_s", done.get("seconds", 0.0))
        return done
    start = time.perf_counter()
    summary = run_experiment(cfg, RunDirectory(out, overwrite=True))
    summary["wall_s"] = time.perf_counter() - start
    return summary


def run_entry(e: Entry, runs: Path, reuse: bool, threads: int | None) -> dict[str, Any]:
    fed = _run(e.federated, [], runs / e.name / "federated", reuse, threads)
    central = _run(e.central, list(e.central_overrides), runs / e.name / "central", reuse, threads)
    hr_f, hr_c = fed["test"]["HR@10"], central["test"]["HR@10"]
    return {
        "name": e.name,
        "federated_config": f"configs/{e.federated}.toml",
        "central_config": f"configs/{e.central}.toml",
        "central_overrides": list(e.central_overrides),
        "data": fed["data"]["name"],
        "model": fed["model"],
        "clients": fed.get("clients"),
        "federated": {
            "test": fed["test"],
            "valid": fed["valid"],
            "best_round": fed.get("best_round"),
            "rounds": fed.get("rounds"),
            "seconds_per_round": fed.get("seconds_per_round"),
            "bytes_up_per_client_round": fed.get("bytes", {}).get("up_per_client_round"),
            "wall_s": fed["wall_s"],
        },
        "central": {
            "test": central["test"],
            "valid": central["valid"],
            "best_epoch": central.get("best_epoch"),
            "wall_s": central["wall_s"],
        },
        "ratio_hr10": hr_f / hr_c if hr_c else float("nan"),
    }


def markdown(rows: list[dict[str, Any]], command: str, m: dict[str, Any]) -> str:
    lines = [
        "# Federated accuracy against the same model trained centrally",
        "",
        f"Command: `{command}`. Test metrics at the round (epoch) chosen on validation.",
        "",
        "| entry | data | model | clients | fed HR@10 | fed NDCG@10 | central HR@10 "
        "| central NDCG@10 | fed / central | best round | s / round | up KiB / client / round |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        f, c = r["federated"], r["central"]
        lines.append(
            f"| {r['name']} | {r['data']} | {r['model']} | {r['clients']} "
            f"| {f['test']['HR@10']:.4f} | {f['test']['NDCG@10']:.4f} "
            f"| {c['test']['HR@10']:.4f} | {c['test']['NDCG@10']:.4f} | {r['ratio_hr10']:.3f} "
            f"| {f['best_round']} | {f['seconds_per_round']:.2f} "
            f"| {(f['bytes_up_per_client_round'] or 0) / 1024:.1f} |"
        )
    lines += ["", machine_markdown(m), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=[e.name for e in ENTRIES])
    ap.add_argument("--quick", action="store_true", help=f"only {QUICK}")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-accuracy")
    ap.add_argument("--threads", type=int, help="torch threads per run (default: the config's)")
    ap.add_argument(
        "--fresh",
        action="store_true",
        help="rerun even when --runs holds a finished run of the same configuration",
    )
    args = ap.parse_args(argv)
    names = args.only or (QUICK if args.quick else [e.name for e in ENTRIES])
    command = shlex.join(["python", "benchmarks/federated_accuracy.py", *sys.argv[1:]])
    rows = [
        {**run_entry(e, args.runs, not args.fresh, args.threads), "command": command}
        for e in ENTRIES
        if e.name in names
    ]
    m = describe_machine()
    # Merge with earlier entries so one table holds every measured setting.
    all_rows = merge_rows(
        args.out / "federated_accuracy.json",
        rows,
        key=lambda r: r["name"],
        order=[e.name for e in ENTRIES],
    )
    md = markdown(all_rows, command, m)
    write_results(args.out, "federated_accuracy", {"rows": all_rows, "command": command}, md, m)
    print(md)
    print(json.dumps({r["name"]: round(r["ratio_hr10"], 4) for r in all_rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
