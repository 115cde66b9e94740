"""How many CPUs this container may really use, and setting torch's thread count from it once.

`os.cpu_count()` reports the host's cores; a Cloud Run or Lambda container usually gets a
cgroup CPU quota and/or an affinity mask far below that, and torch defaulting to the host
count oversubscribes the cores it does get.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_lock = threading.Lock()
_configured: int | None = None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup quota (v2 `cpu.max`, else v1 cfs quota/period); None if unlimited."""
    v2 = root / "cpu.max"
    try:
        quota, period = v2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu"):
        try:
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def cpu_budget(root: Path = CGROUP_ROOT) -> int:
    """CPUs usable by this process: min(affinity mask, cgroup quota rounded up), at least 1.

    A fractional quota (1.5 CPUs) rounds up: the last thread gets a partial share, which costs
    less than leaving half a CPU idle.
    """
    cpus = affinity_cpus()
    quota = cgroup_cpu_limit(root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def configure_torch_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count once per process: `threads` if given, else `cpu_budget()`.

    Later calls with the same (or no) value are no-ops; a different explicit value is applied.
    Returns the count in force.
    """
    global _configured
    import torch

    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    with _lock:
        wanted = threads if threads is not None else (_configured or cpu_budget())
        if _configured != wanted:
            torch.set_num_threads(wanted)
            _configured = wanted
        return wanted
