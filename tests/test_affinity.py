"""Pinning each worker to a CPU of its own: when, and that two workers never share one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import affinity


def test_only_as_many_workers_as_cpus_are_pinned() -> None:
    assert affinity.should_pin("auto", 2, [0, 1])
    assert affinity.should_pin("auto", 4, [2, 3, 6, 7])
    assert not affinity.should_pin("auto", 2, [0, 1, 2, 3])  # a CPU quota: the workers must stay free to move
    assert not affinity.should_pin("auto", 3, [0, 1])
    assert not affinity.should_pin("auto", 1, [0])
    assert not affinity.should_pin("off", 2, [0, 1])


def test_each_claim_gets_a_cpu_no_other_holds(tmp_path: Path) -> None:
    claims = [affinity.claim_cpu(tmp_path, [3, 5]) for _ in range(3)]
    assert claims == [3, 5, None]


CLAIM_AND_WAIT = """
import sys, time
from pathlib import Path
from app import affinity
print(affinity.claim_cpu(Path(sys.argv[1]), [0, 1]), flush=True)
time.sleep(60)
"""


def test_a_cpu_is_freed_when_its_worker_dies(tmp_path: Path) -> None:
    """The lock lasts as long as the process: a worker that replaces a dead one takes the CPU it left."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    first = subprocess.Popen([sys.executable, "-c", CLAIM_AND_WAIT, str(tmp_path)], stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "0"
        assert affinity.claim_cpu(tmp_path, [0, 1]) == 1
    finally:
        first.kill()
        first.wait()
    deadline = time.monotonic() + 10
    claimed = None
    while claimed is None and time.monotonic() < deadline:
        claimed = affinity.claim_cpu(tmp_path, [0])
    assert claimed == 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin a worker to either")
def test_pinning_moves_every_thread_of_the_process(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))[:2]
    script = f"""
import os, threading, time
from pathlib import Path
from app import affinity
affinity.allowed_cpus = lambda: {cpus}
before = threading.Thread(target=time.sleep, args=(1,)); before.start()
cpu = affinity.pin_worker("auto", 2, Path({str(tmp_path)!r}))
after = []
threading.Thread(target=lambda: after.append(os.sched_getaffinity(0))).start()
time.sleep(0.2)
print(cpu, sorted(os.sched_getaffinity(before.native_id)), sorted(after[0]))
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == f"{cpus[0]} [{cpus[0]}] [{cpus[0]}]"
