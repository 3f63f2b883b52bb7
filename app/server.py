"""``bloodcells serve``: uvicorn with the service's settings, JSON logs and multi-worker metrics.

TCP_NODELAY: with several workers uvicorn binds the listening socket itself as
``socket.socket(AF_INET, SOCK_STREAM)`` (proto 0), and asyncio sets TCP_NODELAY only on accepted
sockets whose proto is IPPROTO_TCP. A response written as headers then body was then held back by
Nagle's algorithm until the client's delayed ACK: a 44 ms stall per keep-alive request that one
worker (whose socket asyncio creates with proto 6) did not show. Two fixes, each enough alone:
uvloop (``uvicorn[standard]``) sets TCP_NODELAY on every connection it accepts, and the listening
socket here gets TCP_NODELAY, which Linux copies to every accepted socket whatever the event loop.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from app.affinity import cpu_locks
from app.config import ENV_PREFIX, Settings
from app.http_guard import GuardedHttpToolsProtocol, HttpLimits
from app.logs import logging_config
from app.metrics import MULTIPROC_ENV
from app.model import ModelLoadError
from app.registry import ModelRegistry

APP_IMPORT = "app.main:app"
# File descriptors a worker keeps for itself beyond its connections: models, logs, metrics files, pipes.
RESERVED_FDS = 64
# The exit code when the address cannot be listened on: uvicorn's own (STARTUP_FAILURE), which
# scripts may already test.
CANNOT_LISTEN = 3
# A worker failed while it started (a model that fails its warm-up, a setting the libraries refuse): the
# supervisor stops, and so does `serve`, with this code and not 0.
WORKER_FAILED = 4
WORKER_FAILED_MESSAGE = ("bloodcells serve: error: a worker failed while it started and the service stopped; "
                         "its log lines above say why")


class NoDelayConfig(uvicorn.Config):
    """uvicorn's configuration, with TCP_NODELAY on the listening socket it binds for several workers,
    and the HTTP limits that the guarded protocol reads (``http_limits``)."""

    http_limits: HttpLimits = HttpLimits()

    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


class Supervisor(Multiprocess):
    """uvicorn's supervisor of several workers, which closes its own copy of the listening socket once it
    has told the workers to stop. It held that copy until the last worker exited: once every worker had
    stopped accepting, the kernel still completed new connections into the socket's queue, where nobody
    answered them until the work in flight ended (up to the grace period) and they were reset. Now the
    socket closes with the last worker's listener, and a new connection is refused at once, which a load
    balancer or a client retries elsewhere, as with one worker."""

    def terminate_all(self) -> None:
        super().terminate_all()
        for sock in self.sockets:
            sock.close()


@contextmanager
def multiprocess_metrics(workers: int) -> Iterator[None]:
    """A fresh PROMETHEUS_MULTIPROC_DIR for several workers, removed afterwards; one set by the
    operator is used as it is and kept."""
    if workers == 1 or os.environ.get(MULTIPROC_ENV):
        yield
        return
    directory = tempfile.mkdtemp(prefix="bloodcells-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    try:
        yield
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


def command_line_settings(overrides: dict[str, Any]) -> tuple[Settings, dict[str, str]]:
    """The settings from the environment and the command line, and the environment variables that
    give the same settings to the worker processes, which read theirs from the environment."""
    given: dict[str, Any] = {name: value for name, value in overrides.items() if value is not None}
    if given.get("model_dir") is not None:
        given["model_dir"] = Path(str(given["model_dir"])).resolve()
    return Settings(**given), {ENV_PREFIX + name.upper(): str(value) for name, value in given.items()}


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (inherited by the workers); the
    limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def http_limits(settings: Settings, fd_limit: int) -> HttpLimits:
    # Never more connections than descriptors: past that, accept() fails and health probes with it.
    connections = max(1, min(settings.max_connections, fd_limit - RESERVED_FDS))
    return HttpLimits(max_connections=connections, max_header_bytes=settings.max_header_bytes,
                      max_request_line=settings.max_request_line, max_headers=settings.max_headers,
                      max_pipelined=settings.max_pipelined, max_unsent_bytes=settings.max_unsent_bytes,
                      header_timeout=settings.header_timeout, body_timeout=settings.body_timeout)


def uvicorn_config(settings: Settings, fd_limit: int | None = None) -> NoDelayConfig:
    config = NoDelayConfig(APP_IMPORT, host=settings.host, port=settings.port, workers=settings.workers,
                           log_config=logging_config(settings.log_level), log_level=settings.log_level,
                           access_log=False, server_header=False, http=GuardedHttpToolsProtocol, ws="none",
                           timeout_keep_alive=settings.keepalive_timeout,  # type: ignore[arg-type]
                           timeout_graceful_shutdown=settings.shutdown_grace,  # type: ignore[arg-type]
                           backlog=4096)
    config.http_limits = http_limits(settings, fd_limit or resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    return config


def cannot_listen_message(host: str, port: int, exc: OSError) -> str:
    """What went wrong binding host:port, and the setting that picks another address."""
    port_setting = f"--port or {ENV_PREFIX}PORT"
    if exc.errno == errno.EADDRINUSE:
        return (f"port {port} on {host} is already in use ({exc}): another `bloodcells serve` or another "
                f"program listens there; stop it, or pick another port with {port_setting} "
                f"(e.g. --port {port + 1 if port < 65535 else 8000})")
    if exc.errno == errno.EACCES:
        return (f"cannot listen on port {port} of {host} ({exc}): ports below 1024 need root or "
                f"CAP_NET_BIND_SERVICE; pick another port with {port_setting}")
    return (f"cannot listen on {host}:{port} ({exc}); pick an address of this machine with --host or "
            f"{ENV_PREFIX}HOST (127.0.0.1: this machine only, 0.0.0.0: every interface) and a free port with "
            f"{port_setting}")


def listen_problem(host: str, port: int) -> str | None:
    """Why the service cannot listen on host:port, or None when it can. A trial bind with the same
    option as uvicorn's (SO_REUSEADDR), before the models load: uvicorn binds only later (in this
    process for several workers, inside the worker for one) and then reports a busy port with no
    hint, and for one worker only after loading and warming up the models."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as trial:
        trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            trial.bind((host, port))
        except OSError as exc:
            return cannot_listen_message(host, port, exc)
    return None


