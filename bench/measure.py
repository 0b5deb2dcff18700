"""What the benchmarks measure with: percentiles, and the CPU time of a stack's processes."""

from __future__ import annotations

import os


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    pos = (len(values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def cpu_seconds(stack, names) -> dict[str, float]:
    """User + system CPU seconds each stack process has used so far (Linux ``/proc``): CPU per
    record is a figure a busy, shared machine changes far less than records/s."""
    out = {}
    for name in names:
        process = stack.processes.get(name)
        try:
            with open(f"/proc/{process.pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            out[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (AttributeError, OSError, IndexError, ValueError):
            out[name] = float("nan")
    return out
