"""JSON log lines, written by a thread of their own (``app.logs``)."""

from __future__ import annotations

import io
import json
import logging
import threading
import time

from app.logs import FLUSH_INTERVAL, BackgroundStreamHandler, JsonFormatter, flush_all


def handler_on(stream: io.StringIO) -> tuple[logging.Logger, BackgroundStreamHandler]:
    handler = BackgroundStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.logs.{id(stream)}")
    logger.propagate, logger.level = False, logging.INFO
    logger.addHandler(handler)
    return logger, handler


def test_lines_are_written_in_order_within_the_flush_interval() -> None:
    stream = io.StringIO()
    logger, handler = handler_on(stream)
    try:
        for index in range(100):
            logger.info("request", extra={"fields": {"index": index}})
        deadline = time.monotonic() + 20 * FLUSH_INTERVAL
        while stream.getvalue().count("\n") < 100:
            assert time.monotonic() < deadline, stream.getvalue()[-200:]
            time.sleep(FLUSH_INTERVAL / 5)
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [line["index"] for line in lines] == list(range(100))
        assert {line["logger"] for line in lines} == {logger.name} and lines[0]["message"] == "request"
    finally:
        handler.close()


def test_what_is_queued_at_close_is_written() -> None:
    stream = io.StringIO()
    logger, handler = handler_on(stream)
    logger.info("last words")
    handler.close()  # at once: the line was queued, not yet written
    assert not handler.writer.is_alive()
    assert json.loads(stream.getvalue())["message"] == "last words"


def test_a_record_that_cannot_be_formatted_does_not_stop_the_writer(capsys) -> None:
    stream = io.StringIO()
    logger, handler = handler_on(stream)
    logger.info("%d", "not a number")  # formatting raises: logging reports it on stderr and goes on
    logger.info("after")
    handler.close()
    assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["after"]
    assert "not a number" in capsys.readouterr().err


def test_flush_writes_what_is_queued_at_once() -> None:
    stream = io.StringIO()
    logger, handler = handler_on(stream)
    try:
        logger.info("queued")
        handler.flush()  # not waiting for the writer's next turn: a worker's shutdown calls this
        assert json.loads(stream.getvalue())["message"] == "queued"
    finally:
        handler.close()


def test_a_warning_is_written_without_waiting_for_the_interval(monkeypatch) -> None:
    monkeypatch.setattr("app.logs.FLUSH_INTERVAL", 30.0)
    stream = io.StringIO()
    logger, handler = handler_on(stream)
    try:
        time.sleep(0.05)  # the writer is now in its (long) wait
        logger.warning("at once")
        deadline = time.monotonic() + 5
        while not stream.getvalue():
            assert time.monotonic() < deadline, "the warning waited for the interval"
            time.sleep(0.01)
    finally:
        handler.close()


def test_records_beyond_the_queue_bound_are_dropped_and_counted(monkeypatch) -> None:
    """A stderr that takes nothing (a stalled log collector) must not grow the worker with every request."""
    monkeypatch.setattr("app.logs.MAX_QUEUED", 10)
    monkeypatch.setattr("app.logs.FLUSH_INTERVAL", 30.0)
    stream = io.StringIO()
    logger, handler = handler_on(stream)
    try:
        time.sleep(0.05)  # the writer is now in its (long) wait
        for index in range(25):
            logger.info("request", extra={"fields": {"index": index}})
        assert handler.records.qsize() == 10
        handler.flush()
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [line.get("index") for line in lines[:10]] == list(range(10))
        assert lines[-1]["level"] == "warning" and lines[-1]["message"].startswith("15 log records dropped")
    finally:
        handler.close()


def test_a_writer_stuck_on_its_stream_does_not_hang_a_flush() -> None:
    """A stderr that takes nothing blocks the writer in write(): the shutdown's flush gives up, it does not hang."""
    release = threading.Event()

    class Stalled(io.StringIO):
        def write(self, text: str) -> int:
            release.wait(30)
            return super().write(text)

    stream = Stalled()
    logger, handler = handler_on(stream)
    try:
        logger.warning("stuck")  # wakes the writer, which then blocks in write()
        deadline = time.monotonic() + 5
        while not handler.writing.locked():
            assert time.monotonic() < deadline, "the writer never began writing"
            time.sleep(0.01)
        started = time.monotonic()
        flush_all()
        assert time.monotonic() - started < 3
    finally:
        release.set()
        handler.close()
    assert "stuck" in stream.getvalue()
