"""A real deployment on loopback against the simulator, same configuration: seconds, bytes,
memory and per-message CPU per round for 20, 50 and 100 clients.

    python benchmarks/deploy.py [--clients 20 50 100] [--rounds 2] [--config PATH] [--out DIR]

Each client is a Flower SuperNode (its own process, with its SuperExec), over TLS with
authenticated nodes, on this one machine; each message is answered by its own ClientApp
process, forked from one warm server (``fedrec.deploy.warm_exec``) shared by all the nodes.
The configuration is ``configs/deploy-ml-100k-secagg.toml`` (FedMF on ML-100K, users dealt
into N organisations, SecAgg+) with ``federated.silos = N``; the simulator runs the same
configuration in one process. Round time is the median of the rounds (the deployment's
includes its four message exchanges); bytes are what each client sent and received per round
as the server counts them (message content, framing aside). Evaluation happens once, after
the last round, and is not in the round times. Memory: the peak, over the run, of the summed
RSS and PSS of every process the federation started. Per message: median CPU and wall time of
a ClientApp process from its fork to its exit, by the stage it answered. The last line printed
is one JSON object keyed by client count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import sys
import threading
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
            # the simulator's negatives: the test HR@10 must then be the simulator's
            "deploy.client_randomness=run-seed",
            # dozens of nodes share two cores here: be patient before calling anyone lost
            "deploy.wait_clients_s=1800",
            "deploy.reply_timeout_s=1800",
        ],
    )


def _rounds(metrics: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]


class MemorySampler:
    """Peak total memory of the federation: every process in the sessions the launcher
    started (SuperLink, SuperNodes with their SuperExecs, the warm server and its forks).
    RSS counts pages shared by forks once per process; PSS divides them among the sharers,
    so its sum is the memory the federation really holds."""

    def __init__(self, sessions: set[int], home: Path, every_s: float = 0.5) -> None:
        self.sessions, self.every_s = sessions, every_s
        # Flower starts the SuperLink's SuperExec and ServerApp detached: found by FLWR_HOME.
        self.home = f"FLWR_HOME={home}".encode()
        self.peak_rss_mb = self.peak_pss_mb = 0.0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            rss = pss = 0.0
            count = 0
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text()
                    if int(stat[stat.rindex(")") + 2 :].split()[3]) not in self.sessions:
                        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                        if self.home not in env:
                            continue
                    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                        if line.startswith("Rss:"):
                            rss += int(line.split()[1]) / 1024
                        elif line.startswith("Pss:"):
                            pss += int(line.split()[1]) / 1024
                    count += 1
                except (OSError, ValueError, IndexError):
                    continue
            self.peak_rss_mb = max(self.peak_rss_mb, rss)
            self.peak_pss_mb = max(self.peak_pss_mb, pss)
            self.peak_processes = max(self.peak_processes, count)


def per_message(log: Path) -> dict[str, dict[str, float]]:
    """Median CPU and wall milliseconds of a ClientApp process, by the stage it answered."""
    from fedrec.deploy.warm_exec import STATS_PREFIX

    by: dict[str, list[tuple[float, float]]] = {}
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(STATS_PREFIX):
            s = json.loads(line[len(STATS_PREFIX) :])
            by.setdefault(s["stage"], []).append((s["cpu_ms"], s["wall_ms"]))
    return {
        stage: {
            "n": len(v),
            "cpu_ms": float(np.median([c for c, _ in v])),
            "wall_ms": float(np.median([w for _, w in v])),
        }
        for stage, v in sorted(by.items())
    }


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
        sessions = {p.popen.pid for p in fed.procs.values()}
        popen = fed.submit(cfg_path, out)
        sessions.add(popen.pid)
        with MemorySampler(sessions, fed.root / "flwr-home") as mem:
            summary = fed.wait(out, popen, timeout=7200)
        wall = time.perf_counter() - t1
    messages = per_message(fed.root / "logs" / "warm-exec.log")
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
        "test_hr10_deploy": summary["test"].get("HR@10"),
        "test_hr10_sim": sim_summary["test"].get("HR@10"),
        "participants": [r["participants"] for r in dep],
        "peak_rss_mb_total": mem.peak_rss_mb,
        "peak_pss_mb_total": mem.peak_pss_mb,
        "peak_processes": mem.peak_processes,
        "per_message_cpu_ms": {k: v["cpu_ms"] for k, v in messages.items()},
        "per_message_wall_ms": {k: v["wall_ms"] for k, v in messages.items()},
        "messages_by_stage": {k: v["n"] for k, v in messages.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[20, 50, 100])
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
        order=sorted({20, 50, 100, *args.clients}),
    )
    for r in rows:  # rows kept from runs before these keys were renamed
        r.setdefault("test_hr10_deploy", r.pop("deploy_test_hr10", None))
        r.setdefault("test_hr10_sim", r.pop("sim_test_hr10", None))
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
        "| test HR@10 (deploy / sim) | federation start s | peak memory MB (PSS / RSS) |",
        "|---:|---:|---:|---:|---:|---|---|---|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['rounds']} | {r['deploy_round_s']:.1f} "
            f"| {r['sim_round_s']:.2f} | {r['deploy_round_s'] / r['sim_round_s']:.0f}x "
            f"| {r['deploy_up_per_client'] / 1024:.1f} / {r['sim_up_per_client'] / 1024:.1f} "
            f"| {r['deploy_down_per_client'] / 1024:.1f} / {r['sim_down_per_client'] / 1024:.1f} "
            f"| {r['test_hr10_deploy']:.4f} / {r['test_hr10_sim']:.4f} | {r['start_s']:.0f} "
            f"| {r.get('peak_pss_mb_total', 0):.0f} / {r.get('peak_rss_mb_total', 0):.0f} |"
        )
    lines += ["", "Per ClientApp process (median ms, CPU / wall, from its fork to its exit):", ""]
    for r in rows:
        cells = ", ".join(
            f"{k} {r['per_message_cpu_ms'][k]:.0f} / {r['per_message_wall_ms'][k]:.0f}"
            for k in r.get("per_message_cpu_ms", {})
        )
        lines.append(f"- {r['clients']} clients: {cells}")
    lines += [
        "",
        "Where a deployed round's time goes: Flower answers each message with its own "
        "ClientApp process, here forked from fedrec's warm server (fedrec.deploy.warm_exec), "
        "so no process imports Python libraries; an idle SuperNode still polls for messages "
        "every 3 s (fixed in Flower 1.42) and a SecAgg+ round is four exchanges. "
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
