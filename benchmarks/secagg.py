"""SecAgg+ cost of one round: client compute, server compute and bytes, against Flower; and
how often rounds complete at a dropout rate with the derived graph degree and threshold.

    python benchmarks/secagg.py [--clients 1000 --params 100000 --dropout 0.3 0.1]
                                [--simulate 1000 6040 --sim-rounds 1000] [--neighbours K]
                                [--max-dropout G] [--quick] [--flower-python PATH] [--out DIR]

Parameters: k and t are derived for each round size from the design dropout rate (default:
the dropout + 0.05, at least 0.1, as a run's ``privacy.secagg.max_dropout``), 1% colluding
clients, a 1e-6 target abort probability and 2^-40 security (``fedrec.privacy.secagg.params``,
Bell et al. 2020 sec. 4); --neighbours sets k by hand. Completion: for each dropout and each
--simulate size, --sim-rounds rounds of the dropout and share-holder process (no
cryptography: who drops, and whether every survivor's seed and every dropped client's mask key
keep t surviving holders), with the derived pair and with the previous default
(k = 2 ceil(log2 n), t = floor((k + 1) / 2) + 1); the predicted abort probability (a union
bound) is printed next to the measured one.

Cost (for each dropout): 1,000 clients, a 100,000-parameter update, the dropout fraction of the
clients drop after key sharing and never upload (the costliest dropout for the server: it
rebuilds their mask keys and every pairwise mask they shared with an uploader), ring Z_2^32.
Every client runs the real cryptography in this process, one after the other; a client's
compute is its time across all four stages (parsing, crypto, quantization, masking, encoding),
the median taken over the clients that finished the round. The server's compute is timed
separately. Targets: at 30% dropout median client <= 40 ms, server <= 4 s.

Flower: its SecAgg+ (flwr 1.42, the legacy ``secaggplus_mod`` client functions and the
``SecAggPlusWorkflow`` server logic, re-run in-process without the gRPC grid) is timed in the same
setting when ``flwr`` imports here. flwr 1.42 pins rich < 15 and typer 0.20, older than this
project's, so it does not go into the project venv; make a separate one and point to it:

    python3.11 -m venv /tmp/flwr-venv && /tmp/flwr-venv/bin/pip install flwr==1.42.0 numpy
    python benchmarks/secagg.py --flower-python /tmp/flwr-venv/bin/python

(this script re-runs itself there with --flower-only; that mode imports nothing from fedrec),
for the first dropout only. Without either, the Flower figures are left out and the markdown
says so.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
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


def _config(args: argparse.Namespace, dropout: float) -> Any:
    from fedrec.federated.configure import default_max_dropout
    from fedrec.privacy.secagg import SecAggConfig

    design = default_max_dropout(dropout) if args.max_dropout is None else args.max_dropout
    return SecAggConfig(neighbours=args.neighbours, max_dropout=max(design, dropout))


def previous_pair(n: int) -> tuple[int, int]:
    """The former default, whatever the dropout: k = 2 ceil(log2 n), t = floor((k+1)/2) + 1."""
    from fedrec.privacy.secagg.graph import valid_neighbours

    k = valid_neighbours(n, 2 * math.ceil(math.log2(max(n, 2))))
    return k, min(k + 1, (k + 1) // 2 + 1)


def completion(args: argparse.Namespace, dropout: float, n: int) -> list[dict[str, Any]]:
    """Simulated completion at this dropout and size, derived pair and previous default."""
    from fedrec.privacy.secagg.params import abort_probability, simulate_completion

    derived = _config(args, dropout).analysis(n)
    rows = []
    for pair, (k, t) in (("derived", (derived.k, derived.t)), ("previous", previous_pair(n))):
        rows.append(
            {
                "pair": pair,
                "clients": n,
                "dropout_fraction": dropout,
                "max_dropout": derived.dropout,
                "neighbours": k,
                "threshold": t,
                "predicted_failure": abort_probability(n, k, t, dropout),
                "predicted_failure_at_max_dropout": abort_probability(n, k, t, derived.dropout),
                "measured_completion": simulate_completion(
                    n, k, t, dropout, args.sim_rounds, seed=args.seed
                ),
                "sim_rounds": args.sim_rounds,
            }
        )
    return rows


def measure_fedrec(n: int, dim: int, dropout: float, config: Any, seed: int) -> dict[str, Any]:
    from fedrec.privacy.secagg import SecAggAbort, SecAggSession

    x = _inputs(dim, seed)
    drop = set(_dropped(n, dropout, seed))
    t0 = time.perf_counter()
    session = SecAggSession(range(n), dim, config, 1, seed)
    expected = np.zeros(dim)
    for c in range(n):
        if c not in drop:
            session.submit(c, x[c % N_BASE])
            expected += x[c % N_BASE]
    p = session.params
    try:
        result = session.finish(dropped=drop)
    except SecAggAbort as err:
        return {
            "clients": n,
            "dropout_fraction": len(drop) / n,
            "neighbours": p.k,
            "threshold": p.t,
            "aborted": str(err),
        }
    wall_s = time.perf_counter() - t0
    finished = [c for c in range(n) if c not in drop]
    client_ms = np.array([session.client_seconds[c] for c in finished]) * 1e3
    traffic = session.bytes_per_client
    up = np.array([traffic[c].up for c in finished])
    down = np.array([traffic[c].down for c in finished])
    analysis = config.analysis(n)
    from fedrec.privacy.secagg.params import abort_probability

    return {
        "clients": n,
        "params": dim,
        "dropped": len(drop),
        "dropout_fraction": len(drop) / n,
        "max_dropout": analysis.dropout,
        "neighbours": p.k,
        "threshold": p.t,
        "predicted_failure": abort_probability(n, p.k, p.t, dropout),
        "predicted_failure_at_max_dropout": analysis.failure,
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


def measure_flower(
    args: argparse.Namespace, dropout: float, k: int, t: int
) -> tuple[dict[str, Any] | None, str]:
    """Flower's figures and a sentence on where they came from (or why they are missing)."""
    setting = (args.clients, args.params, dropout, k, t, args.seed)
    if importlib.util.find_spec("flwr") is not None:
        return flower_round(*setting), "Flower timed in this interpreter."
    python = args.flower_python or os.environ.get("FEDREC_FLOWER_PYTHON")
    if not python:
        return None, (
            "Flower is not installed here, so it was not compared (see the module docstring "
            "for the separate venv and `--flower-python`)."
        )
    cmd = [python, __file__, "--flower-only", "--clients", str(args.clients)]
    cmd += ["--params", str(args.params), "--dropout", str(dropout)]
    cmd += ["--neighbours", str(k), "--threshold-count", str(t), "--seed", str(args.seed)]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures, f"Flower timed in a separate venv (`{python}`), same machine and setting."


