"""Where the CPU-bound work of a request runs: in the threadpool, a few images at a time per worker, or
on the event loop itself when the worker has nothing else to do and the image is small.

Measured with wrk on this 2-core machine (320x240 JPEG, /classify, 2 workers): the threadpool beat
running on the event loop for 8 concurrent clients (430-510 vs 285-410 requests/s): OpenCV and
onnxruntime release the GIL, so the loop parses the next upload while an image is being processed.
A large image also never stalls the loop. A lone request gains nothing from that overlap and pays the
hand-off both ways (waking a pool thread, then the loop), so it runs inline (``benchmarks.guard``
gives the one-client latency both ways).

A small image that arrives while the worker is busy waits in the ``Coalescer``: its runner takes the images
queued (up to ``BLOODCELLS_COALESCE_IMAGES``) into one hop and runs them back to back. With 32 clients on two
workers that served 1,152 requests/s against 991 with one hop per image, at 1.69 against 1.97 ms of server
CPU per request (``python -m benchmarks.settings``, 5 rounds, ``benchmarks/results/settings-coalesce.json``):
images one after another on a worker's CPU, not interleaved by the scheduler, and one wake-up of a thread and
of the loop for many images. Each image keeps its own onnxruntime call and its own outcome: one call for the
whole hop measured no better (a throwaway revision).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter

from app.admission import Admission
from app.affinity import allowed_cpus
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
    if its image is small."""
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
    return _result([await anyio.to_thread.run_sync(_captured, func, *args, limiter=limiter)])


def _result(box: list[T | _Raised]) -> T:
    """The outcome in ``box`` (a list, emptied here, so that the caller's frame does not hold the exception
    that its traceback will run through), returned or raised."""
    outcome = box.pop()
    if not isinstance(outcome, _Raised):
        return outcome
    error = outcome.error
    del outcome
    try:
        raise error
    finally:
        del error  # this frame, which the traceback holds, must not hold the exception in turn


def _run_all(calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
    return [_captured(func, *args) for func, args in calls]


@dataclass(frozen=True)
class _Job:
    func: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]


class Coalescer:
    """One worker's queue of small images waiting while it is busy, and the runners that take them to the
    threadpool: up to ``max_images`` of them per hop, run back to back, each with its own outcome. At most one
    runner per CPU the worker may use (one where it is pinned) and no more than the pool's slots, which the
    runners borrow like any other work. A job whose request is gone (its task cancelled) is skipped."""

    def __init__(self, limiter: CapacityLimiter, max_images: int) -> None:
        self.limiter = limiter
        self.max_images = max_images
        self._queue: deque[_Job] = deque()
        self._runners: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Job(func, args, future))
        if len(self._runners) < max(1, min(int(self.limiter.total_tokens), len(allowed_cpus()))):
            self._runners.add(loop.create_task(self._drain()))
        box = [await future]
        del future
        return _result(box)

    async def _drain(self) -> None:
        jobs: list[_Job] = []
        try:
            while self._queue:
                jobs = self._take()
                if not jobs:
                    continue
                outcomes = await anyio.to_thread.run_sync(_run_all, [(job.func, job.args) for job in jobs],
                                                          limiter=self.limiter)
                for job, outcome in zip(jobs, outcomes):
                    if not job.future.done():
                        job.future.set_result(outcome)
                jobs = outcomes = []
        finally:
            # Leaves the set with no await after the queue was last seen empty: a job queued from now on
            # starts a runner of its own.
            self._runners.discard(asyncio.current_task())  # type: ignore[arg-type]
            for job in jobs:  # cancelled (the loop is closing): no answer will come
                job.future.cancel()

    def _take(self) -> list[_Job]:
        jobs: list[_Job] = []
        while self._queue and len(jobs) < self.max_images:
            job = self._queue.popleft()
            if not job.future.done():
                jobs.append(job)
        return jobs


async def run_image_work(coalescer: Coalescer, admission: Admission | None, header: ImageHeader | None,
                         func: Callable[..., T], *args: Any) -> T:
    """One image's work (``header``: its header, None where it is refused): on the loop where the request is
    alone in its worker and the image small; queued with the other small ones where the worker is busy; a
    large or refused image gets a pool hop of its own, so that it holds up no queued small one."""
    if not small(header):
        return await run_cpu_bound(coalescer.limiter, func, *args)
    if alone(coalescer.limiter, admission) and not coalescer.queued:
        return func(*args)
    return await coalescer.run(func, *args)
