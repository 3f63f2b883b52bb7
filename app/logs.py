"""JSON log lines: one object per line, for the service's own and uvicorn's loggers."""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import queue
import sys
import threading
from typing import Any, TextIO

ACCESS_LOGGER = "bloodcells.access"


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
    """A stream handler whose formatting and writing run on a thread of its own: a request only queues its
    record. Written from the event loop's thread, each line's write() released the GIL and then waited to
    get it back behind the threadpool's threads (about 3% of a worker's samples at 32 clients in
    ``benchmarks.profile``). Lines keep their order; what is queued at exit is written before it."""

    _STOP = None

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stderr
        self.records: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
        self.writer = threading.Thread(target=self._write, name="log-writer", daemon=True)
        self.writer.start()
        atexit.register(self.close)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.put(record)

    def _next(self) -> logging.LogRecord | None:
        return self.records.get()  # waits: its own function, so that profiles can tell the wait apart

    def _write(self) -> None:
        while True:
            record = self._next()
            lines = []
            while record is not self._STOP:
                try:
                    lines.append(self.format(record) + "\n")
                except Exception:  # a record that cannot be formatted must not stop the writer
                    self.handleError(record)
                try:
                    record = self.records.get_nowait()
                except queue.Empty:
                    break
            if lines:
                self.stream.write("".join(lines))
                self.stream.flush()
            if record is self._STOP:
                return

    def close(self) -> None:
        if self.writer.is_alive():
            self.records.put(self._STOP)
            self.writer.join(timeout=5.0)
        super().close()


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
