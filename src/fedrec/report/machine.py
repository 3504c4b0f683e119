"""What a timing was measured on. Benchmarks print it beside every figure, since seconds mean
nothing without the machine (and its load at the time)."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path
from typing import Any

import torch


def _proc_field(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def describe_machine() -> dict[str, Any]:
    """CPU, cores, memory, library versions, load average and date."""
    mem = _proc_field("/proc/meminfo", "MemTotal")
    return {
        "cpu": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "ram_gib": round(int(mem.split()[0]) / 2**20, 1) if mem else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_markdown(m: dict[str, Any]) -> str:
    load = m.get("load_average")
    load_s = ", ".join(f"{x:.2f}" for x in load) if load else "n/a"
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; "
        f"torch {m['torch']} ({m['torch_threads']} threads), Python {m['python']}; "
        f"load average {load_s}; {m['date']}."
    )
