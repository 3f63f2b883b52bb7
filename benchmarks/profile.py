"""Where a request's time goes: py-spy samples a live `bloodcells serve` worker under wrk load.

    python -m benchmarks.profile [--seconds 20] [--connections 1] [--out benchmarks/results/profile.json]

One worker, one keep-alive wrk client (or ``--connections``) posting the benchmark's reference 320x240
TEST image to /classify. py-spy (PyPI) samples the worker's threads, idle ones excluded, and every sample
is put in one stage by the innermost frame that says which: the stages are listed in STAGES, in the
order they are tried. Samples of a thread waiting (the event loop in its poll, a pool thread in its queue) are left out: the
figures are shares of the worker's busy samples, and milliseconds per request
from those shares and the worker's CPU time per request.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import (
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


def profile(seconds: float, connections: int, rate: int, batch: int = 0) -> dict[str, Any]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise BenchmarkError("py-spy is not installed: pip install -e '.[dev]' (or pip install py-spy)")
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
        spy = subprocess.Popen([py_spy, "record", "--pid", str(server.worker_pids[0]), "--rate", str(rate),
                                "--duration", str(round(seconds)), "--format", "raw", "--output", str(raw),
                                "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        cpu_before = server.cpu_seconds()
        load = run_wrk(url, body, connections, seconds, server=server)
        cpu_used = server.cpu_seconds() - cpu_before
        _, errors = spy.communicate(timeout=seconds + 60)
        if spy.returncode != 0 or not raw.exists():
            raise BenchmarkError(f"py-spy failed (it needs ptrace: run as root or set kernel.yama.ptrace_scope=0): "
                                 f"{errors.strip()[-500:]}")
    finally:
        stop_server(server)
    counts = read_raw(raw)
    idle = counts.pop(IDLE, 0)
    total = sum(counts.values())
    requests = load["requests_per_s"] * seconds * (batch or 1)  # per image
    cpu_ms_per_request = cpu_used * 1000.0 / requests if requests else None
    stages = {stage: {"share": round(n / total, 4),
                      "ms_per_request": round(n / total * cpu_ms_per_request, 3) if cpu_ms_per_request else None}
              for stage, n in counts.most_common()}
    return {"image": f"{batch} TEST images a request, figures per image" if batch else str(image.relative_to(data_dir)),
            "connections": connections, "seconds": seconds,
            "requests_per_s": load["requests_per_s"], "latency_ms": load["latency_ms"],
            "worker_cpu_ms_per_request": round(cpu_ms_per_request, 3) if cpu_ms_per_request else None,
            "samples": total, "idle_samples": idle, "stages": stages}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--batch", type=int, default=0, metavar="N",
                        help="post N TEST images to /classify/batch instead; the figures are per image")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "profile.json")
    args = parser.parse_args(argv)
    try:
        result = profile(args.seconds, args.connections, args.rate, args.batch)
    except BenchmarkError as exc:
        print(f"benchmarks.profile: {exc}", file=sys.stderr)
        return 2
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
