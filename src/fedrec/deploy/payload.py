"""The content of one message between server and client, independent of the transport.

A payload is named numpy arrays plus scalar metadata (ints, floats, strings, bytes and lists
of them): exactly what Flower's ``ArrayRecord`` and ``ConfigRecord`` carry, so the Flower
adapter is a one-to-one conversion and tests can exchange payloads in-process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # torch is imported only where tensors are used: SecAgg stages skip it
    from torch import Tensor

Params = dict[str, "Tensor"]
Meta = dict[str, Any]


@dataclass
class Payload:
    arrays: dict[str, npt.NDArray[Any]] = field(default_factory=dict)
    meta: Meta = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of content (array data, strings, blobs): what the message carries, framing
        aside."""
        n = sum(int(a.nbytes) for a in self.arrays.values())
        for v in self.meta.values():
            n += _meta_bytes(v)
        return n

    def put_params(self, prefix: str, params: Params) -> None:
        for k, v in params.items():
            self.arrays[f"{prefix}/{k}"] = v.detach().cpu().numpy()

    def params(self, prefix: str) -> Params:
        """The tensors put under ``prefix`` (copies: the arrays may be read-only buffers)."""
        import torch

        cut = len(prefix) + 1
        return {
            k[cut:]: torch.from_numpy(np.array(v))
            for k, v in self.arrays.items()
            if k.startswith(prefix + "/")
        }


def _meta_bytes(v: Any) -> int:
    if isinstance(v, bytes | str):
        return len(v)
    if isinstance(v, list):
        return sum(_meta_bytes(x) for x in v)
    return 8