def _fmt(p: float) -> str:
    return "0" if p == 0 else f"{p:.1e}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--params", type=int, default=100_000)
    ap.add_argument("--dropout", type=float, nargs="+", default=[0.3, 0.1])
    ap.add_argument("--neighbours", type=int, default=None, help="k by hand; default derived")
    ap.add_argument("--max-dropout", type=float, default=None, help="design dropout rate")
    ap.add_argument("--simulate", type=int, nargs="+", default=None, help="default: clients 6040")
    ap.add_argument("--sim-rounds", type=int, default=1000)
    ap.add_argument("--no-crypto", action="store_true", help="completion simulation only")
    ap.add_argument(
        "--crypto-dropout", type=float, nargs="+", default=None, help="default: every --dropout"
    )
    ap.add_argument("--no-flower", action="store_true", help="skip Flower even if installed")
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
        out = flower_round(args.clients, args.params, args.dropout[0], k, t, args.seed)
        print(json.dumps(out))
        return 0

    import warnings

    from fedrec.privacy.secagg.params import SecAggParamsWarning
    from fedrec.report.machine import describe_machine, machine_markdown
    from fedrec.utils.atomic import atomic_write_text

    warnings.simplefilter("ignore", SecAggParamsWarning)  # the tables show what it would say
    sizes = args.simulate or sorted({args.clients, 6040})
    settings = [row for g in args.dropout for n in sizes for row in completion(args, g, n)]
    crypto: list[dict[str, Any]] = []
    flower, flower_note = None, "Flower was not run (--no-crypto or --no-flower)."
    if not args.no_crypto:
        for g in args.dropout if args.crypto_dropout is None else args.crypto_dropout:
            crypto.append(measure_fedrec(args.clients, args.params, g, _config(args, g), args.seed))
        first = crypto[0]
        if "aborted" not in first and not args.no_flower:
            flower, flower_note = measure_flower(
                args, first["dropout_fraction"], first["neighbours"], first["threshold"]
            )
    m = describe_machine()
    command = shlex.join(["python", "benchmarks/secagg.py", *sys.argv[1:]])
    lines = [
        "# SecAgg+ secure aggregation: parameters, completion and one round",
        "",
        f"Command: `{command}`. k and t derived per round size (design dropout: the dropout "
        "+ 0.05, at least 0.1; 1% colluding clients; target abort probability 1e-6; 2^-40 "
        "security; Bell et al. 2020 sec. 4, `fedrec.privacy.secagg.params`), against the "
        "previous default k = 2 ceil(log2 n), t = floor((k + 1) / 2) + 1.",
        "",
        f"## Completion over {args.sim_rounds} simulated rounds",
        "",
        "Clients drop independently after key sharing; a round completes when every "
        "survivor's self-mask seed and every dropped client's mask key keep t surviving "
        "holders. Predicted: the union bound of the analysis at the simulated dropout.",
        "",
        "| clients | dropout | pair | k | t | predicted abort | measured abort "
        "| rounds completed |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in settings:
        lines.append(
            f"| {r['clients']} | {r['dropout_fraction']:.0%} | {r['pair']} | {r['neighbours']} "
            f"| {r['threshold']} | {_fmt(r['predicted_failure'])} "
            f"| {_fmt(1 - r['measured_completion'])} | {r['measured_completion']:.1%} |"
        )
    if crypto:
        lines += [
            "",
            f"## One cryptographic round: {args.clients} clients x {args.params:,} values",
            "",
            "The dropout fraction of the clients drop after key sharing and never upload. All "
            "clients and the server run in one process, in turn; ring Z_2^32.",
            "",
            "| implementation | dropout | k | t | median client ms | p90 client ms | server s "
            "| whole round s | up KiB/client | down KiB/client | max abs error |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c in crypto:
            if "aborted" in c:
                lines.append(
                    f"| fedrec | {c['dropout_fraction']:.0%} | {c['neighbours']} "
                    f"| {c['threshold']} | aborted: {c['aborted']} | | | | | | |"
                )
                continue
            bpc = c["bytes_per_client"]
            lines.append(
                f"| fedrec | {c['dropout_fraction']:.0%} | {c['neighbours']} | {c['threshold']} "
                f"| {c['client_ms_median']:.1f} | {c['client_ms_p90']:.1f} | {c['server_s']:.2f} "
                f"| {c['round_s']:.1f} | {bpc['up'] / 1024:.1f} | {bpc['down'] / 1024:.1f} "
                f"| {c['max_abs_error']:.1e} |"
            )
        if flower is not None:
            first = crypto[0]
            lines.append(
                f"| Flower {flower['flwr_version']} | {first['dropout_fraction']:.0%} "
                f"| {first['neighbours']} | {first['threshold']} "
                f"| {flower['flower_client_ms_median']:.1f} | | {flower['flower_server_s']:.2f} "
                f"| {flower['flower_round_s']:.1f} | | | {flower['flower_max_abs_error']:.1e} |"
            )
        at30 = [c for c in crypto if "aborted" not in c and abs(c["dropout_fraction"] - 0.3) < 1e-9]
        if at30:
            c = at30[0]
            met = c["client_ms_median"] <= 40 and c["server_s"] <= 4
            lines += [
                "",
                f"Targets at 30% dropout (median client <= 40 ms, server <= 4 s): "
                f"{'met' if met else 'NOT met'}. The max abs error is against the plaintext sum "
                f"of the included clients (quantization step {c['quantization_step']:.1e}).",
            ]
        lines += ["", flower_note]
    lines += ["", machine_markdown(m), ""]
    md = "\n".join(lines)
    result: dict[str, Any] = {"settings": settings, "crypto_rounds": crypto}
    if crypto and "aborted" not in crypto[0]:
        ours = crypto[0]
        result |= {
            key: ours[key]
            for key in (
                "clients",
                "params",
                "dropout_fraction",
                "neighbours",
                "threshold",
                "predicted_failure",
                "client_ms_median",
                "client_ms_p90",
                "server_s",
                "round_s",
                "bytes_per_client",
                "max_abs_error",
            )
        }
        match = [
            r
            for r in settings
            if r["pair"] == "derived"
            and r["clients"] == ours["clients"]
            and r["dropout_fraction"] == ours["dropout_fraction"]
        ]
        if match:
            result["measured_completion"] = match[0]["measured_completion"]
    if flower is not None:
        ours = crypto[0]
        result |= {key: flower[key] for key in flower if key.startswith("flower_")}
        result["flwr_version"] = flower["flwr_version"]
        result["flower_ratio_round"] = flower["flower_round_s"] / ours["round_s"]
        result["flower_ratio_client"] = flower["flower_client_ms_median"] / ours["client_ms_median"]
        result["flower_ratio_server"] = flower["flower_server_s"] / ours["server_s"]
    result["command"] = command
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        args.out / "secagg.json",
        json.dumps({**result, "flower": flower, "machine": m}, indent=2) + "\n",
    )
    atomic_write_text(args.out / "secagg.md", md)
    print(md)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
