"""One CPU per worker, where `bloodcells serve`'s workers are exactly as many as the CPUs it may run on.

Two workers pinned to the two CPUs of this machine served 17% more requests at 32 clients than the same
workers left to the scheduler, which moves each worker's threads between the cores and their caches
(``python -m benchmarks.settings``, wrk on the same machine; benchmarks/README.md). Pinning is left off:
- where the CPUs are more than the workers, or a CPU quota gives the server less than all of them (a
  container under a quota sees every CPU of its node): pinned, a worker could not move off a CPU that
  another program keeps busy;
- where a worker runs several threads (``BLOODCELLS_THREADS``): they would all share its one CPU;
- outside ``bloodcells serve`` (plain ``uvicorn app.main:app``, the test client): only ``serve`` knows how many
  workers it starts.

``serve`` makes a folder of its own for the workers' locks (``cpu_locks``). A worker claims the first free CPU
by an exclusive lock on a file named after it; the lock lasts as long as the worker. A worker that finds every
CPU taken (started by a restart before the one it replaces has stopped) tries again in the background until
one is free. Pinning is a speed-up only: where it fails, the worker logs why and runs unpinned.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Literal

CpuAffinity = Literal["auto", "off"]
LOCK_DIR_ENV = "BLOODCELLS_CPU_LOCK_DIR"  # set by `serve` for its workers only; not a setting
RETRY_S = 0.5

logger = logging.getLogger("bloodcells")

# The claimed lock's file, held open while the process lives: closing it would release the CPU.
_held: list[IO[bytes]] = []


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on; empty where the platform cannot say (then nothing is pinned)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return []


def cpu_quota() -> float | None:
    """The CPUs' worth of time this process's cgroup allows (a container's --cpus), or None without a quota."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        version = 2 if controllers == "" else 1 if "cpu" in controllers.split(",") else 0
        mount = Path("/sys/fs/cgroup") if version == 2 else Path("/sys/fs/cgroup/cpu")
        # Inside a container the cgroup's own folder is the mount itself, whatever path the host gives it.
        for folder in (mount / path.lstrip("/"), mount) if version else ():
            try:
                if version == 2:  # "max 100000", or "200000 100000"
                    quota, period = (folder / "cpu.max").read_text().split()[:2]
                    return None if quota == "max" else int(quota) / int(period)
                quota_us = int((folder / "cpu.cfs_quota_us").read_text())  # -1 without a quota
                return None if quota_us < 0 else quota_us / int((folder / "cpu.cfs_period_us").read_text())
            except (OSError, ValueError):
                continue
    return None


def should_pin(setting: CpuAffinity, workers: int, threads: int, cpus: list[int], quota: float | None) -> bool:
    return (setting == "auto" and threads == 1 and workers > 1 and workers == len(cpus)
            and (quota is None or quota >= len(cpus)))


@contextmanager
def cpu_locks(setting: CpuAffinity, workers: int, threads: int) -> Iterator[Path | None]:
    """For ``serve``: a folder for the workers' CPU locks, named to them in LOCK_DIR_ENV, when they are to be
    pinned; removed afterwards."""
    if not should_pin(setting, workers, threads, allowed_cpus(), cpu_quota()):
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="bloodcells-cpus-"))
    os.environ[LOCK_DIR_ENV] = str(directory)
    try:
        yield directory
    finally:
        os.environ.pop(LOCK_DIR_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


def claim_cpu(directory: Path, cpus: list[int]) -> tuple[int, IO[bytes]] | None:
    """The first of ``cpus`` whose lock in ``directory`` no other process holds, and the open file that holds it
    now (close it to release the CPU); None when every one is taken."""
    import fcntl  # POSIX only; imported here so that the service's modules import everywhere

    for cpu in cpus:
        handle = open(directory / f"cpu-{cpu}.lock", "wb")  # noqa: SIM115 - returned open: it holds the lock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return cpu, handle
    return None


def pin_worker() -> int | None:
    """In a worker of ``serve`` that is to be pinned: claim a CPU and pin every thread to it, or keep trying in
    the background when none is free. The CPU pinned to now, or None."""
    directory = os.environ.get(LOCK_DIR_ENV)
    cpus = allowed_cpus()
    if not directory or not cpus:
        return None
    try:
        cpu = _claim_and_pin(Path(directory), cpus)
    except OSError as exc:
        logger.warning("worker not pinned to a CPU", extra={"fields": {"reason": str(exc)}})
        return None
    if cpu is None:
        threading.Thread(target=_retry, args=(Path(directory), cpus), name="cpu-claim", daemon=True).start()
    return cpu


def _claim_and_pin(directory: Path, cpus: list[int]) -> int | None:
    claimed = claim_cpu(directory, cpus)
    if claimed is None:
        return None
    cpu, handle = claimed
    _held.append(handle)
    for thread in _threads():
        try:
            os.sched_setaffinity(thread, {cpu})
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
    return cpu


def _retry(directory: Path, cpus: list[int]) -> None:
    cpu = None
    try:
        while cpu is None:
            time.sleep(RETRY_S)
            cpu = _claim_and_pin(directory, cpus)
    except OSError as exc:  # the folder removed: the server is stopping
        logger.warning("worker not pinned to a CPU", extra={"fields": {"reason": str(exc)}})
        return
    logger.info("worker pinned", extra={"fields": {"cpu": cpu}})


def _threads() -> list[int]:
    """This process's thread ids (uvicorn's own and the log writer start before the lifespan); 0, the calling
    thread alone, where /proc cannot list them."""
    try:
        return [int(name) for name in os.listdir("/proc/self/task")]
    except OSError:
        return [0]
