"""JSON log lines, written by a thread of their own (``app.logs``)."""

from __future__ import annotations

import io
import json
import logging
import time

from app.logs import FLUSH_INTERVAL, BackgroundStreamHandler, JsonFormatter


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
