"""The service under a real `bloodcells serve` (uvicorn) on 127.0.0.1: processes, sockets, concurrency."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import uvicorn

import app.config as config_module
from app import affinity
from app.cli import main
from app.config import Settings
from app.labels import CLASSES
from app.server import NoDelayConfig, command_line_settings, uvicorn_config
from tests.api import metric_value
from tests.live_server import LiveServer, live_server, multipart, request
from tests.synthetic import encode, make_smear

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four synthetic smears, one per class name, with cells of different sizes: the server tests
    need images that decode, not the data set."""
    folder = tmp_path_factory.mktemp("smears")
    files = {}
    for index, name in enumerate(CLASSES):
        smear = make_smear(wbcs=((150 + 10 * index, 120, 22 + 6 * index),), seed=index)
        files[name] = folder / f"{name}.jpeg"
        files[name].write_bytes(encode(smear.rgb, ".jpg"))
    return files

TRAINING_LIBRARIES = ("tensorflow", "keras", "tf2onnx")
RECORD_IMPORTS = f"""
import atexit, json, os, sys
def _record_imports():
    with open(os.environ["IMPORTS_OUT"], "w") as out:
        json.dump(sorted(m for m in sys.modules if m.split(".")[0] in {TRAINING_LIBRARIES!r}), out)
atexit.register(_record_imports)
"""


def classify_body(path: Path) -> tuple[bytes, dict[str, str]]:
    body, content_type = multipart([("file", path.name, path.read_bytes())])
    return body, {"Content-Type": content_type}


def exercise_every_route(server: LiveServer, image: Path) -> None:
    connection = server.connection()
    body, headers = classify_body(image)
    batch, batch_type = multipart([("files", "a.jpeg", image.read_bytes()), ("files", "b.jpeg", b"junk")])
    for method, path, payload, extra in [
        ("POST", "/classify", body, headers), ("POST", "/classify?mode=original", body, headers),
        ("POST", "/classify/batch", batch, {"Content-Type": batch_type}),
        ("POST", "/preprocess?view=overlay", body, headers), ("GET", "/models", None, {}),
        ("GET", "/metrics", None, {}), ("GET", "/", None, {}), ("GET", "/docs", None, {}),
    ]:
        status, _, _ = request(connection, method, path, payload, extra)
        assert status == 200, (method, path)


