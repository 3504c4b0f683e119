"""Everything the protocol can raise derives from ``SecAggError``, so a caller that runs a round
can catch one type and still tell a bad configuration from an aborted round."""

from __future__ import annotations

__all__ = [
    "ClientExcludedError",
    "MalformedMessageError",
    "RoundMismatchError",
    "SecAggAbort",
    "SecAggConfigError",
    "SecAggError",
    "SecAggInputError",
    "StageError",
    "TooFewInputsError",
    "UnknownClientError",
]


class SecAggError(Exception):
    """Base class of every secure-aggregation error."""


class SecAggConfigError(SecAggError, ValueError):
    """The round cannot be set up as asked (e.g. the ring would overflow)."""


class SecAggInputError(SecAggError, ValueError):
    """A client's input vector has the wrong shape or non-finite values."""


class MalformedMessageError(SecAggError):
    """A message does not parse: bad magic, version, lengths, duplicates or field values."""


class StageError(SecAggError):
    """A message of the wrong kind for the current stage, or a call out of order."""


class RoundMismatchError(SecAggError):
    """A message belongs to another round (a replay or a mixed-up channel)."""


class UnknownClientError(SecAggError):
    """A message names a client that is not in the round, or not where it may appear."""


class ClientExcludedError(SecAggError):
    """The client was dropped from the round (e.g. a neighbour rejected its share)."""


class SecAggAbort(SecAggError):  # noqa: N818 - the name the simulator and the issue use
    """The round cannot complete (too few survivors to reconstruct); nothing is returned."""


class TooFewInputsError(SecAggAbort):
    """Fewer masked inputs than the round's minimum (distributed DP's m): the round stops
    before unmasking, so no under-noised sum is ever revealed."""
