"""What each privacy mechanism costs and buys: accuracy, leakage (canary audit), epsilon, time
and bytes per round, on the same federated model.

    python benchmarks/privacy.py [--data ml-100k ml-1m] [--only NAME ...] [--rounds N]
                                 [--seeds N ...] [--quick] [--out DIR] [--runs DIR]

Every setting is a federated run of the data set's FedMF configuration (``configs/``) with
uniform client weighting (which the mechanisms need; ``none`` uses it too, so rows compare
like with like) and one ``[privacy]`` change; then ``fedrec audit`` retrains it with canaries
(empirical epsilon), replays a round and attacks what the server received. DP settings use
distributed noise under SecAgg+ with the noise calibrated so the run's rounds spend exactly
the target epsilon at delta = 1e-6. HE encrypts every upload (0.15-0.3 s per client here), so
its rows sample 10% of the clients per round to stay affordable; the table says so. The last
line printed is one JSON object mapping each setting to its HR@10, NDCG@10, epsilon (the
accounted one), audit_auc (canary attack), empirical_epsilon (its 95% lower bound), round_s
and bytes_up_per_client (the old matched ``attack_auc`` is gone: it was 0.5 for any sum).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedrec.config import load_config
from fedrec.experiment.audit import CLIENT_SAMPLE, audit_run
from fedrec.experiment.outputs import RunDirectory, finished_run
from fedrec.experiment.pipeline import run_experiment
from fedrec.report.machine import describe_machine, machine_markdown
from fedrec.report.results import merge_rows, write_results
from fedrec.utils.atomic import atomic_open, atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
BASE = {"ml-100k": "ml-100k-fedmf", "ml-1m": "ml-1m-fedmf"}
# The ML-1M rows were measured with 4 local negatives per positive, half the cost per round of
# the accuracy configuration's 8; pinned so that a rerun reproduces them.
PINNED = {"ml-1m": ("federated.local.negatives=4",)}
# Each data set's user-level DP recipe, chosen on validation only by the rule in
# benchmarks/results/privacy-notes.md, which lists every candidate tried with its validation
# figures. ML-1M's is also written out as configs/ml-1m-fedmf-secagg-dp.toml.
# ``--rounds`` overrides the rounds.
DP_TUNED = {
    "ml-100k": ('federated.item_aggregation="fedavg"', "federated.server_lr=5.0"),
    "ml-1m": (
        'federated.item_aggregation="fedavg"',
        "federated.server_lr=15.0",
        "federated.rounds=50",
        "federated.local.epochs=2",
        "federated.local.negatives=8",
        # PLD accounting: the exact composition of Gaussians, z = 4.62 where RDP's bound needs
        # 4.875 for the same epsilon 8 over 50 rounds (11% less noise variance).
        'privacy.dp.accountant="pld"',
        # Distributed noise covers 99% of the clients (rounds abort if more than 1% drop; none
        # drop in these simulations), not the default 90%, whose sum carries 11% more noise
        # variance than central DP at the same z when every client survives.
        "privacy.dp.dropout_allowance=0.01",
        # The clip bound shared between parameters: the global bias, which every user's
        # private bias absorbs and which moves no ranking, spends none of it; item biases
        # claim 0.3^2 of their share (in round 1 they carry ~80% of a light client's update,
        # later under 1%, so early rounds give the embeddings more of the bound).
        'privacy.dp.clip_weights={global_bias = 0.0, "item_bias.weight" = 0.3}',
        # Validate, select and release a moving average of the rounds' shared parameters
        # (post-processing: it averages the per-round noise).
        "federated.ema_decay=0.8",
    ),
}
DELTA = 1e-6
AUDIT = "audit.json"
CANARIES = 1000
"""Canaries of each setting's audit run (its configuration retrained once with them)."""


@dataclass(frozen=True)
class Setting:
    name: str
    overrides: tuple[str, ...]
    note: str = ""
    dp: bool = False
    """User-level DP: the data set's ``DP_TUNED`` recipe applies."""


def _dp(eps: float, mode: str = "distributed") -> tuple[str, ...]:
    secagg = ("privacy.secagg.enabled=true",) if mode == "distributed" else ()
    return (
        *secagg,
        "privacy.dp.enabled=true",
        f'privacy.dp.mode="{mode}"',
        f"privacy.dp.target_epsilon={eps}",
        f"privacy.dp.delta={DELTA}",
    )