def process_group(leader: int) -> list[int]:
    """The server and its workers: every process of the session the test started it in."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == leader:
                    found.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return found


def test_the_server_process_never_imports_tensorflow(tmp_path: Path, model_dir: Path,
                                                     images: dict[str, Path]) -> None:
    record = tmp_path / "imports.json"
    with live_server(tmp_path, "--workers", "1", "--model-dir", str(model_dir), env={"IMPORTS_OUT": str(record)},
                     python_prelude=RECORD_IMPORTS) as server:
        exercise_every_route(server, images["eosinophil"])
    # Shut down cleanly (its atexit handler wrote the record), whatever exit code the signal left: a job
    # started with SIGINT ignored (CI in the background) exits 0 rather than 130.
    assert server.process.returncode is not None and record.exists(), server.log_lines()[-5:]
    assert json.loads(record.read_text()) == []


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc to read the workers' libraries")
def test_no_worker_has_tensorflow_loaded(tmp_path: Path, model_dir: Path, images: dict[str, Path]) -> None:
    with live_server(tmp_path, "--workers", "2", "--model-dir", str(model_dir)) as server:
        exercise_every_route(server, images["monocyte"])
        maps = {pid: Path(f"/proc/{pid}/maps").read_text() for pid in process_group(server.process.pid)}
    workers = [pid for pid, text in maps.items() if "onnxruntime" in text]
    assert len(workers) >= 2, "the check must see onnxruntime in the workers, or it proves nothing"
    assert not [pid for pid, text in maps.items() if "tensorflow" in text.lower()]


def test_concurrent_requests_all_succeed_and_match_sequential_ones(tmp_path: Path, model_dir: Path,
                                                                    images: dict[str, Path]) -> None:
    jobs = [(name, mode) for name in CLASSES for mode in ("original", "color")]
    with live_server(tmp_path, "--workers", "2", "--model-dir", str(model_dir)) as server:
        def classify(job: tuple[str, str]) -> tuple[int, dict, str]:
            name, mode = job
            body, headers = classify_body(images[name])
            status, response_headers, payload = request(server.connection(), "POST", f"/classify?mode={mode}",
                                                        body, headers)
            return status, json.loads(payload), response_headers["x-request-id"]

        sequential = {job: classify(job)[1] for job in jobs}
        with ThreadPoolExecutor(max_workers=16) as pool:
            concurrent = list(pool.map(classify, jobs * 6))
    assert all(status == 200 for status, _, _ in concurrent)
    assert len({request_id for _, _, request_id in concurrent}) == len(concurrent)
    for job, (_, body, _) in zip(jobs * 6, concurrent):
        expected = sequential[job]
        assert body["label"] == expected["label"] and body["mode"] == job[1]
        np.testing.assert_allclose([body["probabilities"][c] for c in CLASSES],
                                   [expected["probabilities"][c] for c in CLASSES], atol=1e-6)


def test_keep_alive_requests_with_several_workers_do_not_stall(tmp_path: Path, model_dir: Path,
                                                               images: dict[str, Path]) -> None:
    """The Nagle / delayed-ACK stall costs about 40 ms per request on a keep-alive connection; a
    request here takes a few milliseconds, so even a loaded machine stays far below it."""
    with live_server(tmp_path, "--workers", "2", "--model-dir", str(model_dir)) as server:
        connection = server.connection()
        body, headers = classify_body(images["lymphocyte"])
        for path, payload in (("/healthz", None), ("/classify", body)):
            times = []
            for _ in range(30):
                started = time.perf_counter()
                status, _, _ = request(connection, "POST" if payload else "GET", path, payload,
                                       headers if payload else {})
                times.append(time.perf_counter() - started)
                assert status == 200
            assert statistics.median(times) < 0.02, f"{path}: median {statistics.median(times) * 1000:.1f} ms"


def test_listening_socket_gives_every_connection_tcp_nodelay() -> None:
    def accepted_nodelay(config: uvicorn.Config) -> tuple[int, int]:
        listener = config.bind_socket()
        try:
            listener.listen()
            with socket.create_connection(listener.getsockname()[:2]):
                connection, _ = listener.accept()
                with connection:
                    return (listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                            connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        finally:
            listener.close()

    # The cause: uvicorn's own socket (proto 0) leaves Nagle on; asyncio does not switch it off either.
    assert accepted_nodelay(uvicorn.Config("app.main:app", host="127.0.0.1", port=0)) == (0, 0)
    listener, connection = accepted_nodelay(NoDelayConfig("app.main:app", host="127.0.0.1", port=0))
    assert listener and connection


def test_upload_over_the_limit_is_refused_while_it_streams(tmp_path: Path, model_dir: Path) -> None:
    limit = 200_000
    with live_server(tmp_path, "--workers", "1", "--model-dir", str(model_dir),
                     env={"BLOODCELLS_MAX_UPLOAD_BYTES": str(limit)}) as server:
        sent, answer = 0, b""
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"POST /classify HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
                         b"Content-Type: multipart/form-data; boundary=x\r\n\r\n")
            part = b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n\r\n'
            sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            chunk = b"\xff" * 65_536
            try:
                while sent < 50_000_000 and not answer:
                    sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    sent += len(chunk)
                    if select.select([sock], [], [], 0.02)[0]:
                        answer = sock.recv(65_536)
            except (BrokenPipeError, ConnectionResetError):
                pass
            sock.settimeout(10)
            while True:  # the server closes the connection after the 413 (Connection: close)
                try:
                    more = sock.recv(65_536)
                except ConnectionResetError:
                    break
                if not more:
                    break
                answer += more
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b'"upload_too_large"' in answer
        assert sent < 20 * limit, f"sent {sent:,} bytes before the 413"

        status, _, body = request(server.connection(), "POST", "/classify", b"",
                                  {"Content-Type": "multipart/form-data; boundary=x", "Content-Length": "99999999"})
        assert status == 413 and json.loads(body)["error"]["code"] == "upload_too_large"


def test_metrics_add_up_every_workers_counts(tmp_path: Path, model_dir: Path) -> None:
    before = set(Path(tempfile.gettempdir()).glob("bloodcells-metrics-*"))
    requests = 40

    def models_count(server: LiveServer) -> float:
        _, _, text = request(server.connection(), "GET", "/metrics")
        return metric_value(text.decode(), "bloodcells_http_requests_total", method="GET", route="/models",
                            status="200")

    with live_server(tmp_path, "--workers", "2", "--model-dir", str(model_dir)) as server:
        for _ in range(requests):  # a new connection each time, so both workers get some
            assert request(server.connection(), "GET", "/models")[0] == 200
        # A request is counted just after its response is sent, and logged within the log writer's interval:
        # allow the last one a moment.
        deadline = time.monotonic() + 5
        while models_count(server) < requests and time.monotonic() < deadline:
            time.sleep(0.05)
        counts = [models_count(server) for _ in range(4)]  # whichever worker answers, the same total
        while len(lines := [json.loads(line) for line in server.log_lines() if '"route": "/models"' in line]) < requests \
                and time.monotonic() < deadline:
            time.sleep(0.05)
    assert counts == [requests] * 4
    assert len(lines) == requests and {line["status"] for line in lines} == {200}
    assert set(Path(tempfile.gettempdir()).glob("bloodcells-metrics-*")) == before  # cleaned up


def test_the_access_line_of_a_request_answered_before_sigterm_is_written(tmp_path: Path, model_dir: Path) -> None:
    """uvicorn ends a worker by re-raising SIGTERM, which skips atexit: the log writer's queue is written when
    the app shuts down, or the last lines before a SIGTERM were lost. The writer's interval is made long here,
    so that only that flush can write the line."""
    with live_server(tmp_path, "--workers", "1", "--model-dir", str(model_dir),
                     python_prelude="import app.logs\napp.logs.FLUSH_INTERVAL = 600.0") as server:
        status, _, _ = request(server.connection(), "GET", "/models", headers={"X-Request-ID": "last-words"})
        assert status == 200
        time.sleep(0.5)
        assert not any('"last-words"' in line for line in server.log_lines())  # still queued
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=30)
        assert any('"last-words"' in line for line in server.log_lines()), server.log_lines()[-5:]


def test_access_log_lines_carry_the_request_id(tmp_path: Path, model_dir: Path) -> None:
    with live_server(tmp_path, "--workers", "1", "--model-dir", str(model_dir)) as server:
        status, headers, _ = request(server.connection(), "GET", "/models", headers={"X-Request-ID": "live-42"})
        assert status == 200 and headers["x-request-id"] == "live-42"
        deadline = time.monotonic() + 5  # the line is written just after the response is sent
        while not (lines := [json.loads(line) for line in server.log_lines() if "live-42" in line]):
            assert time.monotonic() < deadline, "no access log line for the request"
            time.sleep(0.05)
    assert len(lines) == 1
    assert {"method": "GET", "path": "/models", "status": 200, "request_id": "live-42"}.items() <= lines[0].items()
    assert lines[0]["duration_ms"] > 0 and lines[0]["logger"] == "bloodcells.access"


def test_serve_refuses_a_folder_without_models(tmp_path: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLOODCELLS_MODEL_DIR", raising=False)
    assert main(["serve", "--model-dir", str(tmp_path), "--port", "0"]) == 2
    assert "no .onnx models" in capsys.readouterr().err
    assert "BLOODCELLS_MODEL_DIR" not in os.environ  # nothing leaks from a failed start


def test_serve_defaults_one_worker_per_cpu_and_one_thread_each(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("BLOODCELLS_")]:
        monkeypatch.delenv(name)
    settings, environment = command_line_settings({"workers": None, "model_dir": Path("models")})
    assert settings.workers == len(os.sched_getaffinity(0)) and settings.threads == 1
    assert environment == {"BLOODCELLS_MODEL_DIR": str(Path("models").resolve())}
    # A CPU quota (docker run --cpus 1.5) bounds the default too: a worker per host CPU would each be throttled.
    monkeypatch.setattr(config_module, "cpu_quota", lambda: 1.5)
    assert Settings().workers == min(2, len(os.sched_getaffinity(0)))
    monkeypatch.setattr(config_module, "cpu_quota", lambda: 0.25)
    assert Settings().workers == 1
    config = uvicorn_config(Settings(workers=3))
    assert config.workers == 3 and config.access_log is False and isinstance(config, NoDelayConfig)


def test_serve_refuses_invalid_settings_with_the_variable_named(capsys: pytest.CaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOODCELLS_THREADS", "0")
    assert main(["serve", "--port", "0"]) == 2
    error = capsys.readouterr().err
    assert "BLOODCELLS_" in error and "threads" in error


def access_lines(server: LiveServer, path: str) -> list[dict]:
    return [json.loads(line) for line in server.log_lines() if f'"path": "{path}"' in line]


def wait_for_access_line(server: LiveServer, path: str) -> None:
    deadline = time.monotonic() + 5  # the line is written just after the response is sent
    while not access_lines(server, path):
        assert time.monotonic() < deadline, f"no access log line for {path}"
        time.sleep(0.05)


def test_health_probes_are_counted_but_logged_only_at_debug_level(tmp_path: Path, model_dir: Path) -> None:
    with live_server(tmp_path, "--workers", "1", "--model-dir", str(model_dir)) as server:
        for path in ("/healthz", "/readyz", "/healthz", "/readyz"):
            assert request(server.connection(), "GET", path)[0] == 200
        assert request(server.connection(), "GET", "/models")[0] == 200
        wait_for_access_line(server, "/models")  # written after the probes' would have been
        _, _, text = request(server.connection(), "GET", "/metrics")
    for route in ("/healthz", "/readyz"):
        assert metric_value(text.decode(), "bloodcells_http_requests_total", method="GET", route=route,
                            status="200") >= 2
        assert access_lines(server, route) == []

    with live_server(tmp_path, "--workers", "1", "--model-dir", str(model_dir),
                     env={"BLOODCELLS_LOG_LEVEL": "debug"}) as server:
        assert request(server.connection(), "GET", "/healthz", headers={"X-Request-ID": "probe-7"})[0] == 200
        wait_for_access_line(server, "/healthz")
    assert [(line["level"], line["request_id"]) for line in access_lines(server, "/healthz")] == [("debug", "probe-7")]


def test_a_failing_probe_is_still_logged_at_info_level() -> None:
    from app.middleware import access_level

    assert access_level("/readyz", 503) == logging.INFO and access_level("/healthz", 200) == logging.DEBUG
    assert access_level("/models", 200) == logging.INFO


def test_every_line_serve_writes_is_json(tmp_path: Path, model_dir: Path, images: dict[str, Path]) -> None:
    # As in the container: a home folder that cannot be written (onnxruntime wants to keep a device id there).
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    env = {"HOME": str(blocked / "home"), "XDG_CACHE_HOME": str(blocked / "cache")}
    with live_server(tmp_path, "--workers", "2", "--model-dir", str(model_dir), env=env) as server:
        exercise_every_route(server, images["neutrophil"])
        assert request(server.connection(), "GET", "/nowhere")[0] == 404
    lines = server.log_lines()
    assert len(lines) > 10, lines  # start-up, both workers, every request, shutdown
    assert [line for line in lines if not is_json_object(line)] == []


def is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def hold_port() -> socket.socket:
    """A socket listening on a free port of 127.0.0.1, as another server would."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_names_the_busy_port_and_how_to_pick_another(workers: str, model_dir: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    with hold_port() as holder:
        port = holder.getsockname()[1]
        started = time.monotonic()
        code = main(["serve", "--port", str(port), "--workers", workers, "--model-dir", str(model_dir)])
    assert code == 3 and time.monotonic() - started < 5  # at once, before loading any model
    error = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is already in use" in error and "Address already in use" in error
    assert "--port" in error and "BLOODCELLS_PORT" in error


