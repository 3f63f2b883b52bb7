"""A real `bloodcells serve` (uvicorn) on 127.0.0.1 for the tests that need sockets and processes."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connection(self, timeout: float = 30.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()


def multipart(fields: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body of (field, filename, bytes) parts, and its content type."""
    boundary = uuid.uuid4().hex
    body = b""
    for field, filename, data in fields:
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def request(connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def _wait_ready(server: LiveServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited with {server.process.returncode}:\n" + "\n".join(server.log_lines()))
        try:
            status, _, _ = request(server.connection(timeout=2), "GET", "/readyz")
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server was not ready after {START_TIMEOUT_S} s:\n" + "\n".join(server.log_lines()))


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        # Ctrl+C: uvicorn shuts down gracefully, then re-raises the signal, which `bloodcells` turns
        # into exit code 130 (a re-raised SIGTERM would kill the process before its atexit handlers).
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # our own process group: the server and its workers
            process.wait(timeout=10)


@contextmanager
def live_server(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                python_prelude: str = "") -> Iterator[LiveServer]:
    """`bloodcells serve --port <free> *args`, ready to answer; stopped (SIGINT) afterwards.

    ``python_prelude`` runs in the server process before the command (e.g. to record its imports)."""
    port = free_port()
    log = tmp_path / f"server-{port}.log"
    command = f"{python_prelude}\nimport sys\nfrom app.cli import main\nsys.exit(main(sys.argv[1:]))"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("BLOODCELLS_")}
    environment.update(env or {})
    with open(log, "wb") as log_file:
        process = subprocess.Popen([sys.executable, "-c", command, "serve", "--port", str(port), *args],
                                   cwd=REPO, env=environment, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = LiveServer(process=process, port=port, log=log)
    try:
        _wait_ready(server)
        yield server
    finally:
        _stop(process)
