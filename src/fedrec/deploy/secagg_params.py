"""The public parameters of one SecAgg+ round, as the server announces them in each message.

Server and clients rebuild the same :class:`~fedrec.privacy.secagg.config.RoundParams` (graph,
threshold, quantizer, session id) from these fields (k and t, when not set by hand, derived
from the same dropout and collusion model); a client whose stored round state was made
for other parameters refuses to continue (the session ids differ). The server model, which
decides how small t may be, is the client's own: when it starts a round (``held``), a client
refuses an announcement that names another, so a server cannot weaken the guard by itself.
"""

from __future__ import annotations

from fedrec.deploy.payload import Meta
from fedrec.privacy.secagg.config import RoundParams, SecAggConfig
from fedrec.privacy.secagg.params import SERVER_MODELS, ServerModel

MAX_CLIENTS = 100_000


def round_params(meta: Meta, round_: int, held: ServerModel | None = None) -> RoundParams:
    """The round's parameters; ``held``: the server model of the configuration this client
    holds, which the announcement must name (None: the stages after the first, bound to it by
    the session id, whose hash covers k and t)."""
    ids = meta.get("secagg/ids")
    if not isinstance(ids, list) or not ids or len(ids) > MAX_CLIENTS:
        raise ValueError("secagg/ids must be a non-empty list of client ids")
    seed = meta.get("secagg/seed")
    if not isinstance(seed, bytes) or len(seed) < 16:
        raise ValueError("secagg/seed must be at least 16 random bytes")
    model = meta.get("secagg/server_model")
    if model not in SERVER_MODELS:
        raise ValueError(f"secagg/server_model must be one of {', '.join(SERVER_MODELS)}")
    if held is not None and model != held:
        raise ValueError(
            f"the server announces SecAgg+ parameters for a {model!r} server, but this "
            f"client's configuration says privacy.secagg.server_model = {held!r}"
        )
    k = int(meta["secagg/neighbours"])
    threshold = float(meta["secagg/threshold"])
    config = SecAggConfig(
        neighbours=None if k < 0 else k,
        threshold=None if threshold < 0 else threshold,
        max_dropout=float(meta["secagg/max_dropout"]),
        collusion=float(meta["secagg/collusion"]),
        target_failure=float(meta["secagg/target_failure"]),
        security_bits=float(meta["secagg/security_bits"]),
        server_model="semi-honest" if model == "semi-honest" else "lies-about-dropouts",
        clip=float(meta["secagg/clip"]),
        bits=int(meta["secagg/bits"]),
    )
    return RoundParams.create([int(c) for c in ids], int(meta["secagg/dim"]), config, round_, seed)
