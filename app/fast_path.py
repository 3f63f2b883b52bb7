"""POST /classify's and /classify/batch's usual requests, answered without FastAPI's per-request machinery.

The usual request is a multipart form whose parts are all files named ``file`` (one) or ``files`` (up to
the batch limit), with at most a ``mode`` and a ``model`` in the query. For it, FastAPI's routing, its
dependency solving, Starlette's form parsing into spooled files and the response's re-validation cost
about a third of a worker's time per request outside the image work (``benchmarks.profile``). This
middleware parses that form with python-multipart directly and calls the same pipeline
(``app.classification``) with the same model choice, limits and threadpool; the answer is the route's
``Classification`` or ``BatchClassification``, the errors its decode errors.

Anything else is the route's to answer, with all its checks and messages: another path or method, a form
with any other part (or no part, or a second ``file``, or more files than the batch limit), other query
parameters, an unknown or empty mode or model, models not loaded. The body read here is then handed on
unchanged. It runs inside the upload limit and the admission middleware, so both apply as before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from anyio import CapacityLimiter
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import classification
from app.classification import Limits
from app.concurrency import Coalescer, header_here, run_cpu_bound, run_image_work
from app.errors import error_response, from_decode_error, request_id_of
from app.model import Classifier
from app.preprocessing import ImageDecodeError
from app.registry import ModelRegistry, UnknownModeError, UnknownModelError
from app.schemas import BatchClassification, Classification

# The routes taken, and the form field that holds their files.
FIELDS = {"/classify": "file", "/classify/batch": "files"}
QUERY_KEYS = frozenset({"mode", "model"})
UTF_8 = frozenset({b"utf-8", b"utf8"})
MAX_PART_HEADERS = 8  # a file part has two or three (Content-Disposition, Content-Type)


@dataclass(frozen=True)
class RouteLabel:
    """What the request context's metrics and access log read of ``scope["route"]``: the route's path."""

    path: str


class ClassifyFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        field = FIELDS.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        state = scope.get("state") or {}
        registry: ModelRegistry | None = state.get("registry")
        query, boundary = (_query(scope), _boundary(scope)) if field else (None, None)
        if registry is None or query is None or boundary is None:
            await self.app(scope, receive, send)
            return
        assert field is not None  # query and boundary are read only for the paths taken
        messages, body, complete = await _read_body(receive)
        max_files = 1 if field == "file" else self._max_batch_files(scope)
        files = _files(body, boundary, field, max_files) if complete else None
        model = _model(registry, query) if files else None
        if not files or model is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        scope["route"] = RouteLabel(scope["path"])  # the metrics' and the access log's label, as the route sets it
        limits, limiter = state["limits"], state["cpu_limiter"]
        try:
            if field == "file":
                answer = await self._classify(model, files[0][1], registry, limits, state["coalescer"], state)
            else:
                answer = await self._batch(model, files, registry, limits, limiter, scope)
        except ImageDecodeError as exc:
            error = from_decode_error(exc)
            await error_response(scope, error.status_code, error.code, error.message)(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    @staticmethod
    async def _classify(model: Classifier, data: bytes, registry: ModelRegistry, limits: Limits,
                        coalescer: Coalescer, state: dict[str, Any]) -> bytes:
        header = classification.header_of(data, limits) if header_here(len(data)) else None
        prediction = await run_image_work(coalescer, state.get("admission"), header, classification.classify, model,
                                          data, limits, registry.cell_model, header)
        return Classification.model_construct(**dict(prediction), elapsed_ms=_elapsed_ms(state)).model_dump_json().encode()

    @staticmethod
    async def _batch(model: Classifier, files: list[tuple[str, bytes]], registry: ModelRegistry, limits: Limits,
                     limiter: CapacityLimiter, scope: Scope) -> bytes:
        outcomes = await run_cpu_bound(limiter, classification.classify_many, model, [data for _, data in files],
                                       limits, registry.cell_model)
        items = classification.batch_items([name for name, _ in files], outcomes, request_id_of(scope))
        return BatchClassification.model_construct(mode=model.mode, model=classification.model_ref(model), results=items,
                                                   elapsed_ms=_elapsed_ms(scope["state"])).model_dump_json().encode()

    @staticmethod
    def _max_batch_files(scope: Scope) -> int:
        return scope["app"].state.settings.max_batch_files


def _elapsed_ms(state: dict[str, Any]) -> float:
    # From the request's arrival (set by the request-context middleware), as the routes measure it.
    return round((time.perf_counter() - state.get("start", time.perf_counter())) * 1000.0, 3)


def _query(scope: Scope) -> dict[str, str] | None:
    """``mode`` and ``model``, each at most once and not empty; None for anything else."""
    pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    query = dict(pairs)
    if len(query) != len(pairs) or not set(query) <= QUERY_KEYS or not all(query.values()):
        return None
    return query


def _boundary(scope: Scope) -> bytes | None:
    """The form's boundary; None for any other body, or a form with a charset other than UTF-8 (Starlette
    decodes its part names and filenames by that charset, this path by UTF-8: the route answers those)."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            kind, options = parse_options_header(value)
            if kind != b"multipart/form-data" or options.get(b"charset", b"utf-8").lower() not in UTF_8:
                return None
            return options.get(b"boundary")
    return None


