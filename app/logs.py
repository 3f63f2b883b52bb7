"""JSON log lines: one object per line, for the service's own and uvicorn's loggers."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

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


def logging_config(level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn's ``log_config``: everything as JSON on stderr."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
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
