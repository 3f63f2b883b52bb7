"""The benchmark: every figure in one run on one machine, so that they compare as ratios.

    python -m benchmarks.run                 # the full run (about 9 minutes), on a quiet machine
    python -m benchmarks.run --quick         # a short run (about 2 minutes), to check the harness

Needs the real data set (BLOODCELLS_DATA_DIR), wrk (``apt-get install -y wrk``) and, for the
baseline, the train extra (TensorFlow). Prints a table and writes the JSON (--out, default
benchmarks/results/results.json) with the machine, versions, git commit and every figure.

1. The floor, in process on one core (``benchmarks.floor``).
2. Single-client latency over HTTP (wrk, one keep-alive connection) of /classify with a real
   320x240 TEST image and a 640x480 full-field frame, each mode, against the default
   ``bloodcells serve`` (one worker per CPU).
3. Throughput of ``bloodcells serve`` with 2 and 1 workers: wrk at each concurrency for a fixed time,
   /classify and /classify/batch, with BLOODCELLS_MAX_PENDING raised so that nothing is shed (capacity;
   the behaviour past it is ``benchmarks.overload``'s).
4. The Keras baseline (``benchmarks.keras_server``) under the same wrk runs; ratios.
5. Resources: memory per worker after warm-up, after the load and after a sustained run, start-up
   time to /readyz, installed size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import environment
from benchmarks.common import (
    REPO,
    RESULTS_DIR,
    BenchmarkError,
    Body,
    Server,
    cpu_seconds,
    find_data_dir,
    free_port,
    full_field_frames,
    http_request,
    keras_argv,
    reference_image,
    run_wrk,
    sample_images,
    service_argv,
    start_server,
    stop_server,
    wrk_path,
)

DEFAULT_OUT = RESULTS_DIR / "results.json"
# The throughput runs measure capacity, not load shedding: every connection's request is admitted (at
# 128 connections the default of 32 per worker would shed). Shedding is benchmarks.overload's.
CAPACITY_ENV = {"BLOODCELLS_MAX_PENDING": "1024"}
CONCURRENCIES = (1, 8, 32, 128)
BATCH_SIZE = 32
BATCH_CONCURRENCIES = (1, 2, 8)  # 2: one batch in flight per worker

# The targets, checked at the end of every run.
TARGET_KERAS_RATIO = 30.0
TARGET_FLOOR_FRACTION = 0.5
TARGET_P50_MS = 3.0
TARGET_P99_MS = 10.0
TARGET_BATCH_RATIO = 3.0
TARGET_RSS_MIB = 150.0
TARGET_STARTUP_S = 2.0
TARGET_GROWTH_FRACTION = 0.05


@dataclass(frozen=True)
class Plan:
    quick: bool
    duration_s: float  # each wrk measurement
    warmup_s: float
    sustained_s: float
    floor_images: int
    floor_repeats: int
    concurrencies: tuple[int, ...]
    service_workers: tuple[int | None, ...]  # None: the default (the CPU count)
    keras_workers: tuple[int, ...]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        quick = args.quick
        return cls(quick=quick, duration_s=args.duration or (2.0 if quick else 15.0),
                   warmup_s=1.0 if quick else 3.0, sustained_s=args.sustained or (0.0 if quick else 60.0),
                   floor_images=40 if quick else 200, floor_repeats=2 if quick else 5,
                   concurrencies=tuple(args.concurrency or CONCURRENCIES),
                   service_workers=(None, 1), keras_workers=() if args.skip_keras else tuple(args.keras_workers))


def log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- phases


def measure_floor(plan: Plan, data_dir: Path, frames: list[bytes], reference: bytes) -> dict[str, Any]:
    from benchmarks.floor import floor, load_models

    images = [path.read_bytes() for path in sample_images(data_dir, plan.floor_images)]
    models = load_models(REPO / "models")
    return floor(models, images, frames, reference, plan.floor_repeats)


def startup(server: Server) -> dict[str, Any]:
    """Start-up times, and the CPU time each process had used by then: on a busy machine, the
    figure that says what start-up costs on a quiet one."""
    supervisor = [] if server.process.pid in server.worker_pids else [server.process.pid]
    return {"first_ready_s": round(server.first_ready_s or 0.0, 3),
            "all_workers_ready_s": round(server.all_ready_s or 0.0, 3),
            "workers": server.workers, "worker_pids": server.worker_pids,
            "cpu_s_at_ready": {
                "supervisor": round(sum(cpu_seconds(pid) for pid in supervisor), 2) if supervisor else None,
                "workers": [round(cpu_seconds(pid), 2) for pid in server.worker_pids]}}


def warm_up(server: Server, bodies: list[Body], plan: Plan, path: str = "/classify") -> None:
    for body in bodies:
        run_wrk(server.url + path, body, connections=2 * max(1, server.workers), duration_s=plan.warmup_s)


def measure_service(plan: Plan, workers: int | None, bodies: dict[str, Body], modes: list[str],
                    default_workers: int) -> dict[str, Any]:
    port = free_port()
    count = workers or default_workers
    name = f"service-{'default' if workers is None else workers}"
    log(f"{name}: bloodcells serve {'(default workers)' if workers is None else f'--workers {workers}'}")
    server = start_server(name, service_argv(port, workers), port, count, env=CAPACITY_ENV)
    result: dict[str, Any] = {"command": "bloodcells serve" + ("" if workers is None else f" --workers {workers}"),
                                 "workers": count, "startup": startup(server)}
    try:
        status, ready = http_request(port, "GET", "/readyz")
        result["default_mode"] = json.loads(ready)["default_mode"]
        warm_up(server, [bodies["320x240"], bodies["640x480"]], plan)
        warm_up(server, [bodies["batch"]], plan, "/classify/batch")
        memory = {"after_warmup": server.memory()}
        if workers is None:  # the deployed configuration: the single-client latency matrix
            latency = []
            for size in ("320x240", "640x480"):
                for mode in modes:
                    log(f"{name}: latency, one client, {size} {mode}")
                    run = run_wrk(f"{server.url}/classify?mode={mode}", bodies[size], 1, plan.duration_s,
                                  server=server)
                    latency.append({"image": size, "mode": mode, **run})
            result["latency"] = latency
        classify = []
        for connections in plan.concurrencies:
            log(f"{name}: /classify 320x240, {connections} connections")
            classify.append(run_wrk(server.url + "/classify", bodies["320x240"], connections, plan.duration_s,
                                    server=server))
        result["classify"] = classify
        batch = []
        for connections in BATCH_CONCURRENCIES:
            log(f"{name}: /classify/batch of {BATCH_SIZE}, {connections} connections")
            batch.append(run_wrk(server.url + "/classify/batch", bodies["batch"], connections, plan.duration_s,
                                  server=server))
        result["batch"] = batch
        memory["after_load"] = server.memory()
        if plan.sustained_s and workers is None:
            log(f"{name}: sustained /classify, 32 connections, {plan.sustained_s:.0f} s")
            result["sustained"] = run_wrk(server.url + "/classify", bodies["320x240"], 32, plan.sustained_s,
                                          server=server)
            memory["after_sustained"] = server.memory()
        result["memory"] = memory
    finally:
        stop_server(server)
    return result


def measure_keras(plan: Plan, workers: int, bodies: dict[str, Body]) -> dict[str, Any]:
    port = free_port()
    name = f"keras-{workers}"
    log(f"{name}: uvicorn benchmarks.keras_server:app --workers {workers}")
    server = start_server(name, keras_argv(port, workers), port, workers, timeout=300.0)
    result: dict[str, Any] = {"command": f"uvicorn benchmarks.keras_server:app --workers {workers}",
                                 "workers": workers, "startup": startup(server)}
    try:
        warm_up(server, [bodies["320x240"]], plan)
        memory = {"after_warmup": server.memory()}
        classify = []
        # At least 10 s: at 128 connections and a few dozen requests/s, a request waits seconds in line.
        duration = max(plan.duration_s, 10.0)
        for connections in plan.concurrencies:
            log(f"{name}: /classify 320x240, {connections} connections")
            classify.append(run_wrk(server.url + "/classify", bodies["320x240"], connections, duration,
                                    timeout_s=30.0, server=server))
        result["classify"] = classify
        memory["after_load"] = server.memory()
        result["memory"] = memory
    finally:
        stop_server(server)
    return result


# ----------------------------------------------------------------------------------- ratios, targets


def best(runs: list[dict], key: str = "requests_per_s") -> dict:
    return max(runs, key=lambda run: run[key])


def at(runs: list[dict], connections: int) -> dict | None:
    return next((run for run in runs if run["connections"] == connections), None)


def ratios_and_targets(results: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    servers = results["servers"]
    default = servers["service-default"]
    one = servers.get("service-1")
    floor = results["floor"]["pipeline"]
    mode = default["default_mode"]
    cores = results["machine"]["cpus_allowed"]
    # The floor on the very image the HTTP runs post (the sample's average is in the floor table).
    reference_floor = floor[f"floor {mode} reference image"]
    floor_per_core = reference_floor["images_per_s"]
    ratios: dict[str, Any] = {
        "default_mode": mode, "floor_images_per_s_per_core": floor_per_core,
        "floor_images_per_s_machine": round(floor_per_core * cores, 1),
        "floor_sample_images_per_s_per_core": floor[f"floor {mode} 320x240 batch 1"]["images_per_s"]}
    service_best = best(default["classify"])
    # CPU time per request beyond the in-process floor: what HTTP, the framework and the answer cost,
    # measured as CPU time, so a busy machine disturbs it least.
    for run in default["classify"]:
        if run["server_cpu_ms_per_request"]:
            ratios[f"server_cpu_ms_per_request_c{run['connections']}"] = run["server_cpu_ms_per_request"]
    ratios["floor_cpu_ms_per_image"] = reference_floor["cpu_median_ms"]
    c8 = at(default["classify"], 8) or service_best
    if c8["server_cpu_ms_per_request"]:
        ratios["http_overhead_cpu_ms_per_request"] = round(
            c8["server_cpu_ms_per_request"] - reference_floor["cpu_median_ms"], 3)
    ratios["service_best_requests_per_s"] = service_best["requests_per_s"]
    ratios["service_best_at_connections"] = service_best["connections"]
    ratios["service_vs_machine_floor"] = round(service_best["requests_per_s"] / (floor_per_core * cores), 3)
    if one:
        ratios["one_worker_vs_one_core_floor"] = round(best(one["classify"])["requests_per_s"] / floor_per_core, 3)
    batch_best = best(default["batch"], "images_per_s")
    ratios["batch_best_images_per_s"] = batch_best["images_per_s"]
    ratios["batch_vs_single_best"] = round(batch_best["images_per_s"] / service_best["requests_per_s"], 2)
    # The same in CPU time per image (server side): what batching saves where the CPU is the limit,
    # the figure a busy machine disturbs least.
    batch_cpu = [run["server_cpu_ms_per_request"] / BATCH_SIZE for run in default["batch"]
                 if run["server_cpu_ms_per_request"]]
    single_cpu = [run["server_cpu_ms_per_request"] for run in default["classify"] if run["server_cpu_ms_per_request"]]
    if batch_cpu and single_cpu:
        ratios["batch_cpu_ms_per_image"] = round(min(batch_cpu), 3)
        ratios["single_over_batch_cpu_per_image"] = round(min(single_cpu) / min(batch_cpu), 2)
    single_c1, batch_c1 = at(default["classify"], 1), at(default["batch"], 1)
    if single_c1 and batch_c1:
        ratios["batch_vs_single_one_client"] = round(batch_c1["images_per_s"] / single_c1["requests_per_s"], 2)
    keras = servers.get(f"keras-{default['workers']}")
    if keras:
        keras_best = best(keras["classify"])
        ratios["keras_best_requests_per_s"] = keras_best["requests_per_s"]
        ratios["throughput_vs_keras_best"] = round(service_best["requests_per_s"] / keras_best["requests_per_s"], 1)
        by_connections = {}
        for run in default["classify"]:
            other = at(keras["classify"], run["connections"])
            if other and other["requests_per_s"]:
                by_connections[str(run["connections"])] = round(run["requests_per_s"] / other["requests_per_s"], 1)
        ratios["throughput_vs_keras_by_connections"] = by_connections
        service_p50, keras_p50 = at(default["classify"], 1), at(keras["classify"], 1)
        if service_p50 and keras_p50:
            ratios["p50_one_client_keras_over_service"] = round(
                keras_p50["latency_ms"]["p50"] / service_p50["latency_ms"]["p50"], 1)

    latency = next(row for row in default["latency"] if row["image"] == "320x240" and row["mode"] == mode)
    service_runs = [run for server in servers.values() if server["command"].startswith("bloodcells")
                    for group in ("latency", "classify", "batch") for run in server.get(group, [])]
    service_runs += [server["sustained"] for server in servers.values() if "sustained" in server]
    errors = sum(run["error_count"] for run in service_runs)
    memory = default["memory"]
    last = memory.get("after_sustained") or memory["after_load"]
    rss = max(m["max_worker_rss_mib"] for server in servers.values() if server["command"].startswith("bloodcells")
              for m in server["memory"].values())

    def worker_rss(snapshot: dict) -> int:
        return sum(m.get("rss_kib", 0) for m in snapshot["workers"].values())

    # Growth over the sustained run, from the end of the measured load to its end (none in --quick).
    growth = ((worker_rss(last) - worker_rss(memory["after_load"])) / max(1, worker_rss(memory["after_load"]))
              if "after_sustained" in memory else None)
    targets = [
        {"target": f"throughput >= {TARGET_FLOOR_FRACTION:g} x in-process floor (cores x per-core)",
         "value": ratios["service_vs_machine_floor"], "limit": TARGET_FLOOR_FRACTION,
         "met": ratios["service_vs_machine_floor"] >= TARGET_FLOOR_FRACTION},
        {"target": f"single client p50 <= {TARGET_P50_MS:g} ms (320x240, {mode}, default serve)",
         "value": latency["latency_ms"]["p50"], "limit": TARGET_P50_MS,
         "met": latency["latency_ms"]["p50"] <= TARGET_P50_MS},
        {"target": f"single client p99 <= {TARGET_P99_MS:g} ms", "value": latency["latency_ms"]["p99"],
         "limit": TARGET_P99_MS, "met": latency["latency_ms"]["p99"] <= TARGET_P99_MS},
        {"target": f"batch images/s >= {TARGET_BATCH_RATIO:g} x single-request (best vs best)",
         "value": ratios["batch_vs_single_best"], "limit": TARGET_BATCH_RATIO,
         "met": ratios["batch_vs_single_best"] >= TARGET_BATCH_RATIO},
        {"target": f"memory per worker <= {TARGET_RSS_MIB:g} MiB RSS (largest worker, any time)", "value": rss,
         "limit": TARGET_RSS_MIB, "met": rss <= TARGET_RSS_MIB},
        {"target": f"no memory growth over the sustained run (<= {TARGET_GROWTH_FRACTION:.0%})",
         "value": None if growth is None else round(growth, 4), "limit": TARGET_GROWTH_FRACTION,
         "met": None if growth is None else growth <= TARGET_GROWTH_FRACTION},
        {"target": f"start-up to /readyz < {TARGET_STARTUP_S:g} s (default serve, every worker ready)",
         "value": default["startup"]["all_workers_ready_s"], "limit": TARGET_STARTUP_S,
         "met": default["startup"]["all_workers_ready_s"] < TARGET_STARTUP_S},
        {"target": "zero errors in every service run", "value": errors, "limit": 0, "met": errors == 0},
    ]
    if "throughput_vs_keras_best" in ratios:
        targets.insert(0, {"target": f"throughput >= {TARGET_KERAS_RATIO:g} x Keras baseline (best vs best)",
                           "value": ratios["throughput_vs_keras_best"], "limit": TARGET_KERAS_RATIO,
                           "met": ratios["throughput_vs_keras_best"] >= TARGET_KERAS_RATIO})
    return ratios, targets


# ------------------------------------------------------------------------------------------- report


def table(headers: list[str], rows: list[list[object]]) -> list[str]:
    cells = [[str(value) for value in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(value.ljust(w) for value, w in zip(row, widths)) + " |" for row in cells]
    return lines


def report(results: dict[str, Any]) -> str:
    machine, meta = results["machine"], results["meta"]
    lines = [f"## Benchmark, {meta['timestamp']} ({'quick' if meta['quick'] else 'full'} run)", "",
             f"`{meta['command']}` at {results['git']['commit'][:12]}"
             f"{' (uncommitted changes)' if results['git']['dirty'] else ''}; "
             f"{machine['cpu']}, {machine['cpus_allowed']} CPUs; CPU busy before the run: "
             f"{meta['cpu_busy_before']:.0%}, load average {machine['load_average']} -> {meta['load_average_after']}"
             + (" **(machine loaded by other work: figures are noisy)**" if meta["cpu_busy_before"] > 0.15 else ""), ""]
    floor = results["floor"]
    lines += ["### 1. Floor, in process, one core (ms per image)", ""]
    rows = [[name, s["median_ms"], s["p99_ms"], s["cpu_median_ms"], s["images_per_s"]]
            for group in ("stages", "pipeline") for name, s in floor[group].items()]
    lines += table(["stage", "median", "p99", "CPU median", "images/s"], rows) + [""]
    servers = results["servers"]
    default = servers["service-default"]
    lines += [f"### 2. One keep-alive client, /classify, `{default['command']}` ({default['workers']} workers), ms", ""]
    rows = [[row["image"], row["mode"], row["latency_ms"]["p50"], row["latency_ms"]["p90"], row["latency_ms"]["p99"],
             row["requests_per_s"], row["server_cpu_ms_per_request"], row["error_count"]]
            for row in default.get("latency", [])]
    lines += table(["image", "mode", "p50", "p90", "p99", "req/s", "server CPU ms/req", "errors"], rows) + [""]
    lines += ["### 3-4. Throughput (wrk, keep-alive, 320x240 TEST image, default mode)", ""]
    rows = []
    for server in servers.values():
        for run in server["classify"]:
            rows.append([server["command"], "/classify", run["connections"], run["requests_per_s"], run["images_per_s"],
                         run["latency_ms"]["p50"], run["latency_ms"]["p99"], run["server_cpu_ms_per_request"],
                         run["wrk_cpu_ms_per_request"], run["error_count"]])
        for run in server.get("batch", []):
            rows.append([server["command"], f"/classify/batch ({BATCH_SIZE})", run["connections"], run["requests_per_s"],
                         run["images_per_s"], run["latency_ms"]["p50"], run["latency_ms"]["p99"],
                         run["server_cpu_ms_per_request"], run["wrk_cpu_ms_per_request"], run["error_count"]])
    lines += table(["server", "endpoint", "connections", "req/s", "images/s", "p50 ms", "p99 ms", "server CPU ms/req",
                    "wrk CPU ms/req", "errors"], rows) + [""]
    lines += ["### 5. Resources", ""]
    rows = []
    for server in servers.values():
        memory = server["memory"]
        snapshots = " / ".join(f"{m['max_worker_rss_mib']}" for m in memory.values())
        cpu = server["startup"]["cpu_s_at_ready"]
        rows.append([server["command"], server["startup"]["first_ready_s"], server["startup"]["all_workers_ready_s"],
                     f"{cpu['supervisor'] if cpu['supervisor'] is not None else '-'}; {', '.join(map(str, cpu['workers']))}",
                     snapshots + f" ({', '.join(memory)})",
                     " / ".join(f"{m['max_worker_pss_mib']}" for m in memory.values())])
    lines += table(["server", "first /readyz s", "all workers ready s", "CPU s to ready (supervisor; workers)",
                    "max worker RSS MiB", "max worker PSS MiB"], rows)
    sizes = results.get("install_size")
    if sizes:
        lines += ["", f"Installed size: service run-time {sizes['service_runtime']['total_mib']} MiB "
                      f"({sizes['service_runtime']['distributions']} distributions), with the train extra "
                      f"{sizes['service_with_train_extra']['total_mib']} MiB; the Keras baseline's stack "
                      f"{sizes['keras_baseline']['total_mib']} MiB."]
    lines += ["", "### Ratios and targets", ""]
    lines += table(["ratio", "value"], [[k, v] for k, v in results["ratios"].items()]) + [""]
    lines += table(["target", "measured", "limit", "met"],
                   [[t["target"], "not measured" if t["value"] is None else t["value"], t["limit"],
                     "n/a" if t["met"] is None else "yes" if t["met"] else "**NO**"] for t in results["targets"]])
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (2 s each), to check the harness")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="JSON output (default benchmarks/results/results.json)")
    parser.add_argument("--markdown", type=Path, help="also write the report's tables to this Markdown file")
    parser.add_argument("--duration", type=float, help="seconds of each wrk measurement (default 15, quick 2)")
    parser.add_argument("--sustained", type=float, help="seconds of the sustained run (default 60, quick none)")
    parser.add_argument("--concurrency", type=int, nargs="+", help=f"wrk connections (default {CONCURRENCIES})")
    parser.add_argument("--keras-workers", type=int, nargs="+", default=[2], help="baseline worker counts (default 2)")
    parser.add_argument("--skip-keras", action="store_true", help="no baseline (no TensorFlow needed)")
    args = parser.parse_args(argv)
    plan = Plan.from_args(args)
    if wrk_path() is None:
        print("benchmarks: wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    try:
        data_dir = find_data_dir()
    except BenchmarkError as exc:
        print(f"benchmarks: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {"timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                 "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
                 "quick": plan.quick, "plan": plan.__dict__, "data_dir": str(data_dir),
                 "reference_image": str(reference_image(data_dir).relative_to(data_dir))},
        "machine": environment.machine(), "versions": environment.versions(), "git": environment.git_state(),
        "models": environment.models(REPO / "models"),
    }
    log("measuring how busy the machine is (1 s)")
    results["meta"]["cpu_busy_before"] = environment.cpu_busy_fraction()
    image = reference_image(data_dir).read_bytes()
    frame = full_field_frames(data_dir, [reference_image(data_dir)])[0]
    batch_images = [path.read_bytes() for path in sample_images(data_dir, BATCH_SIZE)]
    bodies = {"320x240": Body.write("classify-320x240", [("file", "cell.jpeg", image)]),
              "640x480": Body.write("classify-640x480", [("file", "field.jpeg", frame)]),
              "batch": Body.write(f"batch-{BATCH_SIZE}",
                                  [("files", f"{i}.jpeg", data) for i, data in enumerate(batch_images)])}
    results["meta"]["bodies_bytes"] = {name: body.path.stat().st_size for name, body in bodies.items()}

    log("in-process floor")
    frames = full_field_frames(data_dir, sample_images(data_dir, max(8, plan.floor_images // 4)), seed=1)
    results["floor"] = measure_floor(plan, data_dir, frames, image)
    modes = sorted({key.split()[1] for key in results["floor"]["stages"] if key.startswith("preprocess")})
    default_workers = len(os.sched_getaffinity(0))
    servers: dict[str, Any] = {}
    try:
        for workers in plan.service_workers:
            name = f"service-{'default' if workers is None else workers}"
            servers[name] = measure_service(plan, workers, bodies, modes, default_workers)
        for workers in plan.keras_workers:
            servers[f"keras-{workers}"] = measure_keras(plan, workers, bodies)
    except BenchmarkError as exc:
        print(f"benchmarks: {exc}", file=sys.stderr)
        return 1
    results["servers"] = servers
    log("installed sizes")
    results["install_size"] = environment.install_sizes()
    results["ratios"], results["targets"] = ratios_and_targets(results)
    results["meta"]["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    results["meta"]["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    text = report(results)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    log(f"JSON written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
