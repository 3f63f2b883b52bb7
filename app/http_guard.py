"""uvicorn's HTTP/1.1 protocol (httptools) with the limits a server facing a network needs and uvicorn lacks.

uvicorn bounds idle keep-alive time and nothing else at this layer: measured, a 200 MB header line was
read whole, a connection that sent half its headers or half its body was never closed, and 45,000 idle
sockets took every file descriptor of both workers. Here, per connection:

- the header section must arrive within ``header_timeout`` of its first byte (or of the connection
  opening), and be at most ``max_header_bytes`` and ``max_headers`` lines (431), its URL at most
  ``max_request_line`` (414);
- the body must arrive within ``body_timeout`` of the headers, or of the request's start when it was
  pipelined behind another (408, then closed); a chunked body's trailers are held to ``max_header_bytes``;
- an answer of which the client reads nothing (its socket full) for ``body_timeout`` closes the connection;
- a worker holds at most ``max_connections``: at the cap, a new connection closes the longest-idle one
  (no request in progress), or is itself closed when every one is busy;
- a POST over the worker's admission limit (``app.admission``) is refused 503 as soon as its headers are
  in, without running any application code: refusals must cost far less than the work they protect.
  A POST counts against the limit from its last body byte (or, pipelined behind another, from its start)
  to its answer, so that slow uploads and queued requests cannot hold the slots of the work;
- the server's own refusals (a request it cannot parse included) are the service's JSON error shape.

In front of a network, a reverse proxy adds per-client limits (deploy/nginx.conf); this keeps a bare
``bloodcells serve`` from being taken down by one client.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app import error_codes, metrics
from app.admission import SHED_CODE, SHED_STATUS, Admission
from app.error_codes import ErrorCode
from app.errors import error_body, error_response, is_protocol_path
from app.middleware import REQUEST_ID_HEADER, SECURITY_HEADERS, RequestContextMiddleware, new_request_id

logger = logging.getLogger("bloodcells")

HEAD_END = b"\r\n\r\n"
# Chunk framing a body may take: one byte of data per chunk costs 5 bytes of framing ("1\r\n", "\r\n").
FRAMING_PER_BODY_BYTE = 8
FRAMING_SLACK = 64 * 1024  # one read may also hold the start of the next request
# Enough of a request line to tell its path's first segment (which API's error shape a refusal takes).
LINE_START_BYTES = 256
# A client that has taken nothing of its answer for this long counts as one that reads nothing, when a
# worker's unsent answers are over their limit (``max_unsent_bytes``).
UNREAD_GRACE_S = 1.0
# Chunks of one chunked body: each costs a parser callback into Python. 3 MB sent a byte a chunk held the event
# loop 1.2 s; this many cost milliseconds, and 10 MiB in as many chunks are chunks of 640 bytes.
MAX_CHUNKS = 16_384


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int = 1000
    max_header_bytes: int = 32 * 1024
    max_request_line: int = 8 * 1024
    max_headers: int = 100
    max_pipelined: int = 32
    max_unsent_bytes: int = 128 * 1024 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0


def error_bytes(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                protocol_shape: bool = False) -> bytes:
    """A whole HTTP/1.1 error response in the service's JSON shape (the Open Inference Protocol's
    for its paths), closing the connection."""
    request_id = new_request_id()
    shape = {"error": message} if protocol_shape else error_body(code, message, request_id)
    body = json.dumps(shape).encode()
    # What every answer carries (app.middleware): its request id and the security headers.
    common = {REQUEST_ID_HEADER: request_id, **{name.decode(): value.decode() for name, value in SECURITY_HEADERS}}
    extra = "".join(f"{name.lower()}: {value}\r\n" for name, value in {**common, **(headers or {})}.items()
                    if name.lower() != "connection")
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{extra}connection: close\r\n\r\n")
    return head.encode("latin-1") + body


def _shed_app(admission: Admission) -> Any:
    """The 503 of a request shed as it would start: no application code, but the request context's id, headers,
    access log line and metrics, as every other answer."""
    async def shed(scope: Any, receive: Any, send: Any) -> None:
        await error_response(scope, SHED_STATUS, SHED_CODE, admission.message, headers=admission.headers)(
            scope, receive, send)
    return shed


class LimitBroken(Exception):
    """Raised from a parser callback: httptools stops, and data_received refuses the request."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's protocol; the limits come from ``config.http_limits`` (an ``HttpLimits``)."""

    # The worker's one pending look at its unsent answers (``_bound_unsent``): one event loop per process.
    unsent_recheck: asyncio.TimerHandle | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits: HttpLimits = getattr(self.config, "http_limits", HttpLimits())
        self.in_head = True  # between requests, or reading a header section
        self.head_bytes = 0
        self.parsed_head_bytes = 0  # of the request being parsed, as httptools hands its headers over
        self.broken_limit: tuple[ErrorCode, str] | None = None  # set by a parser callback that stops the parse
        self.line_done = False  # the request line has ended
        self.line_start = b""  # its first bytes as they arrived: the path of a request refused before it is parsed
        self.message_begun = False  # httptools has begun parsing the current request (its url is this one's)
        self.shedding = False  # refused for load: dropping the body, then closing
        self.counted = 0  # requests of this connection counted in the worker's admission
        self.head_tail = b""  # the last bytes of the header section so far: its end may straddle two reads
        self.idle_since = 0.0
        self.deadline: asyncio.TimerHandle | None = None
        self.trailer_bytes = 0  # of the chunked body's trailer section, which uvicorn adds to the headers
        self.after_head = 0  # bytes received since the header section ended
        self.body_bytes = 0  # of them, the body's own
        self.chunks = 0  # of a chunked body
        self.write_stall: asyncio.TimerHandle | None = None  # the client has left the answer unread
        self.next_held = False  # a pipelined request waits for the client to read the answers before it
        self.stalled_since = 0.0  # since when the client has taken nothing of its answer (write_stall set)
        self.unsent_at_stall = 0  # what was left to send then
        self.running: Any = None  # the request being answered (a later one may be queued behind it)
        self.working: Any = None  # the request whose application code runs
        self.orphan: Any = None  # that request, when its connection is lost while it counts: uncounted at its end

    # --- connections -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.idle_since = self.loop.time()
        admission = self.admission
        if admission is not None:
            admission.guarded = True
        if len(self.connections) > self.limits.max_connections and not self._evict_idle():
            metrics.CONNECTIONS_CLOSED.labels(reason="over_capacity").inc()
            self.connections.discard(self)
            transport.abort()
            return
        self._arm(self.limits.header_timeout, self._header_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._end_write_stall()
        working = self.working
        if working is not None and self.counted and not working.response_complete and working.scope["method"] == "POST":
            # Its work runs on whether the client waits or not: its place is freed when the work ends
            # (_until_done), or a client that drops each connection after its upload could queue any amount.
            self.counted -= 1
            self.orphan = working
        self._uncount(self.counted)
        # uvicorn tells only the request parsed last: one running behind it would read from the closed
        # transport and fail with a traceback at error level.
        for cycle in (self.running, *(queued for queued, _ in self.pipeline)):
            if cycle is not None and cycle is not self.cycle and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        admission = self.admission
        if cycle is not self.running and self.running is not None and cycle.scope["method"] == "POST" \
                and admission is not None and admission.full():
            # Queued behind another (the first request of a connection was checked in on_headers_complete):
            # shed now that it would run, the earlier answer complete.
            metrics.SHED.inc()
            app = RequestContextMiddleware(_shed_app(admission))
        self.running = self.working = cycle
        super()._start_asgi_task(cycle, self._until_done(cycle, app))

    def _until_done(self, cycle: Any, app: Any) -> Any:
        """``app`` marking ``cycle`` as the one whose work runs, until it ends."""
        async def run(scope: Any, receive: Any, send: Any) -> None:
            try:
                await app(scope, receive, send)
            finally:
                if self.working is cycle:
                    self.working = None
                if self.orphan is cycle:
                    self.orphan = None
                    admission = self.admission
                    if admission is not None:
                        admission.pending -= 1
        return run

    # --- writing -----------------------------------------------------------------------------------
    def pause_writing(self) -> None:
        """The socket's buffers are full: a client that reads nothing of its answer for ``body_timeout`` holds
        the request (and its place in the admission count) no longer. A slow reader that reads is not cut."""
        super().pause_writing()
        if self.write_stall is None:
            self._stalled(self.transport.get_write_buffer_size())
        self._bound_unsent()

    def _stalled(self, unsent: int) -> None:
        self.stalled_since, self.unsent_at_stall = self.loop.time(), unsent
        self._watch_write(unsent)

    def _bound_unsent(self) -> None:
        """Answers written and not yet taken by their clients, every connection of the worker together, within
        ``max_unsent_bytes``: past it, the connections whose clients have taken nothing of theirs for
        UNREAD_GRACE_S or more are closed, the longest first; clients that read are never cut. A /preprocess
        PNG is several MB for a 1 MB upload: 33 clients that read none took a worker from 183 to 613 MB, each
        for the unread-answer timeout. Where reading and not reading cannot be told apart yet, it looks again."""
        now = self.loop.time()
        stalled = [c for c in self.connections if isinstance(c, GuardedHttpToolsProtocol)
                   and c.write_stall is not None and not c.transport.is_closing()]
        unsent = sum(c.transport.get_write_buffer_size() for c in stalled)
        if unsent <= self.limits.max_unsent_bytes:
            return
        unread = [c for c in stalled if now - c.stalled_since >= UNREAD_GRACE_S
                  and c.transport.get_write_buffer_size() >= c.unsent_at_stall]
        for oldest in sorted(unread, key=lambda c: c.stalled_since):
            if unsent <= self.limits.max_unsent_bytes:
                return
            unsent -= oldest.transport.get_write_buffer_size()
            metrics.CONNECTIONS_CLOSED.labels(reason="unsent_answers").inc()
            logger.info("closed: the worker's unsent answers were over their limit", extra={"fields": {
                "limit_bytes": self.limits.max_unsent_bytes,
                "client": f"{oldest.client[0]}:{oldest.client[1]}" if oldest.client else None}})
            oldest._end_write_stall()
            oldest.transport.abort()
        if unsent > self.limits.max_unsent_bytes and GuardedHttpToolsProtocol.unsent_recheck is None:
            GuardedHttpToolsProtocol.unsent_recheck = self.loop.call_later(UNREAD_GRACE_S, self._recheck_unsent)

    def _recheck_unsent(self) -> None:
        GuardedHttpToolsProtocol.unsent_recheck = None
        self._bound_unsent()

    def resume_writing(self) -> None:
        self._end_write_stall()
        super().resume_writing()
        if self.next_held:
            self.next_held = False
            self._start_next()

    def _end_write_stall(self) -> None:
        if self.write_stall is not None:
            self.write_stall.cancel()
            self.write_stall = None

    def _watch_write(self, buffered: int) -> None:
        self.write_stall = self.loop.call_later(self.limits.body_timeout, self._write_stalled, buffered)

    def _write_stalled(self, buffered: int) -> None:
        self.write_stall = None
        now = self.transport.get_write_buffer_size()
        if now < buffered:  # the client has read some meanwhile: watch on
            self._stalled(now)
            return
        metrics.CONNECTIONS_CLOSED.labels(reason="unread_answer").inc()
        logger.info("closed: the answer was left unread", extra={"fields": {
            "timeout_s": self.limits.body_timeout, "client": f"{self.client[0]}:{self.client[1]}" if self.client else None}})
        self.transport.abort()  # close() would wait to send what the client does not read

    @property
    def admission(self) -> Admission | None:
        return self.app_state.get("admission")

    def is_idle(self) -> bool:
        """Waiting for a request that has not begun: nothing is lost by closing it."""
        return ((self.cycle is None or self.cycle.response_complete) and self.in_head and self.head_bytes == 0
                and not self.shedding)

    def _evict_idle(self) -> bool:
        """Close the connection idle the longest (never one with a request in progress), for this one."""
        idle = [c for c in self.connections if c is not self and isinstance(c, GuardedHttpToolsProtocol)
                and c.is_idle() and not c.transport.is_closing()]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.idle_since)
        metrics.CONNECTIONS_CLOSED.labels(reason="evicted_idle").inc()
        oldest.transport.close()
        return True

    # --- reading -----------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if not self.in_head:
            self.after_head += len(data)
        if self.in_head:
            if self.deadline is None:  # the first byte of a request on a kept-alive connection
                self._arm(self.limits.header_timeout, self._header_timed_out)
            if not self.line_done:
                newline = data.find(b"\n")
                self.line_done = newline >= 0
                if not self.message_begun and len(self.line_start) < LINE_START_BYTES:
                    self.line_start += data[:LINE_START_BYTES - len(self.line_start)]
                if self.head_bytes + (newline if self.line_done else len(data)) > self.limits.max_request_line:
                    self._refuse(error_codes.URI_TOO_LONG, self._uri_too_long())
                    return
            joined = self.head_tail + data
            end = joined.find(HEAD_END)
            self.head_bytes += len(data) if end < 0 else max(0, end - len(self.head_tail))
            self.head_tail = joined[-(len(HEAD_END) - 1):]
            if self.head_bytes > self.limits.max_header_bytes:
                self._refuse(error_codes.HEADERS_TOO_LARGE, self._headers_too_large())
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            broken, self.broken_limit = self.broken_limit, None
            if broken is not None:
                self._refuse(*broken)
            else:
                self._refuse(error_codes.BAD_REQUEST, "malformed HTTP request (request line, header, method or "
                             "Content-Length); send a valid HTTP/1.1 request")
            return
        # What is not body (chunk framing, trailers) is bounded: httptools buffers a trailer line whole.
        if not self.in_head and not self.transport.is_closing() \
                and self.after_head - FRAMING_PER_BODY_BYTE * self.body_bytes > self.limits.max_header_bytes + FRAMING_SLACK:
            self._refuse(error_codes.HEADERS_TOO_LARGE, f"the chunked body's framing and trailers are over "
                         f"{self.limits.max_header_bytes:,} bytes; send no trailers")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.parsed_head_bytes = 0
        self.message_begun = True

    def on_url(self, url: bytes) -> None:
        # The request line and headers are also counted as httptools parses them: a request that arrives in the
        # same read as the one before it is past data_received's checks, which count up to the first header end.
        super().on_url(url)
        if len(self.url) > self.limits.max_request_line:
            self._break_limit(error_codes.URI_TOO_LONG, self._uri_too_long())

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:
            super().on_header(name, value)
            self.parsed_head_bytes += len(name) + len(value) + 4
            if len(self.headers) > self.limits.max_headers:  # each is kept as Python objects
                self._break_limit(error_codes.HEADERS_TOO_LARGE, self._too_many_headers())
            if self.parsed_head_bytes + len(self.url) > self.limits.max_header_bytes:
                self._break_limit(error_codes.HEADERS_TOO_LARGE, self._headers_too_large())
            return
        # A trailer, after a chunked body: bounded as the header section is (uvicorn would keep them all).
        self.trailer_bytes += len(name) + len(value) + 4
        if self.trailer_bytes > self.limits.max_header_bytes and not self.transport.is_closing():
            self._refuse(error_codes.HEADERS_TOO_LARGE, f"the chunked body's trailers are over "
                         f"{self.limits.max_header_bytes:,} bytes; send no trailers")

    def on_headers_complete(self) -> None:
        self.in_head, self.head_tail, self.trailer_bytes, self.after_head, self.body_bytes = False, b"", 0, 0, 0
        self.chunks = 0
        if self.shedding:  # a request pipelined behind a refused one
            return
        # A request pipelined behind one in progress waits, unread, for its turn: neither refused (the
        # client would read the refusal as the earlier request's answer) nor timed.
        queued = self.cycle is not None and not self.cycle.response_complete
        admission = self.admission
        if not queued and admission is not None and admission.full() and self.parser.get_method() == b"POST":
            self._shed(admission)
            return
        if queued and len(self.pipeline) >= self.limits.max_pipelined:
            # One read of tiny requests parses into thousands of waiting requests (2.4 KB each) and each answer
            # lets the next read in: without this, 2 MB of them took a worker from 180 to 424 MB.
            self._break_limit(error_codes.TOO_MANY_REQUESTS, f"more than {self.limits.max_pipelined} requests "
                              "wait behind the one being answered; read the answers before sending more")
        if queued:
            self._disarm()  # timed once it starts (on_response_complete), not by the header timer of its first bytes
        else:
            self._arm(self.limits.body_timeout, self._body_timed_out)
        super().on_headers_complete()

    def on_chunk_header(self) -> None:
        self.chunks += 1
        if self.chunks > MAX_CHUNKS + 1:  # the last chunk, of no data, ends the body
            self._break_limit(error_codes.BAD_REQUEST, f"the chunked body comes in more than {MAX_CHUNKS:,} chunks; "
                              "send larger chunks, or the body with a Content-Length")

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if not self.shedding:  # after a refusal the rest of the body is read and dropped
            super().on_body(body)

    def on_message_complete(self) -> None:
        self.message_begun = False
        if self.shedding:
            self.transport.close()
            self._disarm()
            return
        self._disarm()
        self.in_head, self.head_bytes, self.line_done, self.line_start = True, 0, False, b""
        cycle = self.cycle
        # A request queued behind another counts once it runs (on_response_complete): a client that
        # pipelines POSTs and reads nothing must not take the worker's places.
        if cycle is not None and not self._queued(cycle):
            self._count(cycle)
        super().on_message_complete()
        if cycle is not None and cycle.response_complete and not self.pipeline and not self.transport.is_closing():
            # Answered before its body was in (a 404, a 413): the keep-alive timer uvicorn armed then
            # was cancelled by the body's bytes; arm it again, or the connection would idle forever.
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)

    def on_response_complete(self) -> None:
        self.idle_since = self.loop.time()
        self._uncount(1)
        if self.pipeline and self.flow.write_paused and not self.transport.is_closing():
            # The client has left the answers so far unread: the next request starts once it reads (in
            # resume_writing), or never. Started now, it took an admission place while its answer waited to be
            # written: 33 such connections held every place of a worker until the unread-answer timeout.
            self.next_held = True
            return
        self._start_next()

    def _start_next(self) -> None:
        following = self.pipeline[-1][0] if self.pipeline else None  # the queued request uvicorn starts next
        super().on_response_complete()
        if following is None and self.message_begun and self.in_head and not self.transport.is_closing():
            # The next request began in the same read as this one, its headers unfinished: timed from now as
            # any request's headers are, not by the keep-alive timer uvicorn armed (620 s behind some proxies).
            self._unset_keepalive_if_required()
            self._arm(self.limits.header_timeout, self._header_timed_out)
        if following is None or self.transport.is_closing() or self._queued(following):
            return
        if following.more_body:  # its body is still to come: timed from now, as a request's that was not queued
            self._arm(self.limits.body_timeout, self._body_timed_out)
        else:
            self._count(following)

    def _queued(self, cycle: Any) -> bool:
        return any(queued is cycle for queued, _ in self.pipeline)

    def _count(self, cycle: Any) -> None:
        """A POST whose body is in and whose answer has not begun: it takes a place in the admission count."""
        if not cycle.response_complete and cycle.scope["method"] == "POST" and self.admission is not None:
            self.admission.pending += 1
            self.counted += 1

    def _uncount(self, requests: int) -> None:
        requests = min(requests, self.counted)
        if requests and self.admission is not None:
            self.admission.pending -= requests
            self.counted -= requests

    # --- refusals ----------------------------------------------------------------------------------
    def _break_limit(self, error: ErrorCode, message: str) -> None:
        """From a parser callback: stop parsing (httptools raises out of feed_data) and refuse in data_received."""
        self.broken_limit = (error, message)
        raise LimitBroken(message)

    def _uri_too_long(self) -> str:
        return f"the request line is over {self.limits.max_request_line:,} bytes; send a shorter URL"

    def _too_many_headers(self) -> str:
        return f"the request has more than {self.limits.max_headers} headers; send fewer"

    def _headers_too_large(self) -> str:
        return (f"the request line and headers are over {self.limits.max_header_bytes:,} bytes; send smaller "
                "headers")

    def _shed(self, admission: Admission) -> None:
        """Answer 503 at once, then read and drop the rest of the body before closing: closing with
        unread bytes would make the kernel reset the connection, and the client could lose the answer."""
        metrics.SHED.inc()
        metrics.REJECTED.labels(reason=SHED_CODE).inc()
        self.shedding = True
        self.transport.write(error_bytes(SHED_STATUS, SHED_CODE, admission.message, admission.headers,
                                         protocol_shape=is_protocol_path(self._path())))
        self._arm(self.limits.header_timeout, self.transport.close)

    def _path(self) -> str:
        """The request's path, before uvicorn has parsed it into the scope (its query cut off): from the first
        bytes of its request line where this read began with it (a request refused before httptools parsed its
        line, whose ``url`` is still the previous request's), else from what httptools parsed."""
        target: bytes = getattr(self, "url", b"")  # uvicorn sets it as the first request begins
        if self.line_start and not self.message_begun:
            parts = self.line_start.split(b" ", 2)
            target = parts[1] if len(parts) > 1 else b""
        return target.partition(b"?")[0].decode("latin-1")

    def send_400_response(self, msg: str) -> None:
        self._refuse(error_codes.BAD_REQUEST, f"{msg.rstrip('.')}; send a valid HTTP/1.1 request")

    def _refuse(self, error: ErrorCode, message: str) -> None:
        status, code = error.status, error.code
        metrics.CONNECTIONS_CLOSED.labels(reason=code).inc()
        logger.info("refused by the HTTP server", extra={"fields": {
            "status": status, "code": code, "client": f"{self.client[0]}:{self.client[1]}" if self.client else None}})
        if not self.transport.is_closing():
            # Only where no answer of the app to this request has started: else the client would read
            # two. Between requests, the previous cycle is the finished one.
            cycle = self.cycle
            if self.in_head:
                writable = cycle is None or cycle.response_complete
            else:
                writable = cycle is None or not cycle.response_started
            running = self.running
            if running is not None and running is not cycle and not running.response_complete:
                writable = False  # an earlier request's answer is still being written: just close
            if writable and not self.shedding:
                self.transport.write(error_bytes(status, code, message, protocol_shape=is_protocol_path(self._path())))
            self.transport.close()
        self._disarm()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown begins. A request whose body is still arriving would wait for it until
        the grace period ran out and then be cancelled, which uvicorn answers with a plain-text 500: refuse
        it now instead, as the drain does new requests."""
        cycle, running = self.cycle, self.running
        if running is not None and running is not cycle and not running.response_complete:
            running.keep_alive = False  # it finishes within the grace; the one queued behind it never starts
            return
        if self.next_held:
            # Answers written, unread, and requests waiting behind them: none of those will run, and a refusal
            # written now would be read as the first one's answer. Closed once the answers are out.
            self.transport.close()
            return
        if cycle is not None and cycle.more_body and not cycle.response_started and not self.shedding:
            self._refuse(error_codes.SHUTTING_DOWN, "the server is shutting down and the request body had not "
                         "all arrived; send the request again")
            return
        super().shutdown()

    def _header_timed_out(self) -> None:
        self.deadline = None
        if self.head_bytes == 0 and not self.message_begun:  # idle, nothing of a request sent: just close
            metrics.CONNECTIONS_CLOSED.labels(reason="idle_timeout").inc()
            self.transport.close()
            return
        self._refuse(error_codes.REQUEST_TIMEOUT, f"the request headers did not arrive within "
                     f"{self.limits.header_timeout:g} s; send them at once")

    def _body_timed_out(self) -> None:
        self.deadline = None
        if self.cycle is not None and self.cycle.response_complete:
            self.transport.close()  # answered already (e.g. 413); the rest of the body is not wanted
            return
        self._refuse(error_codes.REQUEST_TIMEOUT, f"the request body did not arrive within "
                     f"{self.limits.body_timeout:g} s of its headers; send it at once")

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
