"""Evaluation and sampling speed on ML-1M (NCF split): full ranking of every user, the sampled
protocol, and one epoch of training negatives. A benchmark, not a test.

    python benchmarks/eval_speed.py [--data-dir DIR] [--out DIR]

Target (foundation issue): full-ranking evaluation of all 6,040 ML-1M users in under 5 s.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fedrec.config import DataConfig
from fedrec.data.implicit import to_implicit
from fedrec.data.loaders import load_dataset
from fedrec.data.sampling import TrainingNegativeSampler
from fedrec.data.splits import make_split
from fedrec.eval import evaluate
from fedrec.report.machine import describe_machine, machine_markdown
from fedrec.utils.atomic import atomic_write_text


class DotProduct:
    """A random d=64 dot-product scorer: evaluation cost does not depend on the weights."""

    def __init__(self, n_users: int, n_items: int, d: int = 64) -> None:
        g = torch.Generator().manual_seed(0)
        self.U = torch.randn(n_users, d, generator=g)
        self.V = torch.randn(n_items, d, generator=g)

    def score_all(self, users: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        out: npt.NDArray[np.float32] = (self.U[torch.from_numpy(users)] @ self.V.T).numpy()
        return out

    def score_candidates(
        self, users: npt.NDArray[np.int64], items: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        u = self.U[torch.from_numpy(users)]
        out: npt.NDArray[np.float32] = torch.einsum(
            "bd,bcd->bc", u, self.V[torch.from_numpy(items)]
        ).numpy()
        return out


def best_of(n: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    data = to_implicit(load_dataset("ml-1m", args.data_dir), None)
    split = make_split(data, DataConfig(name="ml-1m", split="ncf"), 0, args.data_dir)
    model = DotProduct(data.n_users, data.n_items)
    ks = [5, 10, 20]
    full_s = best_of(3, lambda: evaluate(model, split, "test", "full", ks))
    sampled_s = best_of(3, lambda: evaluate(model, split, "test", "sampled", ks))
    sampler = TrainingNegativeSampler(split.train, seed=0)
    neg_s = best_of(3, lambda: sampler.sample(split.train.users, 4))
    m = describe_machine()
    result: dict[str, Any] = {
        "full_ranking_s": full_s,
        "full_ranking_users": len(split.test),
        "items": data.n_items,
        "sampled_s": sampled_s,
        "training_negatives_s": neg_s,
        "training_positives": len(split.train),
        "target_full_ranking_s": 5.0,
        "machine": m,
        "command": shlex.join(["python", "benchmarks/eval_speed.py", *sys.argv[1:]]),
    }
    md = "\n".join(
        [
            "# Evaluation speed (ML-1M, NCF split)",
            "",
            f"Command: `{result['command']}` (best of 3 runs each)",
            "",
            "| what | seconds | target |",
            "|---|---:|---:|",
            f"| full ranking, {len(split.test)} users x {data.n_items} items "
            f"| {full_s:.3f} | < 5 |",
            f"| sampled protocol, {len(split.test)} users x 100 candidates | {sampled_s:.3f} | |",
            f"| training negatives, {len(split.train)} positives x 4 | {neg_s:.3f} | |",
            "",
            machine_markdown(m),
            "",
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "eval_speed.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out / "eval_speed.md", md)
    print(md)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
