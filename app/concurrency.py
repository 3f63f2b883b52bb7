"""Where the CPU-bound work of a request runs: in the threadpool, a few images at a time per worker.

Measured with wrk on this 2-core machine (320x240 JPEG, /classify, 2 workers): the threadpool beat
running on the event loop both for one keep-alive client (p50 3.2 vs 3.35 ms) and for 8 concurrent
ones (430-510 vs 285-410 requests/s): OpenCV and onnxruntime release the GIL, so the loop parses the
next upload while an image is being processed. A large image also never stalls the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter

T = TypeVar("T")


def cpu_limiter(slots: int) -> CapacityLimiter:
    """At most ``slots`` images in flight per worker: bounds the memory that large images take and
    the threads fighting over the cores."""
    return CapacityLimiter(slots)


async def run_cpu_bound(limiter: CapacityLimiter, func: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(func, *args, limiter=limiter)
