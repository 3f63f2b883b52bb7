"""Where a request's time goes: py-spy samples a live `bloodcells serve` worker under wrk load.

    python -m benchmarks.profile [--seconds 20] [--connections 1 | --in-process] [--out benchmarks/results/profile.json]

One worker, one keep-alive wrk client (or ``--connections``) posting the benchmark's reference 320x240
TEST image to /classify; or, with ``--in-process``, a process calling ``classify()`` on that image in a loop,
set up as a worker is (the guard's in-process figure), to tell which steps cost more inside the server.
py-spy (PyPI) samples the worker's threads, idle ones excluded, and every sample is put in one stage by the
innermost frame that says which: the stages are listed in STAGES, in the order they are tried. Samples of a
thread waiting (the event loop in its poll, a pool thread in its queue) are left out: the figures are shares
of the worker's busy samples, and milliseconds per request from those shares and the worker's CPU time per
request.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO,
    RESULTS_DIR,
    BenchmarkError,
    Body,
    find_data_dir,
    free_port,
    reference_image,
    run_wrk,
    sample_images,
    service_argv,
    start_server,
    stop_server,
)

# (stage, substrings of "function (file)" of a frame), tried from the innermost frame outwards; the first
# stage a frame matches takes the sample. Order matters: the model's own work before the pipeline around it.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("onnxruntime", ("onnxruntime",)),
    ("decode (OpenCV imdecode)", ("decode (app/preprocessing.py", "_decoded_bytes", "read_header", "decode_image")),
    ("stain mask (HSV threshold, opening)", ("stain_mask",)),
    ("white-cell search (closing, components)", ("locate_wbc", "_components", "_white_cells")),
    ("smear check", ("app/smear.py",)),
    ("crop, resize, model input", ("resize_to", "crop_window", "to_tensor", "cell_crops", "square_window",
                                   "preprocess (app/preprocessing.py")),
    ("response: pydantic models, JSON", ("pydantic", "serialize_response", "jsonable_encoder", "json", "model_dump")),
    ("multipart parsing", ("multipart", "form (starlette", "_get_form", "UploadFile", "datastructures")),
    ("logging", ("logging", "app/logs.py")),
    ("metrics", ("prometheus_client", "app/metrics.py")),
    ("pipeline glue (app code between the steps)", ("app/classification.py", "app/model.py", "app/routes",
                                                    "app/deps.py", "app/errors.py")),
    ("HTTP protocol (uvicorn, httptools)", ("httptools", "uvicorn", "app/http_guard.py")),
    ("middleware", ("app/middleware.py", "app/admission.py")),
    ("FastAPI routing and dependencies", ("fastapi", "starlette")),
    # Includes a pool thread handing its result back (call_soon_threadsafe), waiting for the GIL.
    ("thread hand-off (anyio, threads)", ("anyio", "threading.py", "concurrent/futures", "queue.py")),
    ("event loop (scheduling)", ("asyncio", "uvloop", "selectors")),
]
OTHER = "other"
# Threads that wait, which py-spy's idle detection does not see here: the event loop's thread while uvloop's
# C loop polls the socket (its innermost Python frame), the log writer between its writes (app/logs.py, under
# threading's own wait frames). (A pool thread waiting in its queue is seen idle.)
IDLE = "idle (waiting)"
IDLE_FRAMES = ("run (asyncio/runners.py",)
WAIT_FRAMES = ("_pause (app/logs.py",)


def _waiting(stack: list[str]) -> bool:
    """In one of WAIT_FRAMES, with nothing but threading's own frames inside it."""
    waits = [index for index, frame in enumerate(stack) if frame.startswith(WAIT_FRAMES)]
    return bool(waits) and all("(threading.py" in frame for frame in stack[waits[-1] + 1:])


def stage_of(stack: list[str]) -> str:
    """``stack``: frames outermost first, each "function (file:line)"."""
    if stack and (stack[-1].startswith(IDLE_FRAMES) or _waiting(stack)):
        return IDLE
    for frame in reversed(stack):
        for stage, needles in STAGES:
            if any(needle in frame for needle in needles):
                return stage
    return OTHER


def read_raw(path: Path) -> Counter:
    """py-spy's raw (collapsed) output: "frame;frame;... count" per line."""
    counts: Counter = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, number = line.rpartition(" ")
        if stack and number.isdigit():
            counts[stage_of(stack.split(";"))] += int(number)
    return counts


def _py_spy() -> str:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise BenchmarkError("py-spy is not installed: pip install -e '.[dev]' (or pip install py-spy)")
    return py_spy


def _start_record(py_spy: str, pid: int, seconds: float, rate: int, raw: Path) -> subprocess.Popen:
    raw.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", str(rate), "--duration", str(round(seconds)),
                             "--format", "raw", "--output", str(raw), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish_record(spy: subprocess.Popen, seconds: float, raw: Path) -> None:
    _, errors = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0 or not raw.exists():
        raise BenchmarkError(f"py-spy failed (it needs ptrace: run as root or set kernel.yama.ptrace_scope=0): "
                             f"{errors.strip()[-500:]}")


def _record(py_spy: str, pid: int, seconds: float, rate: int, raw: Path) -> None:
    _finish_record(_start_record(py_spy, pid, seconds, rate, raw), seconds, raw)