SETTINGS = [
    Setting("none", ()),
    Setting("pseudo_items", ("privacy.obfuscation.pseudo_items=50",), "50 pseudo-items"),
    *[
        Setting(
            f"ldp_eps{e:g}",
            ("privacy.ldp.enabled=true", f"privacy.ldp.epsilon={e}", "privacy.ldp.clip=1.0"),
            "Gaussian, per round",
        )
        for e in (1.0, 10.0, 100.0)
    ],
    Setting("secagg", ("privacy.secagg.enabled=true",)),
    *[
        Setting(f"secagg_dp_eps{e:g}", _dp(e), f"delta {DELTA:g}", dp=True)
        for e in (1.0, 2.0, 4.0, 8.0)
    ],
    Setting(
        "dp_central_eps8",
        _dp(8.0, "central"),
        f"delta {DELTA:g}, trusted server adds noise",
        dp=True,
    ),
    Setting(
        "he",
        ("privacy.he.enabled=true", 'federated.sampling="fraction"', "federated.fraction=0.1"),
        "10% of clients per round",
    ),
]
QUICK = ["none", "secagg", "secagg_dp_eps8"]


def run_setting(
    data: str,
    s: Setting,
    rounds: int | None,
    runs: Path,
    threads: int | None = None,
    reuse: bool = True,
    collect_only: bool = False,
    seed: int | None = None,
    canaries: int = CANARIES,
) -> dict[str, Any] | None:
    """One setting's row for one seed (None: the configuration's); with ``collect_only``,
    None unless a finished, audited run of the same configuration is already in ``runs``
    (nothing is trained or audited)."""
    overrides = [
        'federated.weighting="uniform"',
        "federated.checkpoint_every=1",
        *PINNED.get(data, ()),
        *(DP_TUNED[data] if s.dp else ()),
        *s.overrides,
    ]
    if threads is not None:
        overrides.append(f"threads={threads}")
    if rounds is not None:
        overrides.append(f"federated.rounds={rounds}")
    base = ROOT / "configs" / f"{BASE[data]}.toml"
    cfg = load_config(base, overrides)
    out = runs / data / s.name
    if seed is not None and seed != cfg.seed:
        # The configuration's own seed keeps the plain directory and overrides, so runs made
        # before --seeds existed are reused.
        overrides.append(f"seed={seed}")
        cfg = load_config(base, overrides)
        out = runs / data / f"{s.name}-seed{seed}"
    start = time.perf_counter()
    summary = finished_run(cfg, out) if reuse else None
    if collect_only and (summary is None or not (out / AUDIT).exists()):
        print(f"{data} {s.name}: no finished, audited run in {out}; skipped", file=sys.stderr)
        return None
    if summary is None:
        summary = run_experiment(cfg, RunDirectory(out, overwrite=True))
        (out / AUDIT).unlink(missing_ok=True)
    wall = time.perf_counter() - start
    audit = json.loads((out / AUDIT).read_text()) if (out / AUDIT).exists() else None
    if (
        audit is None
        or audit.get("client_sample") != CLIENT_SAMPLE
        or (audit.get("canary_audit") or {}).get("canaries") != canaries
    ):
        # Missing, or made before the canary audit: attack the run again.
        audit = audit_run(out, clients=300, canaries=canaries)
        atomic_write_text(out / AUDIT, json.dumps(audit, indent=2) + "\n")
    inf = audit["item_inference"]
    can = audit["canary_audit"]
    mia = audit.get("membership_inference") or {}
    privacy = summary.get("privacy") or {}
    return {
        "data": data,
        "setting": s.name,
        "note": s.note,
        "overrides": list(overrides),
        "HR@10": summary["test"]["HR@10"],
        "NDCG@10": summary["test"]["NDCG@10"],
        "audit_auc": can.get("auc"),
        "empirical_epsilon": can.get("empirical_epsilon"),
        "empirical_confidence": can.get("confidence"),
        "gaussian_epsilon": (can.get("gaussian_estimate") or {}).get("epsilon"),
        "audit_view": can["adversary_view"],
        "canaries": can["canaries"],
        "popularity_advantage": inf.get("advantage_over_popularity_mean"),
        "attack_auc_all_items": inf.get("auc_mean"),
        "attack_f1": inf.get("f1_mean"),
        "attack_baseline_f1": inf.get("baseline_f1_mean"),
        "membership_auc": mia.get("auc"),
        "membership_advantage": mia.get("advantage"),
        "server_view": audit["server_view"],
        "epsilon": privacy.get("epsilon"),
        "delta": privacy.get("delta"),
        "noise_multiplier": privacy.get("noise_multiplier"),
        "round_s": summary["seconds_per_round"],
        "bytes_up_per_client": summary["bytes"]["up_per_client_round"],
        "rounds": summary["rounds"],
        "best_round": summary["best_round"],
        "valid_NDCG@10": summary["valid"]["NDCG@10"],
        "seed": cfg.seed,
        "wall_s": wall,
    }


