"""The hostile cases of tests/test_hostile.py against the compose stack, through nginx on its published port.

deploy/test-stack.sh runs this module with BLOODCELLS_STACK_PORT set, once the stack is up; without it
the module skips (a plain `pytest` starts no Docker stack). nginx answers the HTTP-layer cases itself, in
the service's JSON error shape (deploy/nginx.conf); the rest reach a replica.
"""

from __future__ import annotations

import os
import time

import pytest

from tests import hostile
from tests.hostile import Exchange, exchange, get, post_files, request_bytes
from tests.live_server import multipart

PORT = int(os.environ.get("BLOODCELLS_STACK_PORT", "0"))
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not PORT, reason="run by deploy/test-stack.sh against the compose stack "
                                                  "(BLOODCELLS_STACK_PORT)")]

NGINX_HEADER_TIMEOUT_S = NGINX_BODY_TIMEOUT_S = 10  # client_header_timeout, client_body_timeout
MARGIN_S = 3.0


def assert_error(answer: Exchange, status: int, code: str) -> None:
    assert answer.status == status, (answer.status, answer.body[:300])
    assert answer.code == code, answer.body[:300]
    assert answer.headers.get("content-type", "").startswith("application/json")


def assert_408_or_closed(answer: Exchange) -> None:
    # nginx closes a connection whose headers or body time out without a word (reset_timedout_connection);
    # a 408 would do as well.
    assert answer.status in (0, 408), (answer.status, answer.body[:300])
    if answer.status:
        assert answer.code == "request_timeout"


def test_a_200_mb_header_line_is_refused_by_the_proxy() -> None:
    line = b"a" * (1 << 20)
    answer = exchange(PORT, [b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: ", *(line for _ in range(200))])
    assert_error(answer, 431, "headers_too_large")
    assert answer.seconds < 2


def test_a_100_kb_query_string_is_414() -> None:
    assert_error(exchange(PORT, [b"GET /healthz?" + b"q" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"]), 414,
                 "uri_too_long")


def test_a_negative_content_length_is_400() -> None:
    answer = exchange(PORT, [b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"])
    assert_error(answer, 400, "bad_request")


def test_an_invented_method_is_a_json_4xx() -> None:
    answer = exchange(PORT, [b"FOO /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"])
    assert 400 <= answer.status < 500 and answer.code, (answer.status, answer.body[:300])


def test_partial_headers_are_closed_within_the_proxy_timeout() -> None:
    started = time.monotonic()
    assert_408_or_closed(exchange(PORT, [b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: multi"], wait=30))
    assert time.monotonic() - started < NGINX_HEADER_TIMEOUT_S + MARGIN_S


def test_a_stalled_upload_is_closed_within_the_proxy_timeout() -> None:
    body, content_type = multipart([("file", "cell.png", hostile.white_png(64, 64))])
    head = request_bytes("POST", "/classify", headers={"Content-Type": content_type})
    head = head.replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode())
    started = time.monotonic()
    assert_408_or_closed(exchange(PORT, [head, body[: len(body) // 2]], wait=30))
    assert time.monotonic() - started < NGINX_BODY_TIMEOUT_S + MARGIN_S


def test_idle_sockets_do_not_starve_the_probes() -> None:
    held = hostile.idle_sockets(PORT, 600)
    try:
        assert len(held) == 600
        assert [get(PORT, "/readyz").status for _ in range(20)] == [200] * 20
    finally:
        for sock in held:
            sock.close()


def test_the_per_request_pixel_budget_holds_behind_the_proxy() -> None:
    answer = post_files(PORT, "/classify/batch", "files", [hostile.white_png(5000, 5000)] * 16)
    assert_error(answer, 413, "request_too_many_pixels")


def test_head_and_a_real_classification_pass_through() -> None:
    assert exchange(PORT, [b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"]).status == 200
    png, count = hostile.blobs_png(2000, 2000)
    answer = post_files(PORT, "/classify", "file", [png])
    assert answer.status == 200, answer.body[:300]
    assert len(answer.json["cells"]) == 16 and answer.json["cells_omitted"] == count - 16