def profile(seconds: float, connections: int, rate: int, batch: int = 0) -> dict[str, Any]:
    py_spy = _py_spy()
    data_dir = find_data_dir()
    image = reference_image(data_dir)
    if batch:  # /classify/batch with that many TEST images: the figures are per image
        paths = sample_images(data_dir, batch)
        body = Body.write("profile", [("files", path.name, path.read_bytes()) for path in paths])
    else:
        body = Body.write("profile", [("file", image.name, image.read_bytes())])
    port = free_port()
    server = start_server("profile", service_argv(port, 1), port, 1)
    try:
        url = f"{server.url}/classify/batch" if batch else f"{server.url}/classify"
        run_wrk(url, body, connections, 3)  # warm-up
        raw = RESULTS_DIR / "tmp" / "profile.raw"
        spy = _start_record(py_spy, server.worker_pids[0], seconds, rate, raw)
        cpu_before = server.cpu_seconds()
        load = run_wrk(url, body, connections, seconds, server=server)
        cpu_used = server.cpu_seconds() - cpu_before
        _finish_record(spy, seconds, raw)
    finally:
        stop_server(server)
    counts = read_raw(raw)
    idle = counts.pop(IDLE, 0)
    total = sum(counts.values())
    requests = load["requests_per_s"] * seconds * (batch or 1)  # per image
    cpu_ms_per_request = cpu_used * 1000.0 / requests if requests else None
    stages = _stages(counts, cpu_ms_per_request)
    return {"image": f"{batch} TEST images a request, figures per image" if batch else str(image.relative_to(data_dir)),
            "connections": connections, "seconds": seconds,
            "requests_per_s": load["requests_per_s"], "latency_ms": load["latency_ms"],
            "worker_cpu_ms_per_request": round(cpu_ms_per_request, 3) if cpu_ms_per_request else None,
            "samples": total, "idle_samples": idle, "stages": stages}


def _classify_loop(seconds: float) -> None:
    """The child of ``--in-process``: says "ready" once warm, then calls classify() for ``seconds`` and prints
    its calls and CPU seconds as JSON."""
    from benchmarks.guard import _worker_classify, test_image

    image, _ = test_image()
    _, classify = _worker_classify()
    for _ in range(50):
        classify(image)
    print("ready", flush=True)
    calls, cpu_start, end = 0, time.process_time(), time.monotonic() + seconds
    while time.monotonic() < end:
        classify(image)
        calls += 1
    print(json.dumps({"calls": calls, "cpu_s": time.process_time() - cpu_start}), flush=True)


def profile_in_process(seconds: float, rate: int) -> dict[str, Any]:
    py_spy = _py_spy()
    loop = subprocess.Popen([sys.executable, "-c", f"from benchmarks.profile import _classify_loop; "
                             f"_classify_loop({seconds + 2.0})"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert loop.stdout is not None
        if loop.stdout.readline().strip() != "ready":
            raise BenchmarkError("the classify() loop did not start: run it alone to see why "
                                 "(python -c 'from benchmarks.profile import _classify_loop; _classify_loop(1)')")
        raw = RESULTS_DIR / "tmp" / "profile-in-process.raw"
        _record(py_spy, loop.pid, seconds, rate, raw)
        figures = json.loads(loop.stdout.readline())
    finally:
        loop.kill()
        loop.wait()
    counts = read_raw(raw)
    idle = counts.pop(IDLE, 0)
    total = sum(counts.values())
    cpu_ms_per_call = figures["cpu_s"] * 1000.0 / figures["calls"]
    return {"image": "the guard's test image, classify() in process", "seconds": seconds,
            "worker_cpu_ms_per_request": round(cpu_ms_per_call, 3), "samples": total, "idle_samples": idle,
            "stages": _stages(counts, cpu_ms_per_call)}


def _stages(counts: Counter, cpu_ms_per_request: float | None) -> dict[str, dict[str, float | None]]:
    total = sum(counts.values())
    return {stage: {"share": round(n / total, 4),
                    "ms_per_request": round(n / total * cpu_ms_per_request, 3) if cpu_ms_per_request else None}
            for stage, n in counts.most_common()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--batch", type=int, default=0, metavar="N",
                        help="post N TEST images to /classify/batch instead; the figures are per image")
    parser.add_argument("--in-process", action="store_true",
                        help="profile classify() called in a loop in process, no server, instead")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "profile.json")
    args = parser.parse_args(argv)
    try:
        if args.in_process:
            result = profile_in_process(args.seconds, args.rate)
        else:
            result = profile(args.seconds, args.connections, args.rate, args.batch)
    except BenchmarkError as exc:
        print(f"benchmarks.profile: {exc}", file=sys.stderr)
        return 2
    if args.in_process:
        print(f"classify() in process: {result['worker_cpu_ms_per_request']} ms CPU per call, {result['samples']} samples")
    else:
        print(f"{result['requests_per_s']:.0f} requests/s, p50 {result['latency_ms']['p50']:.2f} ms, worker CPU "
              f"{result['worker_cpu_ms_per_request']} ms per {'image' if args.batch else 'request'}, "
              f"{result['samples']} samples")
    for stage, figures in result["stages"].items():
        print(f"  {figures['share']:6.1%}  {figures['ms_per_request'] or 0:6.3f} ms  {stage}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