def test_the_serve_command_exits_non_zero_on_a_busy_port(model_dir: Path) -> None:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("BLOODCELLS_")}
    with hold_port() as holder:
        port = holder.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--model-dir", str(model_dir)],
                              env={**environment, "BLOODCELLS_PORT": str(port)}, capture_output=True, text=True,
                              timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 3, done.stderr
    assert f"port {port}" in done.stderr and "BLOODCELLS_PORT" in done.stderr


def test_serve_without_models_names_both_ways_to_choose_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLOODCELLS_MODEL_DIR", raising=False)
    assert main(["serve", "--model-dir", str(tmp_path), "--port", "0"]) == 2
    error = capsys.readouterr().err
    assert "no .onnx models" in error and str(tmp_path) in error
    assert "--model-dir" in error and "BLOODCELLS_MODEL_DIR" in error


def worker_affinities(server: LiveServer) -> dict[int, list[int]]:
    """The CPUs each worker's threads may run on, by worker pid, once every worker has loaded its models."""
    deadline = time.monotonic() + 60
    while sum('"models ready"' in line for line in server.log_lines()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    found = {}
    for pid in process_group(server.process.pid):
        # The supervisor loaded the models too, to check them: not a worker.
        if pid != server.process.pid and "onnxruntime" in Path(f"/proc/{pid}/maps").read_text():
            threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
            found[pid] = sorted({cpu for tid in threads for cpu in os.sched_getaffinity(tid)})
    return found


TWO_CPUS = "import os\nos.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or (affinity.cpu_quota() or 2) < 2,
                    reason="needs two whole CPUs to pin two workers to")
def test_as_many_workers_as_cpus_each_get_a_cpu_of_their_own(tmp_path: Path, model_dir: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))[:2]
    with live_server(tmp_path, "--workers", "2", "--model-dir", str(model_dir), python_prelude=TWO_CPUS) as server:
        pinned = worker_affinities(server)
    assert len(pinned) == 2 and sorted(pinned.values()) == [[cpus[0]], [cpus[1]]], pinned
    for env in ({"BLOODCELLS_CPU_AFFINITY": "off"}, {"BLOODCELLS_THREADS": "2"}):
        with live_server(tmp_path, "--workers", "2", "--model-dir", str(model_dir), env=env,
                         python_prelude=TWO_CPUS) as server:
            free = worker_affinities(server)
        assert len(free) == 2 and all(found == cpus for found in free.values()), (env, free)
