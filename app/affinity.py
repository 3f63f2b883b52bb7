"""One CPU per worker, where a server's workers are exactly as many as the CPUs it may run on.

Two workers pinned to the two CPUs of this machine served 8-10% more requests at 8 and 32 clients than the
same workers left to the scheduler, which moves each worker's threads between the cores and their caches
(``python -m benchmarks.settings`` with ``BLOODCELLS_CPU_AFFINITY`` off and auto; benchmarks/README.md).
Pinning is left off where there are more CPUs than workers (a container limited by CPU quota sees every CPU
of its node: pinned, its workers could not move off a CPU that another program keeps busy) or fewer.

A worker claims the first free CPU by an exclusive lock on a file named after it, in a folder that every
worker of one server shares; the lock lasts as long as the worker, so a worker started in place of one that
died takes the CPU it left.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO, Literal

CpuAffinity = Literal["auto", "off"]

# The claimed lock's file, held open for the life of the process: closing it would release the CPU.
_claimed: list[IO[bytes]] = []


def allowed_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def should_pin(setting: CpuAffinity, workers: int, cpus: list[int]) -> bool:
    return setting == "auto" and workers > 1 and workers == len(cpus)


def claim_cpu(directory: Path, cpus: list[int]) -> int | None:
    """The first of ``cpus`` that no other process holds the lock of in ``directory``, now held by this one;
    None when every one is taken (more workers started than CPUs, for a moment during a restart)."""
    for cpu in cpus:
        handle = open(directory / f"cpu-{cpu}.lock", "wb")  # noqa: SIM115 - held open while the process lives
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _claimed.append(handle)
        return cpu
    return None


def pin_worker(setting: CpuAffinity, workers: int, directory: Path | None) -> int | None:
    """Pin this worker's threads, and those it starts from now on, to a CPU of its own when ``should_pin``;
    the CPU, or None when it stays unpinned."""
    cpus = allowed_cpus()
    if directory is None or not should_pin(setting, workers, cpus):
        return None
    cpu = claim_cpu(directory, cpus)
    if cpu is not None:
        for thread in _threads():
            os.sched_setaffinity(thread, {cpu})
    return cpu


def _threads() -> list[int]:
    """This process's thread ids (the log writer and uvicorn's own started before the lifespan); 0, the calling
    thread, where /proc cannot list them."""
    try:
        return [int(name) for name in os.listdir("/proc/self/task")]
    except OSError:
        return [0]
