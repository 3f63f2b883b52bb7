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
workers that served 1,182 requests/s against 1,034 with one hop per image, at 1.64 against 1.87 ms of server
CPU per request (``python -m benchmarks.settings``, 5 rounds, ``benchmarks/results/settings-coalesce.json``):
images one after another on a worker's CPU, not interleaved by the scheduler, and one wake-up of a thread and
of the loop for many images. Each image keeps its own onnxruntime call and its own outcome: one call for the
whole hop measured no better (a throwaway revision).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter

from app import metrics
from app.admission import Admission
from app.affinity import allowed_cpus
from app.preprocessing import ImageHeader

T = TypeVar("T")

# An image this small (a 1280x780 frame) decodes and classifies in a few milliseconds: the longest a
# request arriving meanwhile waits for the loop.
INLINE_MAX_PIXELS = 1_000_000
# The data set's 320x240 smears are 6-10 KB as JPEGs. A crafted header this large (thousands of 4-byte
# segments) takes the loop several milliseconds: the most a request can stall the others for.
LOOP_HEADER_MAX_BYTES = 32 * 1024


def cpu_limiter(slots: int) -> CapacityLimiter:
    """At most ``slots`` images in flight per worker: bounds the memory that large images take and
    the threads fighting over the cores."""
    return CapacityLimiter(slots)


def alone(limiter: CapacityLimiter, admission: Admission | None) -> bool:
    """No image in the pool and no other request admitted (this one is counted): a request may run on the loop
    if its image is small."""
    return not limiter.borrowed_tokens and admission is not None and admission.pending <= 1


def header_here(size: int) -> bool:
    """Whether to read the header of an upload of ``size`` bytes on the event loop, to decide where its work
    runs: only up to LOOP_HEADER_MAX_BYTES. Reading a header walks the file's segments in Python (Pillow's
    parsers, ``preprocessing.jpeg_layout``), which a crafted upload can make long; a larger upload gets a
    hop of its own, and its header is read there."""
    return size <= LOOP_HEADER_MAX_BYTES


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


# A hop ends once it has run this long: a slow image among the small ones holds back the answers of the others
# in its hop by about this much at most, and the images it did not reach go first into the next hop.
HOP_BUDGET_S = 0.02


def _run_for(calls: list[tuple[contextvars.Context, Callable[..., Any], tuple[Any, ...]]],
             budget_s: float) -> list[Any]:
    """The outcomes of the calls, in order, each in its request's context, until ``budget_s`` has passed (at
    least one)."""
    deadline = time.perf_counter() + budget_s
    outcomes = []
    for context, func, args in calls:
        outcomes.append(context.run(_captured, func, *args))
        if time.perf_counter() >= deadline:
            break
    try:
        return outcomes
    finally:
        # An exception's traceback holds the frames of its call, and they hold this frame (their caller): had
        # this frame kept the outcomes, the exception among them would hold itself, and the request's body
        # with it, until a full garbage collection.
        del outcomes


@dataclass(frozen=True)
class _Job:
    func: Callable[..., Any]
    args: tuple[Any, ...]
    context: contextvars.Context  # the request's: its log lines keep its request id
    future: asyncio.Future[Any]


class Coalescer:
    """One worker's queue of small images waiting while it is busy, and the runners that take them to the
    threadpool: up to ``max_images`` of them per hop, for at most HOP_BUDGET_S, run back to back, each with its
    own outcome. At most one runner per CPU the worker may use (one where it is pinned) and no more than the
    pool's slots, which the runners borrow like any other work. A job whose request is gone (its task
    cancelled) is skipped."""

    def __init__(self, limiter: CapacityLimiter, max_images: int, admission: Admission | None = None) -> None:
        self.limiter = limiter
        self.max_images = max_images
        self.admission = admission
        self._queue: deque[_Job] = deque()
        self._runners: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def runners(self) -> int:
        return len(self._runners)

    def _may_add_runner(self) -> bool:
        slots = int(self.limiter.total_tokens)
        if self.admission is not None and self.admission.full():
            # Shedding: the event loop refuses what it cannot admit, as fast as its share of the CPU lets it, and
            # clients that ignore Retry-After send again at once. A runner per slot keeps that share to what four
            # pool threads left it before the queue existed (benchmarks.overload: 480 images classified per second
            # with one runner per CPU, 922 with a thread per image).
            return len(self._runners) < slots
        return len(self._runners) < min(slots, max(1, len(allowed_cpus())))

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Job(func, args, contextvars.copy_context(), future))
        if self._may_add_runner():
            # A context of its own: not the one of the request that happened to start it.
            self._runners.add(loop.create_task(self._drain(), context=contextvars.Context()))
        box = [await future]
        del future
        return _result(box)

    async def _drain(self) -> None:
        try:
            while self._queue:
                await self._hop()
        finally:
            # Leaves the set with no await after the queue was last seen empty: a job queued from now on
            # starts a runner of its own.
            self._runners.discard(asyncio.current_task())  # type: ignore[arg-type]

    async def _hop(self) -> None:
        """One hop. Its own frame, gone when it returns: a runner waiting for the next hop holds no request."""
        async with self.limiter:  # before taking the jobs: one that is cancelled meanwhile is not run
            taken = self._take()
            if not taken:
                return
            calls = [(job.context, job.func, job.args) for job in taken]
            try:
                outcomes = await anyio.to_thread.run_sync(_run_for, calls, HOP_BUDGET_S)
            except Exception as exc:  # no thread to run on (the process's thread limit): each request is told
                outcomes = [_Raised(RuntimeError(f"the work could not be handed to a thread: {exc}")) for _ in taken]
            except BaseException:  # cancelled: the loop is closing, no answer will come
                for job in taken:
                    job.future.cancel()
                raise
        self._queue.extendleft(reversed(taken[len(outcomes):]))
        for job, outcome in zip(taken, outcomes):
            if not job.future.done():
                job.future.set_result(outcome)
        metrics.COALESCED.observe(len(outcomes))

    def _take(self) -> list[_Job]:
        jobs: list[_Job] = []
        while self._queue and len(jobs) < self.max_images:
            job = self._queue.popleft()
            if not job.future.done():
                jobs.append(job)
        return jobs


async def run_image_work(coalescer: Coalescer, admission: Admission | None, header: ImageHeader | None,
                         func: Callable[..., T], *args: Any) -> T:
    """One image's work (``header``: its header, None where it was refused or not read, ``header_here``): on the
    loop where the request is alone in its worker and the image small; queued with the other small ones where
    the worker is busy; any other in a pool hop of its own, so that it holds up no queued small one."""
    if not small(header):
        return await run_cpu_bound(coalescer.limiter, func, *args)
    if alone(coalescer.limiter, admission) and not coalescer.queued:
        return func(*args)
    return await coalescer.run(func, *args)
