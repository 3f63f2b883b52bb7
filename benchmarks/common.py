"""What the benchmark and the CI guard share: test images, request bodies, server processes, wrk."""

from __future__ import annotations

import atexit
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"
# Server logs: git-ignored, never committed.
TMP_DIR = RESULTS_DIR / "tmp"
WRK_SCRIPT = BENCH_DIR / "wrk" / "post.lua"
CLASS_FOLDERS = ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL")
# The one real 320x240 TEST image every HTTP figure uses (read in place, never copied into the repo).
REFERENCE_IMAGE = Path("images/TEST/NEUTROPHIL/_0_208.jpeg")


class BenchmarkError(RuntimeError):
    """Something the benchmark needs is missing or broke; the message says what to do."""


# ---------------------------------------------------------------------------------------------- data


def find_data_dir() -> Path:
    """The real data set: $BLOODCELLS_DATA_DIR, else ../shared/data/blood-cells/dataset2-master."""
    raw = os.environ.get("BLOODCELLS_DATA_DIR")
    candidates = [Path(raw)] if raw else [REPO.parent / "shared" / "data" / "blood-cells" / "dataset2-master"]
    for candidate in candidates:
        if (candidate / "images" / "TEST").is_dir():
            return candidate
    raise BenchmarkError("the real data set is absent: set BLOODCELLS_DATA_DIR to the Kaggle 'dataset2-master' "
                         "folder (it holds images/TEST/<CLASS>/*.jpeg)")


def reference_image(data_dir: Path) -> Path:
    path = data_dir / REFERENCE_IMAGE
    if path.is_file():
        return path
    # A data set laid out differently: the first TEST image of the first class.
    return sample_images(data_dir, 1)[0]


