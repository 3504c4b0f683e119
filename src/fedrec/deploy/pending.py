"""One round's unfinished secure aggregation on the device: the protected upload (not yet
masked) and the SecAgg+ client's secrets, kept on disk between the round's messages (each is
answered by a fresh process) and deleted when the round ends.

Deliberately free of torch: the four SecAgg+ stages after training only need these files,
numpy and the cryptography, so their processes start fast and small.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedrec.utils.atomic import atomic_open

META, UPLOAD, SECRETS = "pending.json", "upload.npy", "secagg.bin"


class PendingError(RuntimeError):
    """This device holds nothing for the round a message names."""


class PendingRound:
    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)

    def _write(self, name: str, data: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_open(self.dir / name, "wb", encoding=None) as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(data)

    def round(self) -> int | None:
        path = self.dir / META
        if not path.exists():
            return None
        return int(json.loads(path.read_text())["round"])

    def start(self, round_: int, vector: npt.NDArray[np.float64]) -> None:
        """A new round's upload; whatever an earlier round left is dropped."""
        self.clear()
        buf = io.BytesIO()
        np.save(buf, np.asarray(vector, dtype=np.float64), allow_pickle=False)
        self._write(UPLOAD, buf.getvalue())
        self._write(META, json.dumps({"round": round_}).encode())

    def _check(self, round_: int) -> None:
        have = self.round()
        if have != round_:
            what = "nothing" if have is None else f"round {have + 1}"
            raise PendingError(f"no secure aggregation of round {round_ + 1} here (holds {what})")

    def vector(self, round_: int) -> npt.NDArray[np.float64]:
        self._check(round_)
        out: npt.NDArray[np.float64] = np.load(self.dir / UPLOAD, allow_pickle=False)
        return out

    def put_secrets(self, round_: int, blob: bytes) -> None:
        self._check(round_)
        self._write(SECRETS, blob)

    def secrets(self, round_: int) -> bytes:
        self._check(round_)
        path = self.dir / SECRETS
        if not path.exists():
            raise PendingError(f"round {round_ + 1}: keys were never advertised here")
        return path.read_bytes()

    def clear(self) -> None:
        for name in (META, SECRETS, UPLOAD):
            (self.dir / name).unlink(missing_ok=True)
