"""Figures that cannot pass by accident: the bare-encoder ceiling and the CPU a process tree spends.

A ceiling is a set of bare-encoder samples, each taken while no server of the benchmark is alive and the
machine is quiet. Contamination only ever makes the bare encoder slower, so a verdict compares with the
*fastest* sample (the highest rate, the lowest latency), and refuses to give one ("unsettled") when the
samples disagree by more than ``SPREAD_LIMIT``: a noisy ceiling cannot turn a miss into a pass.

CPU seconds (utime + stime from /proc) are the figure that holds on a shared 2-vCPU machine: wall-clock
ratios mix the service with the load generator on the same cores; CPU per item does not.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

SPREAD_LIMIT = 1.3
MIN_SAMPLES = 5
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Ceiling:
    """Samples of one bare-encoder figure. ``higher_is_better``: a rate (items/s); else a latency (ms)."""

    name: str
    higher_is_better: bool = True
    samples: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return max(self.samples) if self.higher_is_better else min(self.samples)

    @property
    def spread(self) -> float:
        return max(self.samples) / min(self.samples)

    def summary(self) -> dict:
        return {"min": min(self.samples), "median": statistics.median(self.samples), "max": max(self.samples),
                "n": len(self.samples), "spread": round(self.spread, 3), "samples": [round(s, 2) for s in self.samples]}


def verdict(measured: float, ceiling: Ceiling, fraction: float) -> str:
    """'yes', 'no' or 'unsettled (...)' for "measured is at least ``fraction`` of the ceiling" (a rate) or
    "measured is at most ``fraction`` times the ceiling" (a latency). Too few samples or too wide a spread:
    unsettled, whichever way the comparison would go."""
    if len(ceiling.samples) < MIN_SAMPLES:
        return f"unsettled ({len(ceiling.samples)} bare samples, need {MIN_SAMPLES})"
    if ceiling.spread > SPREAD_LIMIT:
        return f"unsettled (spread {ceiling.spread:.2f})"
    if ceiling.higher_is_better:
        return "yes" if measured >= fraction * ceiling.best else "no"
    return "yes" if measured <= fraction * ceiling.best else "no"


# -- the machine and process trees ------------------------------------------------------------------------

def cpu_busy_fraction(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over ``seconds`` (from /proc/stat)."""
    def read() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values[:8]), idle
    total0, idle0 = read()
    time.sleep(seconds)
    total1, idle1 = read()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(alive: callable, busy_below: float = 0.15, timeout_s: float = 60) -> dict:  # type: ignore[valid-type]
    """Wait (bounded) until ``alive()`` is empty and the machine is idle; say how it went, so a sample taken
    on a busy machine is known as such."""
    started = time.monotonic()
    while True:
        servers = alive()
        busy = cpu_busy_fraction(1.0)
        waited = time.monotonic() - started
        if not servers and busy < busy_below:
            return {"quiet": True, "busy": round(busy, 3), "waited_s": round(waited, 1)}
        if waited > timeout_s:
            if servers:
                raise RuntimeError(f"benchmark servers still alive: {servers}")
            return {"quiet": False, "busy": round(busy, 3), "waited_s": round(waited, 1)}


def tree_pids(root: int) -> list[int]:
    """``root`` and every descendant (gunicorn master and workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of ``root`` and its live descendants, all their threads included."""
    total = 0
    for pid in tree_pids(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / _TICKS


def at_batch(per_batch: dict[int, float], batch: float) -> float:
    """A per-item figure measured at batch sizes 1, 2, 4 ... read at ``batch`` (linear in log2 of the size;
    the measured ends outside)."""
    sizes = sorted(per_batch)
    if batch <= sizes[0]:
        return per_batch[sizes[0]]
    if batch >= sizes[-1]:
        return per_batch[sizes[-1]]
    low = max(s for s in sizes if s <= batch)
    high = min(s for s in sizes if s >= batch)
    if low == high:
        return per_batch[low]
    t = (math.log2(batch) - math.log2(low)) / (math.log2(high) - math.log2(low))
    return per_batch[low] + t * (per_batch[high] - per_batch[low])
