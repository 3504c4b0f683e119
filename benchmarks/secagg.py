"""SecAgg+ cost of one round: client compute, server compute and bytes, against Flower.

    python benchmarks/secagg.py [--clients 1000 --params 100000 --dropout 0.1 --neighbours K]
                                [--quick] [--flower-python PATH] [--out DIR]

Setting (secure-aggregation issue): 1,000 clients, a 100,000-parameter update, 10% of the clients
drop after key sharing and never upload (the costliest dropout for the server: it rebuilds their
mask keys and every pairwise mask they shared with an uploader), ring Z_2^32, k = 2 ceil(log2 n)
unless --neighbours is given. Every client runs the real cryptography in this process, one after
the other; a client's compute is its time across all four stages (parsing, crypto, quantization,
masking, encoding), the median taken over the clients that finished the round. The server's
compute is timed separately. Targets: median client <= 20 ms, server <= 2 s.

Flower: its SecAgg+ (flwr 1.42, the legacy ``secaggplus_mod`` client functions and the
``SecAggPlusWorkflow`` server logic, re-run in-process without the gRPC grid) is timed in the same
setting when ``flwr`` imports here. flwr 1.42 pins rich < 15 and typer 0.20, older than this
project's, so it does not go into the project venv; make a separate one and point to it:

    python3.11 -m venv /tmp/flwr-venv && /tmp/flwr-venv/bin/pip install flwr==1.42.0 numpy
    python benchmarks/secagg.py --flower-python /tmp/flwr-venv/bin/python

(this script re-runs itself there with --flower-only; that mode imports nothing from fedrec).
Without either, the Flower figures are left out and the markdown says so.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

CLIP = 1.0
N_BASE = 8  # distinct input vectors, cycled over clients (1,000 x 100k floats would be 800 MB)


def _inputs(dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-CLIP, CLIP, size=(N_BASE, dim)).astype(np.float32)


def _dropped(n: int, fraction: float, seed: int) -> list[int]:
    rng = np.random.default_rng(seed + 1)
    return sorted(rng.choice(n, size=round(fraction * n), replace=False).tolist())


def _resolved_k(n: int, neighbours: int | None) -> tuple[int, int]:
    from fedrec.privacy.secagg import SecAggConfig

    cfg = SecAggConfig(neighbours=neighbours)
    return cfg.degree(n), cfg.reconstruction_threshold(n)


def measure_fedrec(
    n: int, dim: int, dropout: float, neighbours: int | None, seed: int
) -> dict[str, Any]:
    from fedrec.privacy.secagg import SecAggConfig, SecAggSession

    x = _inputs(dim, seed)
    drop = set(_dropped(n, dropout, seed))
    t0 = time.perf_counter()
    session = SecAggSession(range(n), dim, SecAggConfig(neighbours=neighbours), 1, seed)
    expected = np.zeros(dim)
    for c in range(n):
        if c not in drop:
            session.submit(c, x[c % N_BASE])
            expected += x[c % N_BASE]
    result = session.finish(dropped=drop)
    wall_s = time.perf_counter() - t0
    finished = [c for c in range(n) if c not in drop]
    client_ms = np.array([session.client_seconds[c] for c in finished]) * 1e3
    traffic = session.bytes_per_client
    up = np.array([traffic[c].up for c in finished])
    down = np.array([traffic[c].down for c in finished])
    p = session.params
    return {
        "clients": n,
        "params": dim,
        "dropped": len(drop),
        "dropout_fraction": len(drop) / n,
        "neighbours": p.k,
        "threshold": p.t,
        "bits": p.quantizer.bits,
        "client_ms_median": float(np.median(client_ms)),
        "client_ms_p90": float(np.percentile(client_ms, 90)),
        "client_ms_max": float(client_ms.max()),
        "server_s": session.server_seconds,
        "round_s": wall_s,
        "bytes_per_client": {"up": int(np.median(up)), "down": int(np.median(down))},
        "max_abs_error": float(np.max(np.abs(result.total - expected))),
        "quantization_step": p.quantizer.step,
        "included": len(result.included),
    }


def flower_round(n: int, dim: int, dropout: float, k: int, t: int, seed: int) -> dict[str, Any]:
    """Flower 1.42's SecAgg+ in-process: the client mod's stage functions and the workflow's
    routing and unmasking code, with the same graph shape (ring of k + 1 incl. self), threshold,
    dropouts and a ring of 2^32 with the same no-overflow quantization range."""
    # Flower reads this once, when first imported: no usage reports leave the machine.
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    import flwr
    from flwr.client.mod.secure_aggregation.secaggplus_mod import (
        SecAggPlusState,
        _collect_masked_vectors,
        _setup,
        _share_keys,
        _unmask,
    )
    from flwr.common import bytes_to_ndarray, ndarrays_to_parameters
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_extract,
        get_parameters_shape,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize
    from flwr.common.secure_aggregation.secaggplus_constants import Key
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

    mod_range = 2**32
    target = (mod_range - 1) // n  # n values at the top of the range cannot wrap
    x = _inputs(dim, seed)
    drop = set(_dropped(n, dropout, seed))
    nids = list(range(1, n + 1))
    client_s = dict.fromkeys(nids, 0.0)
    server_s = 0.0
    t0 = time.perf_counter()

    def on_client(nid: int, fn: Any, *args: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args)
        client_s[nid] += time.perf_counter() - start
        return out

    # Stage 0 (setup): the workflow's ring over shuffled ids, num_shares = k + 1.
    s0 = time.perf_counter()
    order = np.random.default_rng(seed).permutation(nids).tolist()
    half = (k + 1) >> 1
    neighbours = {
        nid: {order[(i + o) % n] for o in range(-half, half + 1)} for i, nid in enumerate(order)
    }
    setup = {
        Key.SAMPLE_NUMBER: n,
        Key.SHARE_NUMBER: k + 1,
        Key.THRESHOLD: t,
        Key.CLIPPING_RANGE: CLIP,
        Key.TARGET_RANGE: target,
        Key.MOD_RANGE: mod_range,
        Key.MAX_WEIGHT: 1.0,
    }
    server_s += time.perf_counter() - s0
    states: dict[int, Any] = {}
    keys: dict[int, tuple[bytes, bytes]] = {}
    for nid in nids:
        state = SecAggPlusState()
        state.nid = nid
        res = on_client(nid, _setup, state, dict(setup))
        states[nid] = state
        keys[nid] = (res[Key.PUBLIC_KEY_1], res[Key.PUBLIC_KEY_2])
    # Stage 1 (share keys).
    fwd_ct: dict[int, list[bytes]] = {nid: [] for nid in nids}
    fwd_src: dict[int, list[int]] = {nid: [] for nid in nids}
    for nid in nids:
        cfg: dict[str, Any] = {str(v): list(keys[v]) for v in neighbours[nid]}
        res = on_client(nid, _share_keys, states[nid], cfg)
        s0 = time.perf_counter()
        for dst, ct in zip(res[Key.DESTINATION_LIST], res[Key.CIPHERTEXT_LIST], strict=True):
            fwd_ct[dst].append(ct)
            fwd_src[dst].append(nid)
        server_s += time.perf_counter() - s0
    # Stage 2 (collect masked vectors): the dropped never upload.
    active = [nid for nid in nids if nid - 1 not in drop]
    masked: list[Any] | None = None
    expected = np.zeros(dim)
    for nid in active:
        vec = x[(nid - 1) % N_BASE]
        expected += vec
        params = ndarrays_to_parameters([vec])
        cfg = {Key.CIPHERTEXT_LIST: fwd_ct[nid], Key.SOURCE_LIST: fwd_src[nid]}
        res = on_client(nid, _collect_masked_vectors, states[nid], cfg, 1, params)
        s0 = time.perf_counter()
        arrays = [bytes_to_ndarray(b) for b in res[Key.MASKED_PARAMETERS]]
        masked = arrays if masked is None else parameters_addition(masked, arrays)
        server_s += time.perf_counter() - s0
    assert masked is not None
    s0 = time.perf_counter()
    masked = parameters_mod(masked, mod_range)
    active_set, dead_set = set(active), set(nids) - set(active)
    server_s += time.perf_counter() - s0
    # Stage 3 (unmask).
    collected: dict[int, list[bytes]] = {nid: [] for nid in nids}
    for nid in active:
        cfg = {
            Key.ACTIVE_NODE_ID_LIST: list(neighbours[nid] & active_set),
            Key.DEAD_NODE_ID_LIST: list(neighbours[nid] & dead_set),
        }
        res = on_client(nid, _unmask, states[nid], cfg)
        s0 = time.perf_counter()
        for owner, share in zip(res[Key.NODE_ID_LIST], res[Key.SHARE_LIST], strict=True):
            collected[owner].append(share)
        server_s += time.perf_counter() - s0
    s0 = time.perf_counter()
    shapes = get_parameters_shape(masked)
    for nid, share_list in collected.items():  # SecAggPlusWorkflow.unmask_stage, verbatim logic
        if len(share_list) < t:
            raise RuntimeError(f"Flower: not enough shares for {nid}")
        secret = combine_shares(share_list)
        if nid in active_set:
            masked = parameters_subtraction(masked, pseudo_rand_gen(secret, mod_range, shapes))
        else:
            for v in neighbours[nid] - {nid}:
                shared = generate_shared_key(
                    bytes_to_private_key(secret), bytes_to_public_key(keys[v][0])
                )
                mask = pseudo_rand_gen(shared, mod_range, shapes)
                if nid > v:
                    masked = parameters_addition(masked, mask)
                else:
                    masked = parameters_subtraction(masked, mask)
    recon = parameters_mod(masked, mod_range)
    q_total, recon = factor_extract(recon)
    total = dequantize(recon, CLIP, target)[0]
    total += -(len(active) - 1) * CLIP
    total *= target / q_total  # Flower returns the mean
    server_s += time.perf_counter() - s0
    wall_s = time.perf_counter() - t0
    client_ms = np.array([client_s[nid] for nid in active]) * 1e3
    return {
        "flwr_version": flwr.__version__,
        "flower_client_ms_median": float(np.median(client_ms)),
        "flower_server_s": server_s,
        "flower_round_s": wall_s,
        "flower_max_abs_error": float(np.max(np.abs(total * len(active) - expected))),
    }


def measure_flower(args: argparse.Namespace, k: int, t: int) -> tuple[dict[str, Any] | None, str]:
    """Flower's figures and a sentence on where they came from (or why they are missing)."""
    setting = (args.clients, args.params, args.dropout, k, t, args.seed)
    if importlib.util.find_spec("flwr") is not None:
        return flower_round(*setting), "Flower timed in this interpreter."
    python = args.flower_python or os.environ.get("FEDREC_FLOWER_PYTHON")
    if not python:
        return None, (
            "Flower is not installed here, so it was not compared (see the module docstring "
            "for the separate venv and `--flower-python`)."
        )
    cmd = [python, __file__, "--flower-only", "--clients", str(args.clients)]
    cmd += ["--params", str(args.params), "--dropout", str(args.dropout)]
    cmd += ["--neighbours", str(k), "--threshold-count", str(t), "--seed", str(args.seed)]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures, f"Flower timed in a separate venv (`{python}`), same machine and setting."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--params", type=int, default=100_000)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--neighbours", type=int, default=None, help="k; default 2 ceil(log2 n)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="100 clients x 10,000 parameters")
    ap.add_argument("--flower-python", default=None, help="interpreter of a venv with flwr")
    ap.add_argument("--flower-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threshold-count", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    if args.quick:
        args.clients, args.params = 100, 10_000
    if args.flower_only:  # runs under the Flower venv: no fedrec imports on this path
        if args.neighbours is None or args.threshold_count is None:
            ap.error("--flower-only needs --neighbours and --threshold-count")
        k, t = args.neighbours, args.threshold_count
        print(json.dumps(flower_round(args.clients, args.params, args.dropout, k, t, args.seed)))
        return 0

    from fedrec.report.machine import describe_machine, machine_markdown
    from fedrec.utils.atomic import atomic_write_text

    k, t = _resolved_k(args.clients, args.neighbours)
    ours = measure_fedrec(args.clients, args.params, args.dropout, k, args.seed)
    flower, flower_note = measure_flower(args, k, t)
    m = describe_machine()
    command = shlex.join(["python", "benchmarks/secagg.py", *sys.argv[1:]])
    bpc = ours["bytes_per_client"]
    lines = [
        "# SecAgg+ secure aggregation: one round",
        "",
        f"Command: `{command}`. {ours['clients']} clients, {ours['params']:,} parameters, "
        f"{ours['dropped']} ({ours['dropout_fraction']:.0%}) drop after key sharing and never "
        f"upload; k = {ours['neighbours']} neighbours, t = {ours['threshold']}, "
        f"ring Z_2^{ours['bits']}. All clients and the server run in one process, in turn.",
        "",
        "| implementation | median client ms | p90 client ms | server s | whole round s "
        "| up KiB/client | down KiB/client | max abs error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| fedrec | {ours['client_ms_median']:.1f} | {ours['client_ms_p90']:.1f} "
        f"| {ours['server_s']:.2f} | {ours['round_s']:.1f} | {bpc['up'] / 1024:.1f} "
        f"| {bpc['down'] / 1024:.1f} | {ours['max_abs_error']:.1e} |",
    ]
    result: dict[str, Any] = {
        "clients": ours["clients"],
        "params": ours["params"],
        "dropout_fraction": ours["dropout_fraction"],
        "neighbours": ours["neighbours"],
        "threshold": ours["threshold"],
        "client_ms_median": ours["client_ms_median"],
        "client_ms_p90": ours["client_ms_p90"],
        "server_s": ours["server_s"],
        "round_s": ours["round_s"],
        "bytes_per_client": bpc,
        "max_abs_error": ours["max_abs_error"],
    }
    if flower is not None:
        lines.append(
            f"| Flower {flower['flwr_version']} | {flower['flower_client_ms_median']:.1f} | "
            f"| {flower['flower_server_s']:.2f} | {flower['flower_round_s']:.1f} | | "
            f"| {flower['flower_max_abs_error']:.1e} |"
        )
        result |= {key: flower[key] for key in flower if key.startswith("flower_")}
        result["flwr_version"] = flower["flwr_version"]
        result["flower_ratio_round"] = flower["flower_round_s"] / ours["round_s"]
        result["flower_ratio_client"] = flower["flower_client_ms_median"] / ours["client_ms_median"]
        result["flower_ratio_server"] = flower["flower_server_s"] / ours["server_s"]
    targets_met = ours["client_ms_median"] <= 20 and ours["server_s"] <= 2
    lines += [
        "",
        f"Targets (median client <= 20 ms, server <= 2 s): "
        f"{'met' if targets_met else 'NOT met'}. The max abs error is against the plaintext "
        f"sum of the {ours['included']} included clients (quantization step "
        f"{ours['quantization_step']:.1e}).",
        "",
        flower_note
        + (
            f" Flower / fedrec: whole round {result['flower_ratio_round']:.1f}x, median "
            f"client {result['flower_ratio_client']:.1f}x, server "
            f"{result['flower_ratio_server']:.1f}x. Flower's masks come from numpy's "
            "RandomState seeded with 32 bits, not a cryptographic PRG, and it uses P-384 "
            "ECDH and Fernet; the comparison is of cost, not of equal security."
            if flower is not None
            else ""
        ),
        "",
        machine_markdown(m),
        "",
    ]
    md = "\n".join(lines)
    result["command"] = command
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        args.out / "secagg.json",
        json.dumps({**result, "fedrec": ours, "flower": flower, "machine": m}, indent=2) + "\n",
    )
    atomic_write_text(args.out / "secagg.md", md)
    print(md)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
