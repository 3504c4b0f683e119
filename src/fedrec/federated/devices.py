"""Devices and simulated time: how fast each client computes and communicates, when it is
available, and how long a synchronous round with a deadline takes.

Every client gets a compute speed (examples per second), a down- and an up-link bandwidth
(bytes per second) and daily availability windows, drawn deterministically from the run seed
and a named profile, or read from a CSV trace. Speeds and bandwidths are log-normal, given by
their median and the ratio of their 90th to 10th percentile; availability is a set of daily
windows (seconds after midnight of one shared clock, repeated every day).

Where the profiles come from: FedScale (Lai et al., "FedScale: Benchmarking Model and System
Performance of Federated Learning at Scale", ICML 2022) publishes device traces (compute from AI
Benchmark, network from MobiPerf, availability of ~136k phones over a week) and summarises them
as a long-tailed compute and network spread of about an order of magnitude across devices and
a strongly diurnal availability with short sessions. The raw traces cannot be fetched here (no
network), so the profiles below are parametric distributions chosen to match those published
summaries, not fits to the traces; a real trace can be given as CSV (:func:`load_trace`).

- ``phones``: speed median 50 ex/s, P90/P10 = 10; down-link median 2.5 MB/s (20 Mbit/s),
  up-link median 0.6 MB/s, both P90/P10 = 20; an overnight charging session starting at
  N(22 h, 2 h) lasting log-normal median 4 h (P90/P10 = 4), and with probability 1/2 a short
  daytime session starting U(8 h, 18 h) lasting log-normal median 30 min (P90/P10 = 4).
- ``silos``: always on; speed median 5,000 ex/s, bandwidth median 100 MB/s, P90/P10 = 2.
- ``mixed``: 60 % phones, 30 % desktops (speed median 500 ex/s and 10 MB/s down, 5 MB/s up,
  P90/P10 = 4, on 8 h a day from U(7 h, 11 h)), 10 % silos.

Synchronous rounds with a deadline follow Bonawitz et al., "Towards Federated Learning at
Scale: System Design" (SysML 2019): select ``ceil(K * (1 + over_selection))`` available
clients, keep the first K to report, and treat the rest as dropouts.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

DAY_S = 86_400.0
HOUR_S = 3_600.0
PROFILES = ("none", "phones", "mixed", "silos", "trace")
_Z90 = 1.2815515655446004
"""Standard normal 90th percentile: a log-normal's P90/P10 ratio r has sigma = ln r / (2 z90)."""


def lognormal(rng: np.random.Generator, median: float, p90_over_p10: float, n: int) -> FloatArray:
    """``n`` draws of a log-normal with this median and ratio of 90th to 10th percentile."""
    sigma = math.log(p90_over_p10) / (2 * _Z90)
    return np.asarray(median * np.exp(sigma * rng.standard_normal(n)), dtype=np.float64)


@dataclass(frozen=True)
class DeviceFleet:
    """Every client's device. Availability windows are ``[start, end)`` seconds after midnight
    with ``0 <= start < end <= DAY_S`` (one crossing midnight is stored as two)."""

    speed: FloatArray
    """Examples processed per second of local training."""
    down_bw: FloatArray
    """Down-link bytes per second."""
    up_bw: FloatArray
    window_owner: IntArray
    window_start: FloatArray
    window_end: FloatArray

    def __post_init__(self) -> None:
        n = len(self.speed)
        for name in ("speed", "down_bw", "up_bw"):
            v = getattr(self, name)
            if len(v) != n or not np.all(np.isfinite(v)) or not np.all(v > 0):
                raise ValueError(f"device {name} must be {n} finite positive values")
        w = (self.window_owner, self.window_start, self.window_end)
        if len({len(a) for a in w}) != 1:
            raise ValueError("availability windows need one owner, start and end each")
        if len(self.window_owner) and (self.window_owner.min() < 0 or self.window_owner.max() >= n):
            raise ValueError("an availability window belongs to no client")
        ok = (self.window_start >= 0) & (self.window_start < self.window_end)
        if not np.all(ok & (self.window_end <= DAY_S)):
            raise ValueError("availability windows must satisfy 0 <= start < end <= 86400 s")

    @property
    def n_clients(self) -> int:
        return len(self.speed)

    def available(self, t: float) -> npt.NDArray[np.bool_]:
        """Which clients are available at simulated time ``t`` (seconds)."""
        tod = t % DAY_S
        inside = (self.window_start <= tod) & (tod < self.window_end)
        return np.bincount(self.window_owner[inside], minlength=self.n_clients) > 0

    def next_available(self, t: float) -> float:
        """The earliest time >= ``t`` at which some client is available (``inf``: never)."""
        if len(self.window_owner) == 0:
            return math.inf
        if self.available(t).any():
            return t
        tod = t % DAY_S
        return t + float(np.min((self.window_start - tod) % DAY_S))

    def durations(
        self, clients: IntArray, examples: FloatArray, bytes_up: FloatArray, bytes_down: FloatArray
    ) -> FloatArray:
        """Seconds from the round's start until each client's upload has arrived."""
        return np.asarray(
            bytes_down / self.down_bw[clients]
            + examples / self.speed[clients]
            + bytes_up / self.up_bw[clients],
            dtype=np.float64,
        )


