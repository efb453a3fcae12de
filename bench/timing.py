"""Small timing and memory helpers shared by the benchmarks (stdlib only)."""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path


def rate(call: Callable[[], object], min_s: float, min_calls: int = 3) -> tuple[float, int]:
    """Seconds per call (after one warm-up call) and the number of timed calls: at least ``min_calls``,
    and calls until ``min_s`` seconds have passed."""
    call()
    calls = 0
    t0 = time.perf_counter()
    while calls < min_calls or time.perf_counter() - t0 < min_s:
        call()
        calls += 1
    return (time.perf_counter() - t0) / calls, calls


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def peak_rss_mb(pid: int | None = None) -> float | None:
    """Peak resident memory (VmHWM) of a live process in MiB; None when it is gone or unreadable."""
    path = Path(f"/proc/{pid or os.getpid()}/status")
    try:
        for line in path.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def children_peak_rss_mb() -> float:
    """Largest peak RSS of any waited-for child process so far (getrusage), in MiB."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = os.cpu_count() or 0
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return {
        "nproc": cores,
        "cpu": cpu or platform.processor(),
        "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "host": platform.node(),
    }


def cpu_seconds(pid: int | None = None) -> float | None:
    """User + system CPU seconds a live process (all its threads) has used; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid or os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the ")" that ends the command name, utime and stime are the 12th and 13th fields.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
