"""Where a request's CPU-bound work runs (``app.concurrency``)."""

from __future__ import annotations

import contextlib
import contextvars
import gc
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable

import anyio
import pytest
from anyio.abc import TaskGroup

from app import concurrency, metrics
from app.admission import Admission
from app.concurrency import Coalescer, alone, cpu_limiter, header_here, run_cpu_bound, run_image_work, small
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


# --------------------------------------------------------------------------------------------- Coalescer


class Gate:
    """A job that blocks its pool thread until opened, so that the jobs after it queue."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self) -> str:
        self.entered.set()
        assert self.opened.wait(10)
        return "gate"


async def wait_for(event: threading.Event) -> None:
    while not event.is_set():
        await anyio.sleep(0.001)


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of jobs in each pool hop of a coalescer's runners."""
    sizes: list[int] = []
    run_for = concurrency._run_for

    def recorded(calls: list, budget_s: float) -> list:
        outcomes = run_for(calls, budget_s)
        sizes.append(len(outcomes))
        return outcomes
    monkeypatch.setattr(concurrency, "_run_for", recorded)
    return sizes


@contextlib.asynccontextmanager
async def held(coalescer: Coalescer, queued: int) -> AsyncIterator[TaskGroup]:
    """A task group whose first job holds the coalescer's runner in the pool, so that the jobs the body starts
    queue; once ``queued`` of them wait, the first job ends, and the group waits for every job."""
    gate = Gate()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(coalescer.run, gate)
        await wait_for(gate.entered)
        yield tasks
        while coalescer.queued < queued:
            await anyio.sleep(0.001)
        gate.opened.set()


def coalesced() -> tuple[float, float]:
    """bloodcells_coalesced_images' count (hops) and sum (images)."""
    samples = {sample.name: sample.value for metric in metrics.COALESCED.collect() for sample in metric.samples}
    return samples["bloodcells_coalesced_images_count"], samples["bloodcells_coalesced_images_sum"]


def one_cpu(monkeypatch: pytest.MonkeyPatch, cpus: int = 1) -> None:
    monkeypatch.setattr(concurrency, "allowed_cpus", lambda: list(range(cpus)))


