"""The CI regression guard (``benchmarks.guard``): the service must stay far faster than Keras, and the
HTTP path cheap next to the work itself (one client's latency, 32 clients' throughput).

Not a timed test: one short run measures the service over HTTP and the Keras baseline in process on
the same machine, and only their ratio is checked, with a wide margin, so a slow or busy machine does
not flake it. Skipped where wrk or TensorFlow is missing, unless BLOODCELLS_REQUIRE_BENCH=1 (CI).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import guard

pytestmark = pytest.mark.slow
REQUIRE_BENCH = os.environ.get("BLOODCELLS_REQUIRE_BENCH", "") not in ("", "0", "false")


def test_service_stays_far_faster_than_keras_predict() -> None:
    missing = guard.missing_requirements()
    if missing:
        message = f"the benchmark guard needs {'; '.join(missing)}"
        if REQUIRE_BENCH:
            pytest.fail(message + " (BLOODCELLS_REQUIRE_BENCH=1 makes it mandatory)")
        pytest.skip(message)
    # In a child process: TensorFlow stays out of the test session.
    completed = subprocess.run([sys.executable, "-m", "benchmarks.guard", "--json"], cwd=guard.REPO,
                               capture_output=True, text=True, timeout=300)
    assert completed.stdout.strip(), f"the guard printed nothing (exit {completed.returncode}):\n{completed.stderr}"
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    one, keras = result["one_client"], result["keras_in_process"]
    rounds = "; ".join(guard._round_line(number, r) for number, r in enumerate(result["rounds"], 1))
    summary = (f"service p50 {one['p50_ms']} ms over HTTP vs Keras predict {keras['median_ms']} ms in process: "
               f"{result['speedup']}x ({len(result['rounds'])} rounds: {rounds})")
    assert result["errors"] == 0, f"{result['errors']} failed requests; {summary}"
    assert result["in_process_parallel"]["images_per_s"] > 0 and result["parallel_scaling"] > 0
    assert result["speedup"] >= result["min_speedup"], (
        f"regression: {summary}, below the {result['min_speedup']:g}x floor (measured 20-70x when healthy); "
        "profile with `python -m benchmarks.profile`")
    assert result["http_overhead"] <= result["max_http_overhead"], (
        f"regression: one client's p50 over HTTP is {result['http_overhead']}x the in-process classify() "
        f"({result['in_process']['median_ms']} ms), over the {result['max_http_overhead']:g}x ceiling, "
        f"each figure from its best round; {summary}; profile with `python -m benchmarks.profile`")
    assert result["core_share"] >= result["min_core_share"], (
        f"regression: 32 clients get {result['core_share']} of the cores at the in-process rate, under the "
        f"{result['min_core_share']:g} floor, each figure from its best round; {summary}; "
        "profile with `python -m benchmarks.profile --connections 32`")
    assert completed.returncode == 0, completed.stderr


def test_host_load_splits_steal_from_other_processes() -> None:
    # /proc/stat's first line: user nice system idle iowait irq softirq steal (ticks, all CPUs together).
    ticks, cpus = os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1
    wall = 2 * ticks * cpus  # two seconds of every CPU
    before = [0] * 10
    steal, busy, server, wrk = ticks // 2, 3 * ticks, 1.5, 0.5  # 0.5 s stolen; 3 s busy, of which 2 s ours
    after = [busy, 0, 0, wall - busy - steal, 0, 0, 0, steal, 0, 0]
    host = guard._host_during(before, after, server, wrk)
    assert host == {"steal_cpus": 0.25, "other_busy_cpus": 0.5}
    assert guard._host_during(before, before, server, wrk) == {"steal_cpus": 0.0, "other_busy_cpus": 0.0}