_Devices = tuple[FloatArray, FloatArray, FloatArray, IntArray, FloatArray, FloatArray]
"""One device class's draws: speed, down-link, up-link, and availability windows."""


def _windows(
    owner: IntArray, start: FloatArray, length: FloatArray
) -> tuple[IntArray, FloatArray, FloatArray]:
    """Daily windows from starts and lengths (capped at a day), split at midnight."""
    start = start % DAY_S
    end = start + np.minimum(length, DAY_S)
    wraps = end > DAY_S
    owner = np.concatenate([owner, owner[wraps]])
    s = np.concatenate([start, np.zeros(int(wraps.sum()))])
    e = np.concatenate([np.minimum(end, DAY_S), end[wraps] - DAY_S])
    keep = e > s
    return owner[keep], s[keep], e[keep]


def _phones(rng: np.random.Generator, ids: IntArray) -> _Devices:
    n = len(ids)
    speed = lognormal(rng, 50.0, 10.0, n)
    down = lognormal(rng, 2.5e6, 20.0, n)
    up = lognormal(rng, 0.6e6, 20.0, n)
    night_start = rng.normal(22 * HOUR_S, 2 * HOUR_S, n)
    night_len = lognormal(rng, 4 * HOUR_S, 4.0, n)
    day = rng.random(n) < 0.5
    day_start = rng.uniform(8 * HOUR_S, 18 * HOUR_S, n)
    day_len = lognormal(rng, 0.5 * HOUR_S, 4.0, n)
    owner, s, e = _windows(
        np.concatenate([ids, ids[day]]),
        np.concatenate([night_start, day_start[day]]),
        np.concatenate([night_len, day_len[day]]),
    )
    return speed, down, up, owner, s, e


def _desktops(rng: np.random.Generator, ids: IntArray) -> _Devices:
    n = len(ids)
    speed = lognormal(rng, 500.0, 4.0, n)
    down = lognormal(rng, 10e6, 4.0, n)
    up = lognormal(rng, 5e6, 4.0, n)
    owner, s, e = _windows(ids, rng.uniform(7 * HOUR_S, 11 * HOUR_S, n), np.full(n, 8 * HOUR_S))
    return speed, down, up, owner, s, e


def _silos(rng: np.random.Generator, ids: IntArray) -> _Devices:
    n = len(ids)
    speed = lognormal(rng, 5_000.0, 2.0, n)
    down = lognormal(rng, 100e6, 2.0, n)
    up = lognormal(rng, 100e6, 2.0, n)
    return speed, down, up, ids, np.zeros(n), np.full(n, DAY_S)


_CLASSES = {"phones": _phones, "desktops": _desktops, "silos": _silos}
_MIXES = {
    "phones": {"phones": 1.0},
    "silos": {"silos": 1.0},
    "mixed": {"phones": 0.6, "desktops": 0.3, "silos": 0.1},
}


