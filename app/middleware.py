"""Pure ASGI middleware: request ids, access logs, request metrics and common security headers; load
shedding; the streaming upload limit.

Pure ASGI rather than Starlette's BaseHTTPMiddleware: it adds no task or stream per request, which
matters at a millisecond per request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.admission import SHED_CODE, SHED_STATUS, Admission
from app.error_codes import BAD_REQUEST, SHUTTING_DOWN, UPLOAD_TOO_LARGE
from app.errors import ApiError, error_response, upload_too_large
from app.lifecycle import Lifecycle
from app.logs import ACCESS_LOGGER

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# The metrics' method label: any other method a client invents is counted as "other".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
# On every answer: no MIME sniffing of an error body into HTML, no URL leaked to other sites.
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"))
# Health probes (the container's every 2 s, Kubernetes') would fill the access log: a probe that
# succeeds is logged at debug level, one that fails at info; all are counted in the metrics.
PROBE_ROUTES = frozenset({"/healthz", "/readyz"})

CANCELLED_MESSAGE = ("the server stopped before this request's work was done (its shutdown grace period ran out); "
                     "send the request again")

access_logger = logging.getLogger(ACCESS_LOGGER)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def request_id_for(scope: Scope) -> str:
    """The client's X-Request-ID when it is a sane token (it ends up in logs), else a new one."""
    incoming = _header(scope, b"x-request-id")
    if incoming and _REQUEST_ID_RE.fullmatch(incoming):
        return incoming
    return new_request_id()


_ids: tuple[int, str, Iterator[int]] | None = None


def new_request_id() -> str:
    """32 hex digits, unique: a random prefix per process and a counter. uuid4 read os.urandom for every
    request, a system call that released the GIL on the event loop's thread and waited to get it back
    (about 6% of a worker's samples at 32 clients in ``benchmarks.profile``). Not secret, only unique."""
    global _ids
    if _ids is None or _ids[0] != os.getpid():  # a forked worker draws its own prefix
        _ids = (os.getpid(), uuid.uuid4().hex[:16], itertools.count())
    return f"{_ids[1]}{next(_ids[2]) & 0xFFFFFFFFFFFFFFFF:016x}"


def route_of(scope: Scope) -> str:
    # The route's template, not the raw path: a label per distinct URL would grow without bound.
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class RequestContextMiddleware:
    """Gives each request an id (echoed in X-Request-ID), then logs it as one JSON line and counts it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = request_id_for(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["start"] = start
        id_header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())
        status = 500  # what the client gets when the app raises before answering
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message = {**message, "headers": [*message.get("headers", ()), id_header, *SECURITY_HEADERS]}
            await send(message)

        # HEAD is GET without the body, for every GET route (probes, curl -I); the server drops the body.
        inner = {**scope, "method": "GET"} if scope["method"] == "HEAD" else scope
        try:
            await self.app(inner, receive, send_with_id)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still in flight when the shutdown's grace period runs out, and
            # answers a cancelled one with a plain-text 500: this one says what happened, in JSON.
            if not started:
                await error_response(scope, SHUTTING_DOWN.status, SHUTTING_DOWN.code, CANCELLED_MESSAGE)(
                    scope, receive, send_with_id)
            raise
        finally:
            self._record(scope, inner, request_id, status, time.perf_counter() - start)

    @staticmethod
    def _record(scope: Scope, inner: Scope, request_id: str, status: int, seconds: float) -> None:
        route, method = route_of(inner), scope["method"]
        method = method if method in KNOWN_METHODS else "other"
        metrics.labelled(metrics.REQUESTS, method, route, status).inc()
        metrics.labelled(metrics.LATENCY, method, route, status).observe(seconds)
        client = scope.get("client")
        access_logger.log(access_level(route, status), "request", extra={"fields": {
            "method": method, "path": scope["path"], "route": route, "status": status,
            "duration_ms": round(seconds * 1000.0, 3), "request_id": request_id,
            "client": f"{client[0]}:{client[1]}" if client else None}})


def access_level(route: str, status: int) -> int:
    return logging.DEBUG if route in PROBE_ROUTES and status < 400 else logging.INFO


class AdmissionMiddleware:
    """Load shedding: at most ``max_pending`` POST requests (every endpoint that decodes and classifies)
    in this worker at once, from their arrival to their answer (``app.admission``); one more gets 503
    ``overloaded`` with Retry-After at once, before its body is read, and the connection is closed.
    Under ``bloodcells serve`` the HTTP protocol counts and refuses instead, before any application code
    (``app.http_guard``); this does it where no guarded protocol runs. The admitted ones queue for the
    CPU in the threadpool (``max_concurrent_images`` at a time), so the wait of an admitted request is
    bounded by ``max_pending`` requests' work. GETs (health, readiness, metrics) are never shed.

    While the worker drains before exit, answers say ``Connection: close``, so that keep-alive clients
    move to another replica."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.get("state", {})
        lifecycle: Lifecycle | None = state.get("lifecycle")
        if lifecycle is not None and lifecycle.draining:
            send = _closing(send)
        admission: Admission | None = state.get("admission")
        if scope["method"] != "POST" or admission is None or admission.guarded:
            await self.app(scope, receive, send)
            return
        if admission.full():
            metrics.SHED.inc()
            response = error_response(scope, SHED_STATUS, SHED_CODE, admission.message, headers=admission.headers)
            await response(scope, receive, send)
            return
        admission.pending += 1
        try:
            await self.app(scope, receive, send)
        finally:
            admission.pending -= 1


def _closing(send: Send) -> Send:
    async def send_closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
        await send(message)
    return send_closing


class UploadLimitMiddleware:
    """Refuses a request body over ``max_bytes`` with a 413 while it streams in, not after reading it:
    at once when Content-Length declares too much, else as soon as the bytes received pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, upload_too_large(self.max_bytes))
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise upload_too_large(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except ApiError as exc:
            # Normally the app's handler answers this error; this covers a body read outside a route.
            if started or exc.code != UPLOAD_TOO_LARGE.code:
                raise
            await self._refuse(scope, receive, send, exc)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, exc: ApiError) -> None:
        response = error_response(scope, exc.status_code, exc.code, exc.message, headers=exc.headers)
        await response(scope, receive, send)


class JsonCorsMiddleware(CORSMiddleware):
    """Starlette's CORS, whose refusal of a preflight (an origin or a method not allowed) is a 400 in the JSON
    shape of every other error, not plain text."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            headers = Headers(scope=scope)
            if "origin" in headers and "access-control-request-method" in headers:
                response = self.preflight_response(request_headers=headers)
                if response.status_code == BAD_REQUEST.status:
                    kept = {name: value for name, value in response.headers.items()
                            if name not in ("content-length", "content-type")}
                    response = error_response(scope, BAD_REQUEST.status, BAD_REQUEST.code,
                                              f"{bytes(response.body).decode()}: this preflight is refused "
                                              "(BLOODCELLS_CORS_ORIGINS names the origins allowed)", headers=kept)
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
