"""A process's memory: what it holds now and at its peak, and handing freed memory back to the OS."""

from __future__ import annotations

import ctypes
import gc
import resource
import sys
from pathlib import Path

import pyarrow as pa


def use_system_allocator() -> None:
    """Arrow buffers from malloc, whose freed memory release_freed_memory() hands back to the OS;
    Arrow's default mimalloc pool keeps what it has freed. For a driver, called once at its start."""
    pa.set_memory_pool(pa.system_memory_pool())


def release_freed_memory() -> None:
    """Give the memory this process has freed back to the OS, so that what one phase (listing, the
    run, the report's pass over the tables) used and freed does not stay resident under the next."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only
    if trim:
        trim(0)


def reset_peak_memory() -> None:
    """Start this process's peak memory afresh (Linux), so that what a Ray worker used for earlier
    tasks does not count in memory_mib("VmHWM")."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def memory_mib(field: str) -> float:
    """A memory figure of this process in MiB: `VmRSS` (now) or `VmHWM` (peak since
    reset_peak_memory()) from /proc/self/status; where there is none (not Linux), the peak since it started."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024
    return int(next(line for line in status.splitlines() if line.startswith(f"{field}:")).split()[1]) / 1024
