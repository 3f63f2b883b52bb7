"""Pinning each worker of `bloodcells serve` to a CPU of its own: when, and that two workers never share one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from app import affinity

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def held() -> Iterator[list[IO[bytes]]]:
    """The lock files a test claims, closed (their CPUs released) afterwards."""
    handles: list[IO[bytes]] = []
    yield handles
    for handle in handles:
        handle.close()


def claim(directory: Path, cpus: list[int], held: list[IO[bytes]]) -> int | None:
    claimed = affinity.claim_cpu(directory, cpus)
    if claimed is None:
        return None
    held.append(claimed[1])
    return claimed[0]


def test_only_as_many_single_threaded_workers_as_whole_cpus_are_pinned() -> None:
    assert affinity.should_pin("auto", 2, 1, [0, 1], None)
    assert affinity.should_pin("auto", 4, 1, [2, 3, 6, 7], 4.0)
    assert not affinity.should_pin("auto", 2, 1, [0, 1, 2, 3], None)  # more CPUs: the workers must stay free to move
    assert not affinity.should_pin("auto", 2, 1, [0, 1], 1.5)  # a quota of less than the CPUs
    assert not affinity.should_pin("auto", 2, 2, [0, 1], None)  # two threads would share one CPU
    assert not affinity.should_pin("auto", 3, 1, [0, 1], None)
    assert not affinity.should_pin("auto", 1, 1, [0], None)
    assert not affinity.should_pin("off", 2, 1, [0, 1], None)


def test_each_claim_gets_a_cpu_no_other_holds(tmp_path: Path, held: list[IO[bytes]]) -> None:
    assert [claim(tmp_path, [3, 5], held) for _ in range(3)] == [3, 5, None]


def test_the_lock_folder_exists_for_serve_only_while_it_runs_and_when_pinning_applies(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(affinity, "allowed_cpus", lambda: [0, 1])
    monkeypatch.setattr(affinity, "cpu_quota", lambda: None)
    with affinity.cpu_locks("auto", 2, 1) as directory:
        assert directory is not None and directory.is_dir() and os.environ[affinity.LOCK_DIR_ENV] == str(directory)
    assert not directory.exists() and affinity.LOCK_DIR_ENV not in os.environ
    with affinity.cpu_locks("auto", 3, 1) as directory:
        assert directory is None and affinity.LOCK_DIR_ENV not in os.environ


def test_a_worker_outside_serve_is_never_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(affinity.LOCK_DIR_ENV, raising=False)
    assert affinity.pin_worker() is None


CLAIM_AND_WAIT = """
import sys, time
from pathlib import Path
from app import affinity
claimed = affinity.claim_cpu(Path(sys.argv[1]), [0, 1])
print(claimed[0], flush=True)
time.sleep(60)
"""


def test_a_cpu_is_freed_when_its_worker_dies(tmp_path: Path, held: list[IO[bytes]]) -> None:
    """The lock lasts as long as the process: a worker that replaces a dead one takes the CPU it left."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-c", CLAIM_AND_WAIT, str(tmp_path)], stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "0"
        assert claim(tmp_path, [0, 1], held) == 1
    finally:
        first.kill()
        first.wait()
    deadline = time.monotonic() + 10
    claimed = None
    while claimed is None and time.monotonic() < deadline:
        claimed = claim(tmp_path, [0], held)
    assert claimed == 0


PIN = """
import os, sys, threading, time
from pathlib import Path
from app import affinity
affinity.allowed_cpus = lambda: {cpus}
affinity.RETRY_S = 0.05
os.environ[affinity.LOCK_DIR_ENV] = sys.argv[1]
before = threading.Thread(target=time.sleep, args=(12,), daemon=True); before.start()
cpu = affinity.pin_worker()
deadline = time.monotonic() + 10
while os.sched_getaffinity(before.native_id) != {{{cpus}[{expect}]}} and time.monotonic() < deadline:
    time.sleep(0.02)
after = []
threading.Thread(target=lambda: after.append(os.sched_getaffinity(0))).start()
time.sleep(0.2)
print(cpu, sorted(os.sched_getaffinity(before.native_id)), sorted(after[0]), flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin a worker to either")
def test_every_thread_is_pinned_and_a_worker_started_early_waits_for_a_free_cpu(tmp_path: Path) -> None:
    """As in uvicorn's restart of its workers, where the new one starts before the old one stops: the new one
    finds every CPU taken, runs unpinned, and takes the CPU the old one leaves."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start(expect: int, linger: float) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", PIN.format(cpus=cpus, expect=expect), str(tmp_path),
                                 str(linger)], stdout=subprocess.PIPE, text=True, env=env)
    def first_line(process: subprocess.Popen) -> str:
        assert process.stdout is not None
        return process.stdout.readline().strip()

    # The first lingers long enough for the next two to start on a slow machine (~0.1 s each when idle).
    started = [start(0, 4.0)]
    try:
        assert first_line(started[0]) == f"{cpus[0]} [{cpus[0]}] [{cpus[0]}]"
        started.append(start(1, 30.0))
        assert first_line(started[1]) == f"{cpus[1]} [{cpus[1]}] [{cpus[1]}]"
        started.append(start(0, 0.0))  # every CPU taken: pinned in the background once the first one exits
        assert first_line(started[2]) == f"None [{cpus[0]}] [{cpus[0]}]"
    finally:
        for process in started:
            process.kill()
            process.wait()


def test_the_cpu_quota_is_read_from_the_cgroup_of_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cgroup"
    (root / "kubepods" / "pod1").mkdir(parents=True)
    (root / "kubepods" / "pod1" / "cpu.max").write_text("150000 100000\n")
    real_path = Path

    def rooted(*parts: str | Path) -> Path:
        path = real_path(*parts)
        if str(path) == "/proc/self/cgroup":
            return tmp_path / "self-cgroup"
        if str(path).startswith("/sys/fs/cgroup"):
            return root / path.relative_to("/sys/fs/cgroup")
        return path
    monkeypatch.setattr(affinity, "Path", rooted)
    (tmp_path / "self-cgroup").write_text("0::/kubepods/pod1\n")
    assert affinity.cpu_quota() == 1.5
    (root / "kubepods" / "pod1" / "cpu.max").write_text("max 100000\n")
    assert affinity.cpu_quota() is None