def load_models_once(settings: Settings) -> None:
    """Load the models here, so a missing or broken model stops the command with its message instead of
    failing in every worker; the message names the folder and the two ways to choose another."""
    try:
        ModelRegistry.load(settings.model_dir, threads=1, default_mode=settings.default_mode)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{exc}\n  the models are read from {Path(settings.model_dir).resolve()}; choose the "
                             f"folder with --model-dir PATH or {ENV_PREFIX}MODEL_DIR=PATH (a folder of "
                             "<mode>.onnx + <mode>.json files, such as the repository's models/)") from exc


def serve(host: str | None = None, port: int | None = None, workers: int | None = None,
          model_dir: Path | None = None) -> int:
    """Run the service until interrupted; the exit code for the command line."""
    try:
        settings, environment = command_line_settings(
            {"host": host, "port": port, "workers": workers, "model_dir": model_dir})
    except ValidationError as exc:
        print(f"bloodcells serve: invalid settings (command line or {ENV_PREFIX}* variables):\n{exc}", file=sys.stderr)
        return 2
    problem = listen_problem(settings.host, settings.port)
    if problem:
        print(f"bloodcells serve: error: {problem}", file=sys.stderr)
        return CANNOT_LISTEN
    load_models_once(settings)
    os.environ.update(environment)
    config = uvicorn_config(settings, raise_fd_limit())
    with multiprocess_metrics(settings.workers), cpu_locks(settings.cpu_affinity, settings.workers, settings.threads):
        if settings.workers > 1:
            supervisor = Supervisor(config, sockets=[config.bind_socket()])
            supervisor.run()
            failed = any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes)
        else:
            server = uvicorn.Server(config)
            try:
                server.run()
            except SystemExit as exc:  # uvicorn exits STARTUP_FAILURE itself when the lifespan fails
                if exc.code != STARTUP_FAILURE:
                    raise
            failed = not server.started
    if failed:
        print(WORKER_FAILED_MESSAGE, file=sys.stderr)
        return WORKER_FAILED
    return 0
