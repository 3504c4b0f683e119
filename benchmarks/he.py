"""CKKS (TenSEAL) aggregation cost: encrypt, upload size, homomorphic add, decrypt.

    python benchmarks/he.py [--out DIR] [--dim 100000] [--clients 100] [--quick]

Setting: N = 8192 (4096 slots per ciphertext), coefficient modulus [60, 40, 40, 60], scale
2^40; client vectors of ``--dim`` values drawn from N(0, 0.01^2) (the size of FedMF item
deltas). First the three ways TenSEAL can encrypt the vector are compared (best of
``--repeats``); then ``--clients`` clients go through ``fedrec.privacy.he.he_sum``: each
really encrypts and serialises its upload, the aggregator parses and adds it, the key holder
decrypts the sum. ``--quick`` uses 10 clients and one repeat. The last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts

from fedrec.privacy.he import HEClient, HEKeyHolder, he_sum
from fedrec.report.machine import describe_machine, machine_markdown
from fedrec.utils.atomic import atomic_write_text


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Silence file descriptor 1 (C++ output bypasses ``sys.stdout``)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def compare_encodings(client: HEClient, x: np.ndarray, repeats: int) -> dict[str, float]:
    """Seconds to encrypt ``x`` three ways; the module uses the per-chunk vectors."""
    ctx, s = client.context, client.slot_count
    n_ct = -(-x.size // s)
    padded = np.zeros(n_ct * s)
    padded[: x.size] = x
    # Batched tensor: the first axis goes into the slots, so shape (slots, n_ct).
    table = padded.reshape(n_ct, s).T

    def tensor() -> Any:
        return ts.ckks_tensor(ctx, ts.plain_tensor(table), batch=True)

    def single() -> Any:
        with quiet_stdout():  # its C++ code prints a "does not fit" warning on std::cout
            return ts.ckks_vector(ctx, x)

    return {
        "ckks_vector_per_chunk_s": best_of(lambda: client.encrypt(x), repeats),
        "ckks_tensor_batched_s": best_of(tensor, repeats),
        "ckks_vector_multi_ciphertext_s": best_of(single, repeats),
    }


def client_vectors(n: int, dim: int, seed: int) -> Iterator[np.ndarray]:
    """One vector at a time, so memory stays O(dim) for any number of clients."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield rng.normal(0.0, 0.01, size=dim)