def sample_images(data_dir: Path, count: int) -> list[Path]:
    """``count`` TEST images, spread evenly over each class's sorted list: the same ones on every run."""
    per_class = max(1, -(-count // len(CLASS_FOLDERS)))
    chosen: list[Path] = []
    for name in CLASS_FOLDERS:
        files = sorted((data_dir / "images" / "TEST" / name).glob("*.jpeg"))
        if not files:
            raise BenchmarkError(f"no TEST images in {data_dir / 'images' / 'TEST' / name}")
        step = max(1, len(files) // per_class)
        chosen.extend(files[::step][:per_class])
    return chosen[:count]


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise BenchmarkError("OpenCV could not encode a JPEG")
    return buffer.tobytes()


def full_field_frames(data_dir: Path, images: Sequence[Path], seed: int = 0) -> list[bytes]:
    """640x480 JPEG frames: each 320x240 TEST image pasted at a random place in a smear background
    tiled from stain-free patches of other TEST images (the project's full-field construction), as a
    user's whole microscope field would be. Built at run time, never written into the repository."""
    from app.preprocessing import PreprocessingParams, decode_image
    from training.fullfield import background_patches, place, tile_background

    rng = np.random.default_rng(seed)
    donors = [decode_image(path.read_bytes()) for path in sample_images(data_dir, 16)]
    patches = background_patches(donors, PreprocessingParams(), per_image=8, rng=rng)
    frames = []
    for path in images:
        canvas = tile_background(patches, rng)
        frame, _ = place(decode_image(path.read_bytes()), canvas, rng)
        frames.append(encode_jpeg(frame))
    return frames


def multipart(fields: Sequence[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body of (field, filename, bytes) parts, and its content type."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, filename, data in fields:
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
                     "Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


_SCRATCH: list[Path] = []


def scratch_dir() -> Path:
    """This process's folder for request bodies (they hold data-set images: kept out of the
    repository, in the system's temporary folder, and removed at exit)."""
    if not _SCRATCH:
        _SCRATCH.append(Path(tempfile.mkdtemp(prefix="bloodcells-bench-")))
        atexit.register(shutil.rmtree, _SCRATCH[0], True)
    return _SCRATCH[0]


@dataclass(frozen=True)
class Body:
    """A request body written to a file, for wrk to post."""

    path: Path
    content_type: str
    images: int  # how many images one request carries

    @classmethod
    def write(cls, name: str, fields: Sequence[tuple[str, str, bytes]]) -> Body:
        data, content_type = multipart(fields)
        path = scratch_dir() / f"{name}.body"
        path.write_bytes(data)
        return cls(path=path, content_type=content_type, images=len(fields))

    def bytes(self) -> bytes:
        return self.path.read_bytes()


# ------------------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kib(pid: int) -> dict[str, int]:
    """Resident (RSS) and proportional (PSS: shared pages split among their users) memory, KiB."""
    values = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                values["rss_kib"] = int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                values["pss_kib"] = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return values


@dataclass
class Server:
    """A server process on 127.0.0.1 started by the benchmark, with its start-up figures."""

    name: str
    process: subprocess.Popen
    port: int
    log: Path
    workers: int
    started: float  # time.perf_counter() at Popen
    first_ready_s: float | None = None  # first 200 from /readyz
    all_ready_s: float | None = None  # every worker logged "models ready"
    worker_pids: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready_pids(self) -> list[int]:
        """Workers that logged their "models ready" line (JSON lines with the process id)."""
        pids = []
        for line in self.log.read_text(errors="replace").splitlines():
            if "models ready" not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("message") == "models ready" and record.get("pid") not in pids:
                pids.append(int(record["pid"]))
        return pids

    def memory(self) -> dict[str, Any]:
        """Memory of each worker and of the supervisor, KiB."""
        workers = {str(pid): memory_kib(pid) for pid in self.worker_pids}
        result: dict[str, Any] = {"workers": workers}
        if self.process.pid not in self.worker_pids:
            result["supervisor"] = memory_kib(self.process.pid)
        rss = [m["rss_kib"] for m in workers.values() if "rss_kib" in m]
        pss = [m["pss_kib"] for m in workers.values() if "pss_kib" in m]
        result["max_worker_rss_mib"] = round(max(rss) / 1024, 1) if rss else None
        result["max_worker_pss_mib"] = round(max(pss) / 1024, 1) if pss else None
        return result

    def cpu_seconds(self) -> float:
        """CPU time used so far by the workers (and by the supervisor, which forwards nothing)."""
        return sum(cpu_seconds(pid) for pid in self.worker_pids)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def revision_tree(rev: str) -> Iterator[Path]:
    """The files of git revision ``rev`` of this repository (``git archive``: app, models and all), in a
    temporary folder removed afterwards: what compares one revision's code with another's in one run. It
    never touches the repository's own git state, so an interrupted run leaves nothing registered there."""
    with tempfile.TemporaryDirectory(prefix="bench-rev-") as scratch:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev], capture_output=True)
        if archive.returncode != 0:
            raise BenchmarkError(f"git archive {rev} failed: {archive.stderr.decode(errors='replace').strip()}")
        subprocess.run(["tar", "-x", "-C", scratch], input=archive.stdout, check=True)
        yield Path(scratch)


def start_server(name: str, argv: Sequence[str], port: int, workers: int, env: dict[str, str] | None = None,
                 timeout: float = 120.0, cwd: Path = REPO) -> Server:
    """Start ``argv`` (a server on ``port``) in ``cwd`` (another revision's files run that revision's
    ``app``), wait until /readyz answers 200 and every worker has logged "models ready"; the start-up times
    are measured from the Popen call."""
    TMP_DIR.mkdir(parents=True, exist_ok=True)
    log = TMP_DIR / f"{name}-{os.getpid()}.log"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("BLOODCELLS_")}
    environment.update(env or {})
    with open(log, "wb") as log_file:
        started = time.perf_counter()
        process = subprocess.Popen(list(argv), cwd=cwd, env=environment, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = Server(name=name, process=process, port=port, log=log, workers=workers, started=started)
    deadline = started + timeout
    try:
        while time.perf_counter() < deadline:
            if process.poll() is not None:
                raise BenchmarkError(f"{name} exited with code {process.returncode}:\n{server.tail()}")
            if server.first_ready_s is None:
                try:
                    status, _ = http_request(port, "GET", "/readyz", timeout=2.0)
                    if status == 200:
                        server.first_ready_s = time.perf_counter() - started
                except OSError:
                    pass
            if server.all_ready_s is None:
                pids = server.ready_pids()
                if len(pids) >= workers:
                    server.all_ready_s = time.perf_counter() - started
                    server.worker_pids = pids
            if server.first_ready_s is not None and server.all_ready_s is not None:
                return server
            time.sleep(0.005)
        raise BenchmarkError(f"{name} was not ready after {timeout:.0f} s:\n{server.tail()}")
    except BaseException:
        stop_server(server)
        raise


def stop_server(server: Server) -> None:
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the process group it was started in: it and its workers
            process.wait(timeout=10)


def service_argv(port: int, workers: int | None) -> list[str]:
    """``bloodcells serve`` exactly as deployed (default workers: the CPU count)."""
    argv = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
    return argv + (["--workers", str(workers)] if workers is not None else [])


def keras_argv(port: int, workers: int) -> list[str]:
    """The baseline: a minimal FastAPI + Keras app under plain ``uvicorn --workers N``."""
    return [sys.executable, "-m", "uvicorn", "benchmarks.keras_server:app", "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(workers), "--no-access-log", "--log-level", "warning"]


# ----------------------------------------------------------------------------------------------- wrk


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_version() -> str | None:
    path = wrk_path()
    if path is None:
        return None
    output = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    return output.splitlines()[0].strip() if output else None


def run_wrk(url: str, body: Body, connections: int, duration_s: float, threads: int | None = None,
            timeout_s: float = 10.0, server: Server | None = None) -> dict[str, Any]:
    """wrk posting ``body`` to ``url`` over ``connections`` keep-alive connections for ``duration_s``.

    Returns requests/s, images/s, latency percentiles in ms and the error counts (non-2xx responses,
    connect/read/write errors and timeouts). The latency percentiles are wrk's, per request."""
    path = wrk_path()
    if path is None:
        raise BenchmarkError("wrk is not installed: apt-get install -y wrk (Debian package)")
    threads = threads or max(1, min(connections, 2))
    command = [path, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration_s))}s",
               "--timeout", f"{timeout_s:g}s", "-s", str(WRK_SCRIPT), url]
    environment = {**os.environ, "WRK_BODY": str(body.path), "WRK_CONTENT_TYPE": body.content_type}
    cpu_before = server.cpu_seconds() if server else 0.0
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    completed = subprocess.run(command, capture_output=True, text=True, env=environment,
                               timeout=duration_s + timeout_s + 30)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_used = server.cpu_seconds() - cpu_before if server else None
    # wrk is the only child waited for meanwhile: the difference is its CPU time.
    wrk_cpu = (children_after.ru_utime + children_after.ru_stime) - (children_before.ru_utime + children_before.ru_stime)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("WRK_JSON ")]
    if completed.returncode != 0 or not lines:
        raise BenchmarkError(f"wrk failed ({completed.returncode}): {completed.stdout}\n{completed.stderr}")
    raw = json.loads(lines[-1][len("WRK_JSON "):])
    seconds = raw["duration_us"] / 1e6
    latency = {key: round(value / 1000.0, 3) for key, value in raw["latency_us"].items()}
    errors = raw["errors"]
    return {
        "connections": connections, "threads": threads, "duration_s": round(seconds, 2),
        "requests": raw["requests"], "requests_per_s": round(raw["requests"] / seconds, 1),
        "images_per_s": round(raw["requests"] * body.images / seconds, 1),
        "latency_ms": latency, "errors": errors, "error_count": sum(errors.values()),
        # The servers' CPU time per request, every worker together: what a request costs, whatever
        # else the machine runs (the figure least disturbed by a loaded machine).
        "server_cpu_ms_per_request": round(cpu_used * 1000.0 / raw["requests"], 3) if cpu_used and raw["requests"] else None,
        "wrk_cpu_ms_per_request": round(wrk_cpu * 1000.0 / raw["requests"], 3) if raw["requests"] else None,
    }