def profile_fleet(name: str, n_clients: int, seed: int) -> DeviceFleet:
    """The devices of ``n_clients`` clients under a named profile, a function of the seed."""
    if name not in _MIXES:
        raise ValueError(f"unknown device profile {name!r}; choose one of {sorted(_MIXES)}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0xDE71CE])))
    mix = _MIXES[name]
    kind = rng.choice(len(mix), size=n_clients, p=list(mix.values()))
    speed, down, up = np.zeros(n_clients), np.zeros(n_clients), np.zeros(n_clients)
    owners, starts, ends = [], [], []
    for k, cls in enumerate(mix):
        ids = np.flatnonzero(kind == k).astype(np.int64)
        sp, dn, u, own, s, e = _CLASSES[cls](rng, ids)
        speed[ids], down[ids], up[ids] = sp, dn, u
        owners.append(own)
        starts.append(s)
        ends.append(e)
    return DeviceFleet(
        speed=speed,
        down_bw=down,
        up_bw=up,
        window_owner=np.concatenate(owners),
        window_start=np.concatenate(starts),
        window_end=np.concatenate(ends),
    )


TRACE_COLUMNS = ("client", "speed", "down_bw", "up_bw", "availability")


def _parse_windows(text: str, where: str) -> list[tuple[float, float]]:
    """``always`` or ``start-end`` hour pairs separated by ``;`` (``22-6`` crosses midnight)."""
    text = text.strip()
    if text.lower() == "always":
        return [(0.0, DAY_S)]
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        bits = part.split("-")
        try:
            a, b = (float(x) for x in bits) if len(bits) == 2 else (math.nan, math.nan)
        except ValueError:
            a = b = math.nan
        if not (0 <= a <= 24 and 0 <= b <= 24 and a != b):
            raise ValueError(
                f"{where}: availability window {part!r} is not 'start-end' in hours 0-24 "
                "with start != end (e.g. '22-6' or '8.5-9')"
            )
        out.append((a * HOUR_S, ((b - a) % 24) * HOUR_S))
    if not out:
        raise ValueError(f"{where}: no availability window (write 'always' or e.g. '22-6;12-13')")
    return out


def load_trace(path: Path, n_clients: int) -> DeviceFleet:
    """A fleet from a CSV trace with columns :data:`TRACE_COLUMNS`, one row per client
    ``0..n_clients-1`` (speed in examples/s, bandwidths in bytes/s)."""
    if not path.is_file():
        raise ValueError(f"device trace {path} does not exist")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in TRACE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"device trace {path}: missing column(s) {missing}; need {list(TRACE_COLUMNS)}"
            )
        rows = list(reader)
    speed, down, up = np.full(n_clients, np.nan), np.full(n_clients, np.nan), np.zeros(n_clients)
    owner: list[int] = []
    start: list[float] = []
    length: list[float] = []
    for line, row in enumerate(rows, start=2):
        where = f"device trace {path} line {line}"
        try:
            c = int(row["client"])
            vals = [float(row[k]) for k in ("speed", "down_bw", "up_bw")]
        except (TypeError, ValueError):
            raise ValueError(f"{where}: client must be an integer, speeds numbers") from None
        if not 0 <= c < n_clients:
            raise ValueError(f"{where}: client {c} is not in 0..{n_clients - 1}")
        if not np.isnan(speed[c]):
            raise ValueError(f"{where}: client {c} appears twice")
        if not all(math.isfinite(v) and v > 0 for v in vals):
            raise ValueError(f"{where}: speed, down_bw and up_bw must be positive numbers")
        speed[c], down[c], up[c] = vals
        for a, n in _parse_windows(row["availability"] or "", where):
            owner.append(c)
            start.append(a)
            length.append(n)
    absent = np.flatnonzero(np.isnan(speed))
    if len(absent):
        raise ValueError(
            f"device trace {path}: {len(absent)} client(s) missing, e.g. {absent[:5].tolist()}; "
            f"it needs one row for each of clients 0..{n_clients - 1}"
        )
    own, s, e = _windows(np.asarray(owner, np.int64), np.asarray(start), np.asarray(length))
    return DeviceFleet(speed, down, up, own, s, e)


@dataclass(frozen=True)
class DeadlinePolicy:
    """Synchronous rounds: keep the first ``report_count`` clients to finish (all, if None)
    out of ``ceil(report_count * (1 + over_selection))`` selected, and anyone still running
    at ``deadline_s`` is dropped."""

    report_count: int | None = None
    over_selection: float = 0.0
    deadline_s: float | None = None

    def __post_init__(self) -> None:
        if self.report_count is not None and self.report_count < 1:
            raise ValueError(f"report_count must be >= 1, got {self.report_count}")
        if self.over_selection < 0:
            raise ValueError(f"over_selection must be >= 0, got {self.over_selection}")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0, got {self.deadline_s}")

    @property
    def select_count(self) -> int | None:
        """How many clients to select (None: as the sampling says)."""
        if self.report_count is None:
            return None
        return math.ceil(self.report_count * (1 + self.over_selection))


@dataclass(frozen=True)
class DeviceClock:
    """The fleet, the round policy and what each client's round costs: examples it processes,
    and the bytes it is expected to move. The expected upload decides who reports first (the
    exact encoded size exists only after training, and a secure aggregation must know its
    dropouts before the sums form); the round's time is then taken from the bytes actually
    encoded, so where the estimate is short (e.g. a secure aggregation's protocol messages) a
    round can end a little after ``deadline_s``."""

    fleet: DeviceFleet
    policy: DeadlinePolicy
    examples: FloatArray
    expected_up: FloatArray
    expected_down: FloatArray

    def keep(self, clients: IntArray, t: float) -> tuple[IntArray, IntArray]:
        """(reporting, stragglers) among ``clients`` for a round starting at ``t``."""
        if len(clients) == 0:
            return clients, clients
        d = self.fleet.durations(
            clients, self.examples[clients], self.expected_up[clients], self.expected_down[clients]
        )
        order = np.argsort(d, kind="stable")
        ok = np.zeros(len(clients), dtype=bool)
        first = order if self.policy.report_count is None else order[: self.policy.report_count]
        ok[first] = True
        if self.policy.deadline_s is not None:
            ok &= d <= self.policy.deadline_s
        return clients[ok], clients[~ok]

    def round_time(
        self,
        clients: IntArray,
        bytes_up: npt.NDArray[np.int64] | None,
        bytes_down: npt.NDArray[np.int64] | None,
        stragglers: bool,
    ) -> float:
        """Seconds the round lasts: until its last kept client has uploaded; the full deadline
        when nobody reports and stragglers were cut at it."""
        deadline = self.policy.deadline_s
        if len(clients) == 0:
            return float(deadline) if stragglers and deadline is not None else 0.0
        up = self.expected_up[clients] if bytes_up is None else bytes_up.astype(np.float64)
        down = self.expected_down[clients] if bytes_down is None else bytes_down.astype(np.float64)
        return float(self.fleet.durations(clients, self.examples[clients], up, down).max())
