"""The machine, the versions and the installed size of an environment, for the benchmark's JSON."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from benchmarks.common import REPO, wrk_version

PACKAGES = ("bloodcells", "numpy", "onnxruntime", "opencv-python-headless", "pillow", "fastapi", "starlette",
            "uvicorn", "uvloop", "httptools", "pydantic", "pydantic-core", "python-multipart", "prometheus-client",
            "tensorflow-cpu", "tensorflow", "keras")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def cpu_busy_fraction(seconds: float = 1.0) -> float:
    """Share of all CPUs' time spent busy (by anything) over ``seconds``: how loaded the machine is."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values[:8]), idle

    total_0, idle_0 = sample()
    time.sleep(seconds)
    total_1, idle_1 = sample()
    total = total_1 - total_0
    return round(1.0 - (idle_1 - idle_0) / total, 3) if total else 0.0


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        memory_kib = 0
    return {
        "cpu": model, "cpu_count": os.cpu_count(), "cpus_allowed": len(os.sched_getaffinity(0)),
        "memory_gib": round(memory_kib / 1024 / 1024, 1), "kernel": platform.release(),
        "python": platform.python_version(), "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    found["wrk"] = wrk_version()
    return found


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    changed = [line.split(maxsplit=1)[1] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(changed), "changed_files": changed}


def closure(root: str, extras: tuple[str, ...] = ()) -> set[str]:
    """The installed distributions that ``root`` (with ``extras``) needs, itself included."""
    seen: set[str] = set()
    queue: list[tuple[str, tuple[str, ...]]] = [(root, extras)]
    requested_extras: dict[str, set[str]] = {}
    while queue:
        name, wanted = queue.pop()
        key = _canonical(name)
        known = requested_extras.setdefault(key, set())
        if key in seen and set(wanted) <= known:
            continue
        seen.add(key)
        known.update(wanted)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for text in dist.requires or ():
            requirement = Requirement(text)
            environments = [{"extra": extra} for extra in (*known, "")]
            if requirement.marker and not any(requirement.marker.evaluate(env) for env in environments):
                continue
            queue.append((requirement.name, tuple(requirement.extras)))
    return seen


def installed_bytes(names: set[str]) -> dict[str, int]:
    """Bytes on disk of each installed distribution, from the files its RECORD lists."""
    sizes = {}
    for dist in metadata.distributions():
        key = _canonical(dist.metadata["Name"] or "")
        if key not in names or key in sizes:
            continue
        total = 0
        for file in dist.files or ():
            try:
                total += Path(str(dist.locate_file(file))).stat().st_size
            except OSError:
                continue
        sizes[key] = total
    return sizes


def install_sizes() -> dict[str, Any]:
    """Installed size of the service's run-time environment (``pip install bloodcells``, no extras),
    of the training extra on top, and of the baseline's stack (TensorFlow, Keras, FastAPI, OpenCV),
    summed over the files each installed distribution lists; the interpreter itself is not counted."""

    def describe(names: set[str]) -> dict[str, Any]:
        sizes = installed_bytes(names)
        largest = sorted(sizes.items(), key=lambda item: item[1], reverse=True)[:6]
        return {"total_mib": round(sum(sizes.values()) / 2**20, 1), "distributions": len(sizes),
                "largest_mib": {name: round(size / 2**20, 1) for name, size in largest}}

    runtime = closure("bloodcells")
    with_train = closure("bloodcells", ("train",))
    baseline = set()
    for name in ("tensorflow-cpu", "keras", "fastapi", "uvicorn", "opencv-python-headless", "python-multipart"):
        baseline |= closure(name)
    return {"service_runtime": describe(runtime), "service_with_train_extra": describe(with_train),
            "keras_baseline": describe(baseline),
            "method": "sum of the files listed in each installed distribution's RECORD, over the dependency "
                      "closure read from the installed metadata; the Python interpreter is not included"}


def models(model_dir: Path) -> dict[str, Any]:
    """The models the service loads: name, version, input size and sha256 of each, by mode."""
    import json

    found = {}
    for meta_path in sorted(Path(model_dir).glob("*.json")):
        if not meta_path.with_suffix(".onnx").is_file():
            continue
        try:
            meta = json.loads(meta_path.read_text())
            found[meta["mode"]] = {"file": meta_path.with_suffix(".onnx").name, "name": meta.get("name"),
                                   "version": meta.get("version"), "input": meta["input"]["shape"][1:],
                                   "sha256": meta.get("onnx_sha256", "")[:12],
                                   "test_accuracy": (meta.get("test") or {}).get("accuracy")}
        except (ValueError, KeyError, TypeError):
            continue
    return found