PER_SEED = (
    "seed",
    "HR@10",
    "NDCG@10",
    "valid_NDCG@10",
    "rounds",
    "best_round",
    "audit_auc",
    "empirical_epsilon",
)
MEANED = (
    "HR@10",
    "NDCG@10",
    "valid_NDCG@10",
    "audit_auc",
    "empirical_epsilon",
    "gaussian_epsilon",
    "popularity_advantage",
    "attack_auc_all_items",
    "attack_f1",
    "attack_baseline_f1",
    "membership_auc",
    "membership_advantage",
    "round_s",
    "bytes_up_per_client",
)


def combine_seeds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from a setting's runs over several seeds: figures are means over the seeds,
    ``per_seed`` keeps each run's, and ``HR@10_sd`` is the sample standard deviation. A
    single run is returned as it is (so results from before ``--seeds`` stay comparable)."""
    if len(rows) == 1:
        return rows[0]
    out = dict(rows[0])
    for k in MEANED:
        values = [r[k] for r in rows]
        out[k] = None if any(v is None for v in values) else statistics.fmean(values)
    out["HR@10_sd"] = statistics.stdev(r["HR@10"] for r in rows)
    out["per_seed"] = [{k: r.get(k) for k in PER_SEED} for r in rows]
    out["seed"] = None
    out["wall_s"] = sum(r["wall_s"] for r in rows)
    return out


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(rows: list[dict[str, Any]], command: str, m: dict[str, Any]) -> str:
    commands = list(dict.fromkeys(r.get("command", command) for r in rows))
    lines = [
        "# Privacy mechanisms: accuracy, leakage, epsilon, cost",
        "",
        "Commands: " + "; ".join(f"`{c}`" for c in commands) + ". FedMF, uniform weighting, "
        "test metrics at the best validation round.",
        "",
        "Canary audit: each setting's configuration trained once more with canary clients "
        "(a random direction on 20 uniformly drawn items, inserted on a secret fair coin, "
        "uploaded through the mechanism's own client step); the adversary sees what the "
        "mechanism shows (per-client uploads, per-round sums, or the released model under "
        "central DP). Canary AUC: inserted against held-out canaries. Empirical epsilon: the "
        "one-run lower bound of Steinke et al. (NeurIPS 2023, (eps, delta) form) at the stated "
        "confidence; Gaussian: Andrew et al.'s estimate (ICLR 2024), not a bound. A lower "
        "bound above the accounted epsilon would be a bug.",
        "",
        "Popularity-prior advantage: item inference by the server on one replayed round "
        "(300 clients, a keyed hash of their ids picks them), AUC minus the AUC of ranking "
        "items by public popularity (0: nothing learnt beyond popularity). Membership "
        "advantage: Yeom et al.'s best-threshold TPR - FPR on the final model, training "
        "interactions against never-interacted items of the same popularity decile.",
        "",
        "s / round is wall time on a shared 2-core machine (load average below). SecAgg+ uses "
        "the default k = 2 ceil(log2 n) neighbours.",
        "",
        "| data | setting | HR@10 | NDCG@10 | canary AUC | empirical epsilon (confidence) "
        "| Gaussian epsilon | accounted epsilon | popularity-prior advantage "
        "| membership advantage | s / round | KiB up / client / round | rounds | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        eps = r.get("epsilon")
        hr, rounds = f"{r['HR@10']:.4f}", str(r["rounds"])
        if r.get("per_seed"):
            each = " / ".join(f"{p['HR@10']:.4f}" for p in r["per_seed"])
            hr += f" ± {r['HR@10_sd']:.4f} (seeds {each})"
            rounds = " / ".join(str(p.get("rounds", "?")) for p in r["per_seed"])
        conf = r.get("empirical_confidence")
        emp = _fmt(r.get("empirical_epsilon"), ".2f")
        if conf is not None:
            emp += f" ({conf:.0%})"
        lines.append(
            f"| {r['data']} | {r['setting']} | {hr} | {r['NDCG@10']:.4f} "
            f"| {_fmt(r.get('audit_auc'), '.3f')} | {emp} "
            f"| {_fmt(r.get('gaussian_epsilon'), '.2f')} "
            f"| {'-' if eps is None else f'{eps:.2f}'} "
            f"| {_fmt(r.get('popularity_advantage'), '.3f')} "
            f"| {_fmt(r.get('membership_advantage'), '.3f')} "
            f"| {r['round_s']:.2f} | {r['bytes_up_per_client'] / 1024:.1f} | {rounds} "
            f"| {r['note']} |"
        )
    lines += ["", machine_markdown(m), ""]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Utility against leakage: HR@10 and canary attack AUC per setting, one panel per data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datas = sorted({r["data"] for r in rows})
    fig, axes = plt.subplots(1, len(datas), figsize=(7 * len(datas), 4.5), squeeze=False)
    for ax, data in zip(axes[0], datas, strict=True):
        mine = [r for r in rows if r["data"] == data]
        x = range(len(mine))
        ax.bar([i - 0.2 for i in x], [r["HR@10"] for r in mine], width=0.4, label="test HR@10")
        auc = [r.get("audit_auc") for r in mine]
        ax.bar(
            [i + 0.2 for i in x],
            [float("nan") if a is None else a for a in auc],
            width=0.4,
            label="canary attack AUC",
        )
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(list(x), [r["setting"] for r in mine], rotation=45, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title(data)
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb", encoding=None) as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["ml-100k", "ml-1m"], choices=sorted(BASE))
    ap.add_argument("--only", nargs="+", choices=[s.name for s in SETTINGS])
    ap.add_argument("--rounds", type=int, help="override every setting's rounds")
    ap.add_argument("--quick", action="store_true", help=f"ML-100K, {QUICK}, 5 rounds")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-privacy")
    ap.add_argument("--threads", type=int, help="torch threads per run (default: the config's)")
    ap.add_argument(
        "--stem", help="results file name under --out (default: privacy, or privacy-quick)"
    )
    ap.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        help="run each setting once per seed and report the mean (default: the config's seed)",
    )
    ap.add_argument("--fresh", action="store_true", help="retrain even a finished same run")
    ap.add_argument(
        "--canaries", type=int, default=CANARIES, help="canaries of each setting's audit run"
    )
    ap.add_argument(
        "--collect",
        action="store_true",
        help="train nothing: merge the rows of runs already finished and audited in --runs",
    )
    args = ap.parse_args(argv)
    if args.seeds and len(set(args.seeds)) != len(args.seeds):
        ap.error(f"--seeds repeats a seed: {args.seeds}")
    data = ["ml-100k"] if args.quick else args.data
    names = QUICK if args.quick and not args.only else args.only
    rounds = 5 if args.quick and args.rounds is None else args.rounds
    command = shlex.join(["python", "benchmarks/privacy.py", *sys.argv[1:]])
    rows = []
    for d in data:
        for s in SETTINGS:
            if names is not None and s.name not in names:
                continue
            runs = [
                run_setting(
                    d,
                    s,
                    rounds,
                    args.runs,
                    args.threads,
                    not args.fresh,
                    collect_only=args.collect,
                    seed=seed,
                    canaries=args.canaries,
                )
                for seed in (args.seeds or [None])
            ]
            if all(r is not None for r in runs):
                rows.append({**combine_seeds([r for r in runs if r]), "command": command})
    if args.threads is not None:
        # The machine line reports the runs' threads even when every run was reused.
        torch.set_num_threads(args.threads)
    m = describe_machine()
    stem = args.stem or ("privacy-quick" if args.quick else "privacy")
    all_rows = merge_rows(
        args.out / f"{stem}.json",
        rows,
        key=lambda r: (r["data"], r["setting"]),
        order=[(d, s.name) for d in BASE for s in SETTINGS],
    )
    md = markdown(all_rows, command, m)
    write_results(args.out, stem, {"rows": all_rows}, md, m)
    plot(all_rows, args.out / f"{stem}.png")
    print(md)
    keys = (
        "HR@10",
        "NDCG@10",
        "epsilon",
        "audit_auc",
        "empirical_epsilon",
        "round_s",
        "bytes_up_per_client",
    )
    by_data: dict[str, dict[str, Any]] = {}
    for r in all_rows:
        by_data.setdefault(r["data"], {})[r["setting"]] = {k: r.get(k) for k in keys}
    # Top level: each mechanism on the largest data set measured; every data set under by_data.
    primary = next((d for d in ("ml-1m", "ml-100k") if d in by_data), None)
    last: dict[str, Any] = dict(by_data.get(primary, {})) if primary else {}
    last.update({"data": primary, "by_data": by_data})
    print(json.dumps(last))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