def test_images_queued_behind_a_busy_runner_run_in_one_hop_each_with_its_own_outcome(
        hops: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    one_cpu(monkeypatch)

    async def call() -> list[object]:
        coalescer = Coalescer(cpu_limiter(4), max_images=16)
        outcomes: list[object] = [None] * 5

        async def submit(index: int, func: Callable[..., object], *args: object) -> None:
            try:
                outcomes[index] = await coalescer.run(func, *args)
            except ValueError as exc:
                outcomes[index] = f"raised {exc}"

        async with held(coalescer, queued=5) as tasks:
            for index, text in enumerate(["1", "2", "x", "4", "5"]):
                tasks.start_soon(submit, index, int, text)
        return outcomes

    count, total = coalesced()
    assert anyio.run(call) == [1, 2, "raised invalid literal for int() with base 10: 'x'", 4, 5]
    assert hops == [1, 5]
    assert coalesced() == (count + 2, total + 6)  # bloodcells_coalesced_images: two hops, six images


def test_a_hop_takes_at_most_max_images_in_arrival_order(hops: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    one_cpu(monkeypatch)
    order: list[int] = []

    async def call() -> None:
        coalescer = Coalescer(cpu_limiter(4), max_images=2)
        async with held(coalescer, queued=5) as tasks:
            for index in range(5):
                tasks.start_soon(coalescer.run, order.append, index)
                await anyio.sleep(0)  # each task queues its job in turn

    anyio.run(call)
    assert hops == [1, 2, 2, 1]
    assert order == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("cpus", "slots", "shedding", "runners"),
                         [(1, 4, False, 1), (2, 4, False, 2), (4, 2, False, 2), (1, 4, True, 4), (1, 2, True, 2)])
def test_runners_are_one_per_cpu_or_one_per_slot_while_the_worker_sheds(
        monkeypatch: pytest.MonkeyPatch, cpus: int, slots: int, shedding: bool, runners: int) -> None:
    one_cpu(monkeypatch, cpus)
    gates = [Gate() for _ in range(4)]
    admission = Admission(max_pending=4)
    admission.pending = 4 if shedding else 3

    async def call() -> tuple[int, int]:
        limiter = cpu_limiter(slots)
        coalescer = Coalescer(limiter, max_images=1, admission=admission)
        async with anyio.create_task_group() as tasks:
            for gate in gates:
                tasks.start_soon(coalescer.run, gate)
            await wait_for(gates[0].entered)
            await anyio.sleep(0.2)  # time for any further runner to start
            started, busy = coalescer.runners, sum(gate.entered.is_set() for gate in gates)
            for gate in gates:
                gate.opened.set()
        return started, busy

    assert anyio.run(call) == (runners, runners)
    assert all(gate.entered.is_set() for gate in gates)


def test_a_queued_job_whose_request_is_gone_never_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    one_cpu(monkeypatch)
    ran: list[str] = []

    async def call() -> None:
        coalescer = Coalescer(cpu_limiter(4), max_images=16)
        async with held(coalescer, queued=2) as tasks:
            with anyio.move_on_after(0.05):  # the client went away while its image waited
                await coalescer.run(ran.append, "cancelled")
            tasks.start_soon(coalescer.run, ran.append, "kept")

    anyio.run(call)
    assert ran == ["kept"]


def test_a_job_queued_as_the_last_runner_stops_still_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner leaves with no await after it last saw the queue empty: a job queued after that starts a new
    one rather than waiting for a runner that is leaving."""
    one_cpu(monkeypatch)

    async def call() -> list[int]:
        coalescer = Coalescer(cpu_limiter(1), max_images=16)
        results = []
        with anyio.fail_after(10):
            for index in range(50):
                # Queued at once on waking: before any callback the leaving runner might have scheduled.
                results.append(await coalescer.run(int, str(index)))
        return results

    assert anyio.run(call) == list(range(50))


def test_a_failed_coalesced_call_leaves_nothing_for_the_garbage_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nor does the runner hold the failed request while it waits on its next hop."""
    one_cpu(monkeypatch)
    box = [Payload()]
    freed = weakref.ref(box[0])
    raised: list[str] = []
    gate = Gate()

    async def fail() -> None:
        try:
            await coalescer.run(fail_holding, box.pop())
        except ValueError as exc:
            raised.append(str(exc))

    async def call() -> bool:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(fail)
            await anyio.sleep(0)
            tasks.start_soon(coalescer.run, gate)
            while not raised:
                await anyio.sleep(0.001)
            await wait_for(gate.entered)  # the runner's next hop
            deadline = time.monotonic() + 5
            while freed() is not None and time.monotonic() < deadline:
                await anyio.sleep(0.01)
            gone = freed() is None
            gate.opened.set()
        return gone

    coalescer = Coalescer(cpu_limiter(1), max_images=1)
    gc.disable()
    try:
        gone = anyio.run(call)
        assert raised == ["refused"]
        assert gone, gc.get_referrers(freed())
    finally:
        gc.enable()


def test_a_request_cancelled_while_its_image_runs_leaves_the_runner_answering_the_next(
        monkeypatch: pytest.MonkeyPatch) -> None:
    one_cpu(monkeypatch)
    gate = Gate()

    async def call() -> int:
        coalescer = Coalescer(cpu_limiter(4), max_images=16)
        with anyio.move_on_after(0.05):  # the client went away while its image was being classified
            await coalescer.run(gate)
        gate.opened.set()
        return await coalescer.run(int, "7")

    assert anyio.run(call) == 7


def test_a_hop_ends_after_its_time_budget_and_the_rest_go_first_into_the_next(
        hops: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    one_cpu(monkeypatch)
    monkeypatch.setattr(concurrency, "HOP_BUDGET_S", 0.05)
    order: list[str] = []

    def slow() -> None:
        time.sleep(0.1)
        order.append("slow")

    async def call() -> None:
        coalescer = Coalescer(cpu_limiter(4), max_images=16)
        async with held(coalescer, queued=4) as tasks:
            tasks.start_soon(coalescer.run, slow)
            await anyio.sleep(0)
            for name in ("a", "b"):
                tasks.start_soon(coalescer.run, order.append, name)
                await anyio.sleep(0)
            tasks.start_soon(coalescer.run, order.append, "later")  # queued behind them meanwhile

    anyio.run(call)
    assert hops == [1, 1, 3]
    assert order == ["slow", "a", "b", "later"]


REQUEST = contextvars.ContextVar("request", default="none")


def test_each_image_runs_in_its_own_requests_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """A log line written during the work carries its own request's id, not that of the request whose arrival
    started the runner."""
    one_cpu(monkeypatch)

    async def request(name: str, coalescer: Coalescer, seen: dict[str, str]) -> None:
        REQUEST.set(name)
        seen[name] = await coalescer.run(REQUEST.get)

    async def call() -> dict[str, str]:
        coalescer, seen = Coalescer(cpu_limiter(4), max_images=16), dict[str, str]()
        async with held(coalescer, queued=3) as tasks:
            for name in ("first", "second", "third"):
                tasks.start_soon(request, name, coalescer, seen)
        return seen

    assert anyio.run(call) == {"first": "first", "second": "second", "third": "third"}


def test_a_pool_that_cannot_start_a_thread_answers_each_request_with_the_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    one_cpu(monkeypatch)

    async def refused(*args: object, **kwargs: object) -> None:
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(concurrency.anyio.to_thread, "run_sync", refused)

    async def call() -> list[str]:
        coalescer, answers = Coalescer(cpu_limiter(4), max_images=16), []

        async def request() -> None:
            try:
                await coalescer.run(int, "1")
            except RuntimeError as exc:
                answers.append(str(exc))
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                for _ in range(3):
                    tasks.start_soon(request)
        return answers

    assert anyio.run(call) == ["the work could not be handed to a thread: can't start new thread"] * 3


def test_image_work_runs_inline_alone_queued_when_busy_and_large_images_in_a_hop_of_their_own(
        hops: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    one_cpu(monkeypatch)
    small_image, large_image = ImageHeader("JPEG", 320, 240), ImageHeader("JPEG", 4000, 3000)

    async def call() -> list[bool]:
        loop_thread = threading.get_ident()
        on_loop = lambda: threading.get_ident() == loop_thread  # noqa: E731
        coalescer, admission = Coalescer(cpu_limiter(4), max_images=16), Admission(8)
        admission.pending = 1
        alone_small = await run_image_work(coalescer, admission, small_image, on_loop)
        alone_large = await run_image_work(coalescer, admission, large_image, on_loop)
        refused = await run_image_work(coalescer, admission, None, on_loop)  # or not read: header_here
        admission.pending = 2
        busy_small = await run_image_work(coalescer, admission, small_image, on_loop)
        return [alone_small, alone_large, refused, busy_small]

    assert anyio.run(call) == [True, False, False, False]
    assert hops == [1]  # only the busy worker's small image went through the coalescer


def test_only_a_small_upload_has_its_header_read_on_the_loop() -> None:
    assert header_here(0) and header_here(concurrency.LOOP_HEADER_MAX_BYTES)
    assert not header_here(concurrency.LOOP_HEADER_MAX_BYTES + 1)
