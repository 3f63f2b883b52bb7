"""JSON log lines: one object per line, for the service's own and uvicorn's loggers."""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import queue
import sys
import threading
import weakref
from typing import Any, TextIO

ACCESS_LOGGER = "bloodcells.access"
# How often the writer thread writes the lines queued meanwhile: a line reaches stderr at most this late.
FLUSH_INTERVAL = 0.05
# Records queued for the writer at most: where stderr stops taking lines (a stalled log collector), more are
# dropped and counted, not kept (a worker's memory would grow with every request).
MAX_QUEUED = 10_000


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...}``; a record's ``extra={"fields": {...}}`` is merged in."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,  # tells the workers apart
        }
        line.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class BackgroundStreamHandler(logging.Handler):
    """A stream handler whose formatting and writing run on a thread of its own, which writes what is queued
    every ``FLUSH_INTERVAL`` s: a request only queues its record. Written from the event loop's thread, each
    line's write() released the GIL and then waited to get it back behind the threadpool's threads (about 3%
    of a worker's samples at 32 clients in ``benchmarks.profile``); woken for each record, the writer took
    the worker's CPU from the event loop once per request. A warning, an error or a record with a traceback
    wakes it at once. Lines keep their order. ``flush()`` writes what is queued now: the app's shutdown calls
    it (``flush_all``), because uvicorn ends a worker by re-raising SIGTERM, which skips ``atexit``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stderr
        self.records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self.wake = threading.Event()
        self.stopping = False
        self.dropped = 0  # records not queued since the last line that said so
        self.writing = threading.Lock()  # the writer and a caller's flush() take turns: lines keep their order
        self.writer = threading.Thread(target=self._write, name="log-writer", daemon=True)
        self.writer.start()
        _handlers.add(self)
        atexit.register(self.close)

    def emit(self, record: logging.LogRecord) -> None:
        if self.records.qsize() >= MAX_QUEUED:
            self.dropped += 1
            return
        self.records.put(record)
        if record.levelno >= logging.WARNING or record.exc_info:  # rare, and wanted at once
            self.wake.set()

    def _pause(self) -> None:  # its own function, so that profiles can tell the wait apart
        self.wake.wait(FLUSH_INTERVAL)
        self.wake.clear()

    def _write(self) -> None:
        while not self.stopping:
            self._pause()
            self.flush()

    def flush(self, timeout: float = 1.0) -> None:
        """Write what is queued; ``timeout``: give up after that many seconds waiting for the writer's turn (a
        writer stuck on a stderr that takes nothing must not hang a shutdown too: logging.shutdown calls this)."""
        if not self.writing.acquire(timeout=timeout):
            return
        try:
            self._write_queued()
        finally:
            self.writing.release()

    def _write_queued(self) -> None:
        lines = []
        while True:
            try:
                record = self.records.get_nowait()
            except queue.Empty:
                break
            try:
                lines.append(self.format(record) + "\n")
            except Exception:  # a record that cannot be formatted must not stop the writer
                self.handleError(record)
        self.acquire()  # the handler's own lock, under which emit() counts
        try:
            dropped, self.dropped = self.dropped, 0
        finally:
            self.release()
        if dropped:
            lines.append(self.format(logging.makeLogRecord({
                "name": "bloodcells", "levelno": logging.WARNING, "levelname": "WARNING",
                "msg": f"{dropped} log records dropped: stderr did not take the lines as fast as they came"})) + "\n")
        if lines:
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except OSError:  # stderr closed: these lines are lost, the writer goes on (and keeps the queue bounded)
                pass

    def close(self) -> None:
        if self.writer.is_alive():
            self.stopping = True
            self.wake.set()
            self.writer.join(timeout=5.0)
        self.flush()
        super().close()


_handlers: weakref.WeakSet[BackgroundStreamHandler] = weakref.WeakSet()


def flush_all() -> None:
    """Write every line queued so far, now."""
    for handler in list(_handlers):
        handler.flush()


def logging_config(level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn's ``log_config``: everything as JSON on stderr, written
    by a thread of its own."""
    handler = {"()": BackgroundStreamHandler, "formatter": "json", "stream": "ext://sys.stderr"}
    logger = {"handlers": ["json"], "level": level.upper(), "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"json": handler},
        "loggers": {
            "bloodcells": logger,
            "uvicorn": logger,
            "uvicorn.error": {"level": level.upper()},
            # The service writes its own access lines (with the request id); uvicorn's would duplicate them.
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }
