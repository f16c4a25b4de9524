"""Resident-memory readings of this process from ``/proc/self/status`` (Linux), shared by the memory benchmarks.

Standard library only and no side effects at import (unlike ``worker_common``, which redirects stdout).
"""

from __future__ import annotations

import ctypes
import gc


def proc_status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (``VmRSS``, ``VmHWM``, ``RssAnon``, ``RssFile``)."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status (this script needs Linux).")


def trim() -> None:
    """Collects garbage and returns the allocator's free heap to the OS, so that RSS reflects live memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
