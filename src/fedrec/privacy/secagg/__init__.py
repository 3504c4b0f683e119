"""SecAgg+ secure aggregation (Bell et al., CCS 2020) with the double masking of SecAgg
(Bonawitz et al., CCS 2017), on the ``cryptography`` package.

Protocol. Clients are placed on a public random k-regular graph (``graph``; k derived by
``params``). Stage 0: each client advertises two X25519 public keys, one to encrypt shares and
one to agree pairwise masks. Stage 1: each client Shamir-shares (t of its k + 1 neighbourhood)
its mask private key and a fresh self-mask seed with its neighbours, each share encrypted with
AES-256-GCM under an HKDF-SHA256 key agreed with that neighbour; the server forwards the
ciphertexts, and a recipient whose ciphertext fails authentication reports the sender, who is
dropped before anyone masks with it. Stage 2: each client quantizes its vector into Z_{2^bits}
(clip, fixed point, stochastic rounding) and adds an AES-CTR keystream of its seed plus +/- one
keystream per neighbour (the pairwise masks cancel in the sum); the server adds each upload into
one running sum. Stage 3: every client still online sends, for each neighbour, the share of its
seed if its input arrived, or of its mask key if it did not; the server rebuilds those secrets,
strips the masks and decodes the sum. Each stage is a message type with ``to_bytes`` and
``from_bytes`` (``messages``); ``SecAggClient`` and ``SecAggServer`` are state machines that
only exchange them; ``SecAggSession`` drives a whole round in-process for simulation.

What the sum covers. ``SecAggSession.finish(dropped)`` returns a ``SecAggResult``: ``total``
(float64) is the sum over ``included``, the clients whose masked input reached the server,
including those in ``dropped`` that submitted first (their self-masks are rebuilt from their
neighbours' shares, as in the paper; the server cannot take back an input already folded into
its O(dim) running sum). Clients that never submitted are not included; their pairwise masks
are rebuilt from the shares of their mask keys. Fewer than t surviving share holders for any
secret that is needed raises ``SecAggAbort`` and nothing is returned. With fewer masked
inputs than ``min_inputs`` (distributed DP's m) the server raises ``TooFewInputsError`` before
asking for any share, and each client, told the included set, refuses to unmask below its own
``min_inputs``.

Parameters. k and t are derived for each round size (``params``, Bell et al. sec. 4) from the
dropout rate to survive, the fraction of colluding clients, a target abort probability and a
security parameter; a hand-set k or threshold (t = floor(threshold * (k + 1)) + 1) is checked
against the same analysis and warns when it falls short. The fixed-point scale is the largest
for which n values in [-clip, clip] cannot wrap the ring (``quantize``): about 4.7e-7 x clip
per level with bits=32 and n=1000; an explicit ``scale`` that could overflow raises
``SecAggConfigError``.

Security: the semi-honest variant of SecAgg+ (honest-but-curious server; no signatures, no
consistency-check round). The server follows the protocol and tries to learn from what it sees;
it may collude with fewer than t members of any client's neighbourhood (Bell et al. show that a
random k-regular graph with k = O(log n) keeps that true with high probability when a bounded
fraction of all clients is corrupt; ``params`` bounds that probability by 2^-sigma for the
configured colluding fraction). The server then learns only the sum of the included clients'
quantized inputs, and the sets (who advertised, who shared keys, whose input arrived, who answered
unmasking). Each input is hidden by AES-CTR keystreams: a self-mask (whose seed is never rebuilt
for a client whose input arrived) and pairwise masks keyed by X25519 secrets. Shamir shares are
information-theoretically hiding below t, and the derived t is above half a neighbourhood
plus its colluders, so the holders never hand over enough shares to rebuild both of a client's
secrets; a client also refuses an unmasking request naming a neighbour as both survived and
dropped. Rebuilt secrets are checked (mask key against its public key, seed against a SHA-256
commitment sent in stage 0), so a corrupted share aborts the round instead of skewing the sum.
Not covered: a malicious server that lies about dropouts, shows clients inconsistent views of
who survived, or forges messages (that takes the malicious-secure variant, with signed
messages and a consistency round, which this package does not implement); malicious clients
that upload out-of-range values or make false complaints (denial of service); confidentiality
of the unmasking shares on the network (use TLS); timing side channels. The graph and the
session seed are public.
"""

from __future__ import annotations

from fedrec.privacy.secagg.client import SecAggClient
from fedrec.privacy.secagg.config import RoundParams, SecAggConfig
from fedrec.privacy.secagg.errors import (
    ClientExcludedError,
    MalformedMessageError,
    RoundMismatchError,
    SecAggAbort,
    SecAggConfigError,
    SecAggError,
    SecAggInputError,
    StageError,
    TooFewInputsError,
    UnknownClientError,
)
from fedrec.privacy.secagg.quantize import Quantizer
from fedrec.privacy.secagg.server import SecAggResult, SecAggServer
from fedrec.privacy.secagg.session import SecAggSession, Traffic, WireHook

__all__ = [
    "ClientExcludedError",
    "MalformedMessageError",
    "Quantizer",
    "RoundMismatchError",
    "RoundParams",
    "SecAggAbort",
    "SecAggClient",
    "SecAggConfig",
    "SecAggConfigError",
    "SecAggError",
    "SecAggInputError",
    "SecAggResult",
    "SecAggServer",
    "SecAggSession",
    "StageError",
    "TooFewInputsError",
    "Traffic",
    "UnknownClientError",
    "WireHook",
]
