"""How many cores this process may use: the CPUs it may run on (its affinity, a
container's cpuset), fewer when its cgroup's CPU quota allows less (a container's
`cpus: 2` or a Kubernetes CPU limit on a larger machine)."""

from __future__ import annotations

import math
import os
from pathlib import Path

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>", or "max <period>"


def available_cores(cpu_max: Path = CPU_MAX) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        cores = os.cpu_count() or 1
    quota = _quota(cpu_max)
    return max(1, min(cores, quota) if quota is not None else cores)


def _quota(cpu_max: Path) -> int | None:
    """The cores the cgroup's quota amounts to, rounded up; None without a quota."""
    try:
        quota, period = cpu_max.read_text(encoding="ascii").split()[:2]
        return math.ceil(int(quota) / int(period))
    except (OSError, ValueError, ZeroDivisionError):  # "max", no cgroup v2, unreadable
        return None
