"""Where a request's CPU-bound work runs (``app.concurrency``)."""

from __future__ import annotations

import gc
import time
import weakref

import anyio
import pytest

from app.admission import Admission
from app.concurrency import alone, cpu_limiter, run_cpu_bound, small
from app.preprocessing import ImageHeader


class Payload:
    """Stands for a request's body: something only the failing call's frame holds."""


def fail_holding(payload: Payload) -> None:
    held = payload  # noqa: F841 (the frame's local is the point)
    raise ValueError("refused")


@pytest.mark.parametrize("inline", [False, True])
def test_a_failed_call_leaves_nothing_for_the_garbage_collector(inline: bool) -> None:
    """An exception through the threadpool's future made a cycle that held the call's frames, and the
    request body in them, until a full collection: freed now as soon as the exception is handled."""
    box = [Payload()]
    freed = weakref.ref(box[0])
    raised: list[str] = []

    async def call() -> None:
        try:
            await run_cpu_bound(cpu_limiter(1), fail_holding, box.pop(), inline=inline)
        except ValueError as exc:
            raised.append(str(exc))

    gc.disable()
    try:
        anyio.run(call)
        assert raised == ["refused"]
        # The pool's thread drops its own references just after handing the outcome over: wait for it.
        deadline = time.monotonic() + 5
        while freed() is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert freed() is None, gc.get_referrers(freed())
    finally:
        gc.enable()


def test_results_and_exceptions_come_back_as_from_the_call() -> None:
    async def call() -> tuple[int, str]:
        limiter = cpu_limiter(2)
        total = await run_cpu_bound(limiter, sum, [1, 2, 3])
        try:
            await run_cpu_bound(limiter, int, "x")
        except ValueError as exc:
            return total, str(exc)
        return total, ""

    assert anyio.run(call) == (6, "invalid literal for int() with base 10: 'x'")


def test_only_a_small_image_alone_in_its_worker_runs_on_the_loop() -> None:
    limiter, admission = cpu_limiter(2), Admission(4)
    admission.pending = 1  # this request
    assert alone(limiter, admission)
    assert small(ImageHeader("JPEG", 1000, 1000)) and small(ImageHeader("PNG", 320, 240))
    assert not small(ImageHeader("JPEG", 1001, 1000))
    assert not small(None)  # refused: its error comes from the pool's call
    assert not alone(limiter, None)
    admission.pending = 2  # another request is in the worker
    assert not alone(limiter, admission)
    admission.pending = 1

    async def with_an_image_in_the_pool() -> bool:
        async with limiter:
            return alone(limiter, admission)
    assert not anyio.run(with_an_image_in_the_pool)
