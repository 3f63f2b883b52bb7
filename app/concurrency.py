"""Where the CPU-bound work of a request runs: in the threadpool, a few images at a time per worker, or
on the event loop itself when the worker has nothing else to do and the image is small.

Measured with wrk on this 2-core machine (320x240 JPEG, /classify, 2 workers): the threadpool beat
running on the event loop for 8 concurrent clients (430-510 vs 285-410 requests/s): OpenCV and
onnxruntime release the GIL, so the loop parses the next upload while an image is being processed.
A large image also never stalls the loop. A lone request gains nothing from that overlap and pays the
hand-off both ways (waking a pool thread, then the loop), so it runs inline (``benchmarks.guard``
gives the one-client latency both ways).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter

from app.admission import Admission
from app.preprocessing import ImageHeader

T = TypeVar("T")

# An image this small (a 1280x780 frame) decodes and classifies in a few milliseconds: the longest a
# request arriving meanwhile waits for the loop.
INLINE_MAX_PIXELS = 1_000_000


def cpu_limiter(slots: int) -> CapacityLimiter:
    """At most ``slots`` images in flight per worker: bounds the memory that large images take and
    the threads fighting over the cores."""
    return CapacityLimiter(slots)


def alone(limiter: CapacityLimiter, admission: Admission | None) -> bool:
    """No image in the pool and no other request admitted (this one is counted): a request may run on the loop
    if its image is small. Checked first, so that a busy worker leaves even the header to the pool."""
    return not limiter.borrowed_tokens and admission is not None and admission.pending <= 1


def small(header: ImageHeader | None) -> bool:
    """An image whose header (``classification.header_of``) declares at most INLINE_MAX_PIXELS; one whose
    header is refused (None) gets its error from the pool."""
    return header is not None and header.width * header.height <= INLINE_MAX_PIXELS


@dataclass(frozen=True)
class _Raised:
    error: Exception


def _captured(func: Callable[..., T], *args: Any) -> T | _Raised:
    try:
        return func(*args)
    except Exception as exc:
        return _Raised(exc)


async def run_cpu_bound(limiter: CapacityLimiter, func: Callable[..., T], *args: Any, inline: bool = False) -> T:
    """``func(*args)`` in the threadpool (or here, ``inline``); its exception is raised here.

    The exception comes back as a value, not through the thread's future: a future that holds an exception
    sits in the frame the exception's traceback runs through, a reference cycle that kept every frame of
    ``func`` alive, the request's body and everything parsed from it included, until a full garbage
    collection (hundreds of MB per failed /v2 request, found by a hostile client)."""
    if inline:
        return func(*args)
    outcome = await anyio.to_thread.run_sync(_captured, func, *args, limiter=limiter)
    if not isinstance(outcome, _Raised):
        return outcome
    error = outcome.error
    del outcome
    try:
        raise error
    finally:
        del error  # this frame, which the traceback holds, must not hold the exception in turn
