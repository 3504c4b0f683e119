"""The public parameters of one SecAgg+ round, as the server announces them in each message.

Server and clients rebuild the same :class:`~fedrec.privacy.secagg.config.RoundParams` (graph,
threshold, quantizer, session id) from these fields (k and t, when not set by hand, derived
from the same dropout and collusion model); a client whose stored round state was made
for other parameters refuses to continue (the session ids differ).
"""

from __future__ import annotations

from fedrec.deploy.payload import Meta
from fedrec.privacy.secagg.config import RoundParams, SecAggConfig

MAX_CLIENTS = 100_000


def round_params(meta: Meta, round_: int) -> RoundParams:
    ids = meta.get("secagg/ids")
    if not isinstance(ids, list) or not ids or len(ids) > MAX_CLIENTS:
        raise ValueError("secagg/ids must be a non-empty list of client ids")
    seed = meta.get("secagg/seed")
    if not isinstance(seed, bytes) or len(seed) < 16:
        raise ValueError("secagg/seed must be at least 16 random bytes")
    k = int(meta["secagg/neighbours"])
    threshold = float(meta["secagg/threshold"])
    config = SecAggConfig(
        neighbours=None if k < 0 else k,
        threshold=None if threshold < 0 else threshold,
        max_dropout=float(meta["secagg/max_dropout"]),
        collusion=float(meta["secagg/collusion"]),
        target_failure=float(meta["secagg/target_failure"]),
        security_bits=float(meta["secagg/security_bits"]),
        clip=float(meta["secagg/clip"]),
        bits=int(meta["secagg/bits"]),
    )
    return RoundParams.create([int(c) for c in ids], int(meta["secagg/dim"]), config, round_, seed)
