"""Worker memory under each kind of load, and what the glibc malloc settings cost in CPU.

    python -m benchmarks.memory                     # 2 workers, then 1, with the service's settings
    python -m benchmarks.memory --workers 1 --env MALLOC_MMAP_THRESHOLD_=131072   # try other settings
    python -m benchmarks.memory --cpu               # in-process CPU per classification, settings on/off
    python -m benchmarks.memory --cpu --env MALLOC_MMAP_THRESHOLD_=131072         # ... with other settings
    python -m benchmarks.memory --server-cpu        # the same A/B on `bloodcells serve` over HTTP (wrk)

Memory: ``bloodcells serve`` as deployed; the largest worker's RSS when ready, after every mode at
320x240 and 640x480 (4 connections, 2 s each), after batches of 32 (4 connections, 3 s) and after
32 connections on /classify (5 s). ``--env`` variables reach the server's processes; glibc reads
``MALLOC_*`` at start-up and ``app/malloc.py`` leaves those set there alone, so they override it.

Server CPU: ``bloodcells serve`` (2 workers) with the service's settings and with glibc-like ones
(64 arenas, mmap threshold 32 MiB, trim threshold 64 MiB: what glibc's dynamic thresholds reach after
the first large frees), alternating, 2 rounds; server CPU per /classify request at 1 and 8 connections.

CPU: the default model's ``classify()`` on the reference image, 2,000 calls after 200 warm-up ones,
in fresh processes alternating with and without ``app.malloc.bound_heap()``; medians of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks.common import (
    BenchmarkError,
    Body,
    find_data_dir,
    free_port,
    full_field_frames,
    reference_image,
    run_wrk,
    sample_images,
    service_argv,
    start_server,
    stop_server,
)

MODES = ("crop", "color", "original")
CPU_PROBE = """
import sys, time
from pathlib import Path
import cv2
from app import classification
from app.malloc import bound_heap
from app.registry import ModelRegistry
if sys.argv[1] == "on":
    bound_heap()
cv2.setNumThreads(1)
registry = ModelRegistry.load(Path("models"), threads=1)
model, data = registry.get(None), Path(sys.argv[2]).read_bytes()
for _ in range(200):
    classification.classify(model, data, classification.Limits(), registry.cell_model)
start = time.process_time()
for _ in range(2000):
    classification.classify(model, data, classification.Limits(), registry.cell_model)
print((time.process_time() - start) / 2000 * 1000)
"""


def measure_memory(workers: int, env: dict[str, str]) -> dict[str, float | None]:
    data_dir = find_data_dir()
    image = reference_image(data_dir)
    bodies = {"320x240": Body.write("memory-320x240", [("file", "cell.jpeg", image.read_bytes())]),
              "640x480": Body.write("memory-640x480", [("file", "field.jpeg", full_field_frames(data_dir, [image])[0])]),
              "batch": Body.write("memory-batch", [("files", f"{i}.jpeg", path.read_bytes())
                                                   for i, path in enumerate(sample_images(data_dir, 32))])}
    port = free_port()
    server = start_server("memory", service_argv(port, workers), port, workers, env=env)
    try:
        figures = {"ready": server.memory()["max_worker_rss_mib"]}
        for mode in MODES:
            for size in ("320x240", "640x480"):
                run_wrk(f"{server.url}/classify?mode={mode}", bodies[size], connections=4, duration_s=2, server=server)
        figures["every_mode"] = server.memory()["max_worker_rss_mib"]
        run_wrk(server.url + "/classify/batch", bodies["batch"], connections=4, duration_s=3, server=server)
        figures["batches"] = server.memory()["max_worker_rss_mib"]
        run_wrk(server.url + "/classify", bodies["320x240"], connections=32, duration_s=5, server=server)
        final = server.memory()
        figures["c32"] = final["max_worker_rss_mib"]
        figures["pss_at_end"] = final["max_worker_pss_mib"]
        return figures
    finally:
        stop_server(server)


def measure_cpu(rounds: int, env: dict[str, str]) -> dict[str, float]:
    """``env`` applies to the runs with the settings on (where it sets them, it overrides app.malloc's)."""
    image = str(reference_image(find_data_dir()))
    plain = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    times: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(rounds):
        for setting in ("off", "on"):
            completed = subprocess.run([sys.executable, "-c", CPU_PROBE, setting, image], capture_output=True,
                                       text=True, check=True, env=plain if setting == "off" else {**plain, **env})
            times[setting].append(float(completed.stdout.strip().splitlines()[-1]))
    return {f"cpu_ms_per_classification_{key}": round(statistics.median(value), 3) for key, value in times.items()}


GLIBC_LIKE = {"MALLOC_ARENA_MAX": "64", "MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "67108864"}


def measure_server_cpu(rounds: int) -> dict[str, dict[str, float]]:
    body = Body.write("memory-ab", [("file", "cell.jpeg", reference_image(find_data_dir()).read_bytes())])
    samples: dict[str, dict[str, list[float]]] = {"bounded": {"c1": [], "c8": []}, "glibc_like": {"c1": [], "c8": []}}
    for _ in range(rounds):
        for name, env in (("bounded", {}), ("glibc_like", GLIBC_LIKE)):
            port = free_port()
            server = start_server("memory-ab", service_argv(port, 2), port, 2, env=env)
            try:
                run_wrk(server.url + "/classify", body, connections=2, duration_s=3, server=server)
                for connections in (1, 8):
                    result = run_wrk(server.url + "/classify", body, connections=connections, duration_s=8, server=server)
                    samples[name][f"c{connections}"].append(float(result["server_cpu_ms_per_request"]))
            finally:
                stop_server(server)
    return {name: {key: round(statistics.median(values), 3) for key, values in by_c.items()}
            for name, by_c in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment variable for the server's processes (repeatable)")
    parser.add_argument("--cpu", action="store_true", help="measure the CPU cost of the malloc settings instead")
    parser.add_argument("--server-cpu", action="store_true",
                        help="measure server CPU per request with the settings and with glibc-like ones")
    parser.add_argument("--rounds", type=int, default=3, help="--cpu, --server-cpu: runs per setting")
    args = parser.parse_args(argv)
    try:
        env = dict(item.split("=", 1) for item in args.env)
        if args.server_cpu:
            print(json.dumps({"server_cpu_ms_per_request": measure_server_cpu(args.rounds)}))
            return 0
        if args.cpu:
            print(json.dumps({"env": env, **measure_cpu(args.rounds, env)}))
            return 0
        for workers in args.workers:
            started = time.perf_counter()
            figures = measure_memory(workers, env)
            print(json.dumps({"workers": workers, "env": env, "rss_mib": figures,
                              "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    except BenchmarkError as exc:
        print(f"benchmarks.memory: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
