"""Centralised baselines on ML-100K and ML-1M: one command, one JSON and one Markdown table.

    python benchmarks/centralized.py [--out DIR] [--quick] [--data-dir DIR] [--threads N]
                                     [--only NAME ...]

Each ``configs/*-central-*.toml`` below runs through ``train_centralized``; hyperparameters
were chosen on validation metrics only. The results hold aggregate metrics only, nothing
derived row by row from the (non-redistributable) data sets.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from fedrec.config import RunConfig, dump_config, load_config
from fedrec.experiment.pipeline import prepare
from fedrec.report.machine import describe_machine
from fedrec.training.centralized import train_centralized
from fedrec.utils.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [
    "ml-100k-central-popularity",
    "ml-100k-central-mf",
    "ml-100k-central-neumf",
    "ml-1m-central-popularity",
    "ml-1m-central-mf",
    "ml-1m-central-gmf",
    "ml-1m-central-mlp",
    "ml-1m-central-neumf",
]
QUICK = [c for c in CONFIGS if c.startswith("ml-100k")]


def run_one(name: str, data_dir: Path | None, threads: int | None) -> dict[str, Any]:
    cfg: RunConfig = load_config(ROOT / "configs" / f"{name}.toml")
    if threads is not None:
        cfg = cfg.model_copy(update={"threads": threads})
    if data_dir is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"dir": data_dir})})
    start = time.perf_counter()
    prepared = prepare(cfg)
    result = train_centralized(cfg, prepared.split)
    seconds = time.perf_counter() - start
    return {
        "config": f"configs/{name}.toml",
        "dataset": cfg.data.name,
        "split": prepared.split.protocol,
        "protocol": cfg.eval.protocol,
        "model": cfg.model.name,
        "resolved_config": dump_config(
            cfg.model_copy(update={"data": cfg.data.model_copy(update={"dir": None})})
        ),
        "valid": result.best_valid,
        "test": result.test_metrics,
        "test_full": result.test_full,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "seconds_total": round(seconds, 2),
        "seconds_data": round(prepared.seconds, 2),
        "seconds_train": round(result.timing.get("train", 0.0), 2),
        "seconds_per_epoch": round(result.seconds_per_epoch, 3),
    }


def _f(metrics: dict[str, float] | None, key: str) -> str:
    if not metrics or key not in metrics:
        return "-"
    return f"{metrics[key]:.4f}"


def markdown(rows: list[dict[str, Any]], env: dict[str, Any], command: str) -> str:
    head = (
        "| data set | split / protocol | model | HR@10 | NDCG@10 | MRR | full HR@10 | "
        "full NDCG@10 | full Recall@10 | valid HR@10 | valid NDCG@10 | best / run epochs | "
        "s/epoch | seconds |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['dataset']} | {r['split']} / {r['protocol']} | {r['model']} | "
        f"{_f(r['test'], 'HR@10')} | {_f(r['test'], 'NDCG@10')} | {_f(r['test'], 'MRR')} | "
        f"{_f(r['test_full'], 'HR@10')} | {_f(r['test_full'], 'NDCG@10')} | "
        f"{_f(r['test_full'], 'Recall@10')} | {_f(r['valid'], 'HR@10')} | "
        f"{_f(r['valid'], 'NDCG@10')} | {r['best_epoch']} / {r['epochs_run']} | "
        f"{r['seconds_per_epoch']:.2f} | {r['seconds_total']:.1f} |\n"
        for r in rows
    )
    machine_lines = "".join(f"- {k}: {v}\n" for k, v in env.items())
    return (
        "# Centralised baselines\n\n"
        "Test metrics of the model selected on validation (early stopping on "
        "validation only; the test hold-out is scored once). `sampled` ranks the held-out "
        "item against fixed negatives (ML-1M `ncf`: the NCF authors' 99; ML-100K: 99 "
        "sampled); `full` ranks it against every item the user has no training interaction "
        "with.\n\n"
        f"{head}{body}\n"
        f"## Machine\n\n{machine_lines}\n"
        f"## Rerun\n\n```\n{command}\n```\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--quick", action="store_true", help="ML-100K configurations only")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: $FEDREC_DATA_DIR")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="override the configs' torch threads (1 is faster on a busy machine)",
    )
    parser.add_argument("--only", nargs="+", choices=CONFIGS, help="run just these configs")
    args = parser.parse_args(argv)
    names = args.only or (QUICK if args.quick else CONFIGS)
    command = "python benchmarks/centralized.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    rows = []
    for name in names:
        print(f"[{name}] running...", flush=True)
        row = run_one(name, args.data_dir, args.threads)
        print(
            f"[{name}] test HR@10 {_f(row['test'], 'HR@10')} NDCG@10 "
            f"{_f(row['test'], 'NDCG@10')} (valid NDCG@10 {_f(row['valid'], 'NDCG@10')}), "
            f"{row['epochs_run']} epochs, {row['seconds_total']:.1f} s",
            flush=True,
        )
        rows.append(row)
    env = describe_machine()
    out: Path = args.out
    payload = {"machine": env, "command": command.strip(), "results": rows}
    atomic_write_text(out / "centralized.json", json.dumps(payload, indent=2) + "\n")
    atomic_write_text(out / "centralized.md", markdown(rows, env, command.strip()))
    print(f"wrote {out / 'centralized.json'} and {out / 'centralized.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
