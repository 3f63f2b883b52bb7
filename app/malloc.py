"""glibc malloc settings for a long-lived worker: memory that stays bounded, at the same speed.

By default glibc raises its mmap threshold each time a large block is freed (up to 32 MiB); after the
first requests even multi-megabyte buffers come from the heap, whose top is only given back past the
trim threshold, in one arena per threadpool thread. A worker then grew from ~133 MiB to 190-240 MiB
RSS under load. Two arenas are enough for one worker's threads, and fixed thresholds bound what the
heap keeps. Lower thresholds keep less but cost CPU: 128 KiB (every decoded image mmapped, faulted in
and unmapped) added ~0.6 ms to a 1.7 ms classification; 512 KiB / 2 MiB cost 0-7% of a request's CPU,
within the machine's noise (``python -m benchmarks.memory --cpu`` and ``--server-cpu``). Since the
models average four views of each image in one call (``training/tta.py``), their activations are
four times larger: at 512 KiB each onnxruntime call mmapped and faulted them in, 0.81 ms against
0.22 ms at 4 MiB for the crop model, for about the same peak memory (``MALLOC_MMAP_THRESHOLD_=N
python -m benchmarks.tta_cost`` and ``python -m benchmarks.memory --env MALLOC_MMAP_THRESHOLD_=N``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

SETTINGS = {"MALLOC_ARENA_MAX": (M_ARENA_MAX, 2),
            "MALLOC_MMAP_THRESHOLD_": (M_MMAP_THRESHOLD, 4 * 1024 * 1024),
            "MALLOC_TRIM_THRESHOLD_": (M_TRIM_THRESHOLD, 2 * 1024 * 1024)}


def bound_heap() -> dict[str, int]:
    """Apply the settings above to this process, except those its environment sets (glibc read them
    at start-up); the settings applied. Nothing where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return {}
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return {}
    applied = {}
    for variable, (parameter, value) in SETTINGS.items():
        if variable not in os.environ and mallopt(parameter, value) == 1:
            applied[variable] = value
    return applied