async def _read_body(receive: Receive) -> tuple[list[Message], bytes, bool]:
    """Every message received, the body, and whether it came whole (no disconnect)."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return messages, b"".join(chunks), True


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()
    return replay


class _NotTheUsualForm(Exception):
    """A part the fast path does not take: the route answers the request, with its own checks."""


def _files(body: bytes, boundary: bytes, field: str, max_files: int) -> list[tuple[str, bytes]] | None:
    """Filename and data of each part, when every part is a file named ``field`` (as Starlette reads a form:
    a part with a filename is a file) and there are at most ``max_files``; None for any other form, as soon
    as a part says so: a body of a million empty parts must not be held part by part on the event loop."""
    parts: list[tuple[dict[bytes, bytes], bytearray]] = []
    header: dict[str, bytearray] = {}
    ended: list[bool] = []

    def on_part_begin() -> None:
        if len(parts) == max_files:
            raise _NotTheUsualForm
        parts.append(({}, bytearray()))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header.setdefault("field", bytearray()).extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header.setdefault("value", bytearray()).extend(data[start:end])

    def on_header_end() -> None:
        headers = parts[-1][0]
        if len(headers) == MAX_PART_HEADERS:
            raise _NotTheUsualForm
        headers[bytes(header.get("field", b"")).lower()] = bytes(header.get("value", b""))
        header.clear()

    def on_headers_finished() -> None:
        disposition, options = parse_options_header(parts[-1][0].get(b"content-disposition"))
        if disposition != b"form-data" or options.get(b"name") != field.encode() or b"filename" not in options:
            raise _NotTheUsualForm

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].extend(data[start:end])

    try:  # the parser refuses some boundaries itself (longer than 256 bytes): the route answers those too
        parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                                            "on_header_value": on_header_value, "on_header_end": on_header_end,
                                            "on_headers_finished": on_headers_finished,
                                            "on_part_data": on_part_data, "on_end": lambda: ended.append(True)})
        parser.write(body)
        parser.finalize()
    except (FormParserError, _NotTheUsualForm):
        return None
    if not ended:  # a body cut short parses without an error, but never reaches its end
        return None
    return [(_decode_filename(parse_options_header(headers[b"content-disposition"])[1][b"filename"]), bytes(data))
            for headers, data in parts]


def _decode_filename(raw: bytes) -> str:
    # As Starlette's form parser does: UTF-8, else Latin-1.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _model(registry: ModelRegistry, query: dict[str, str]) -> Classifier | None:
    try:
        return registry.get(query.get("mode"), query.get("model"))
    except (UnknownModeError, UnknownModelError):
        return None