def measure(dim: int, clients: int, repeats: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    holder = HEKeyHolder()
    keygen_s = time.perf_counter() - t0
    public = holder.public_context()
    t0 = time.perf_counter()
    client = HEClient(public)
    load_public_s = time.perf_counter() - t0
    x = next(client_vectors(1, dim, seed=123))
    encodings = compare_encodings(client, x, repeats)

    plain = np.zeros(dim)
    plain_s = 0.0  # the additions only, not drawing the vectors
    for v in client_vectors(clients, dim, seed=0):
        t0 = time.perf_counter()
        plain += v
        plain_s += time.perf_counter() - t0

    t0 = time.perf_counter()
    total, stats = he_sum(client_vectors(clients, dim, seed=0), key_holder=holder)
    round_wall_s = time.perf_counter() - t0
    err = np.abs(total - plain)
    server_s = stats.deserialize_s + stats.add_s + stats.decrypt_s
    return {
        "dim": dim,
        "clients": clients,
        "poly_modulus_degree": 8192,
        "coeff_mod_bit_sizes": [60, 40, 40, 60],
        "scale_bits": 40,
        "ciphertexts_per_client": stats.n_ciphertexts,
        "keygen_s": keygen_s,
        "public_context_bytes": len(public),
        "load_public_context_s": load_public_s,
        "encodings": encodings,
        "encrypt_s_per_client": stats.encrypt_s_per_client,
        "serialize_s_per_client": stats.serialize_s_per_client,
        "deserialize_s_per_client": stats.deserialize_s / clients,
        "add_s_per_client_vector": stats.add_s / clients,
        "decrypt_s": stats.decrypt_s,
        "bytes_per_client": stats.bytes_per_client,
        "bytes_per_value": stats.bytes_per_value,
        "plaintext_bytes_per_value": 4,
        "server_aggregation_s": server_s,
        "round_wall_s": round_wall_s,
        "plaintext_sum_s": plain_s,
        "max_abs_error": float(err.max()),
        "mean_abs_error": float(err.mean()),
        "max_rel_error_vs_sum_rms": float(err.max() / np.sqrt(np.mean(plain**2))),
    }


def markdown(r: dict[str, Any], command: str, m: dict[str, Any]) -> str:
    e = r["encodings"]
    n = r["clients"]
    return "\n".join(
        [
            "# Homomorphic aggregation (CKKS, TenSEAL)",
            "",
            f"Command: `{command}`. N = {r['poly_modulus_degree']} ({r['dim']:,} values = "
            f"{r['ciphertexts_per_client']} ciphertexts of 4096 slots), coefficient modulus "
            f"{r['coeff_mod_bit_sizes']}, scale 2^{r['scale_bits']}; values ~ N(0, 0.01^2).",
            "Every client really encrypts and serialises; the aggregator parses and adds; the",
            "key holder decrypts only the sum. Times are means over clients.",
            "",
            "| what | value |",
            "|---|---:|",
            f"| encrypt, per client | {r['encrypt_s_per_client']:.3f} s |",
            f"| serialise upload, per client | {r['serialize_s_per_client']:.3f} s |",
            f"| parse upload (aggregator), per client | {r['deserialize_s_per_client']:.3f} s |",
            f"| add one client vector (aggregator) | {r['add_s_per_client_vector'] * 1e3:.1f} ms |",
            f"| decrypt the sum (key holder) | {r['decrypt_s'] * 1e3:.1f} ms |",
            f"| upload per client | {r['bytes_per_client'] / 2**20:.2f} MiB |",
            f"| bytes per value | {r['bytes_per_value']:.1f} (float32: 4) |",
            f"| {n} clients: server parse + add + decrypt | {r['server_aggregation_s']:.2f} s |",
            f"| {n} clients: whole round, clients sequential | {r['round_wall_s']:.1f} s |",
            f"| {n} clients: plaintext sum (adds only) | {r['plaintext_sum_s'] * 1e3:.1f} ms |",
            f"| max abs error of the decrypted sum | {r['max_abs_error']:.2e} |",
            f"| ... relative to the sum's RMS | {r['max_rel_error_vs_sum_rms']:.2e} |",
            f"| key generation | {r['keygen_s'] * 1e3:.0f} ms |",
            f"| public context (no relin/Galois keys) | {r['public_context_bytes'] / 2**20:.2f}"
            " MiB |",
            "",
            f"Encrypting one vector of {r['dim']:,} values, best of the repeats:",
            "",
            "| encoding | seconds |",
            "|---|---:|",
            f"| `ckks_vector` per 4096-value chunk (used) | {e['ckks_vector_per_chunk_s']:.3f} |",
            f"| one batched `ckks_tensor` | {e['ckks_tensor_batched_s']:.3f} |",
            f"| one multi-ciphertext `ckks_vector` | {e['ckks_vector_multi_ciphertext_s']:.3f} |",
            "",
            machine_markdown(m),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--dim", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="10 clients, one repeat")
    args = ap.parse_args(argv)
    if args.dim < 1 or args.clients < 1 or args.repeats < 1:
        ap.error("--dim, --clients and --repeats must be >= 1")
    clients = 10 if args.quick else args.clients
    repeats = 1 if args.quick else args.repeats
    r = measure(args.dim, clients, repeats)
    m = describe_machine()
    command = shlex.join(["python", "benchmarks/he.py", *sys.argv[1:]])
    md = markdown(r, command, m)
    result = {**r, "command": command}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "he.json", json.dumps({**result, "machine": m}, indent=2) + "\n")
    atomic_write_text(args.out / "he.md", md)
    print(md)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
