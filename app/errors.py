"""The one JSON error shape and the exception handlers.

Every 4xx answer is ``{"error": {"code", "message", "request_id"}}`` and is counted in /metrics under
its code. The codes, their status codes and what each means are catalogued in ``app.error_codes``
(the README's table is checked against it by tests/test_error_codes.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Scope

from app import error_codes, metrics
from app.error_codes import DECODE_ERROR_STATUS, DEFAULT_CODES, ErrorCode
from app.preprocessing import ImageDecodeError
from app.registry import UnknownModeError
from app.schemas import ErrorResponse

logger = logging.getLogger("bloodcells")

DEFAULT_MESSAGES: dict[int, str] = {
    404: "no such endpoint; see /docs for the API",
    405: "this endpoint does not accept that method; see /docs for the API",
}


class ApiError(StarletteHTTPException):
    """An error answer with its code; a Starlette HTTPException, so FastAPI passes it through untouched
    even when it is raised while the body is being parsed."""

    def __init__(self, status_code: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.code = code
        self.message = message

    @classmethod
    def of(cls, error: ErrorCode, message: str, headers: dict[str, str] | None = None) -> ApiError:
        return cls(error.status, error.code, message, headers=headers)


def from_decode_error(exc: ImageDecodeError) -> ApiError:
    return ApiError(DECODE_ERROR_STATUS.get(exc.reason, 400), exc.reason, exc.message)


def from_unknown_mode(exc: UnknownModeError) -> ApiError:
    return ApiError.of(error_codes.UNKNOWN_MODE, exc.message)


def upload_too_large(limit: int) -> ApiError:
    # Connection: close, so that the client stops sending the rest of the body.
    return ApiError.of(error_codes.UPLOAD_TOO_LARGE, f"the upload is over the limit of {limit:,} bytes; send a smaller "
                    "image (a 320x240 or 640x480 JPEG is plenty) or fewer files per batch",
                    headers={"Connection": "close"})


def request_id_of(scope: Scope) -> str | None:
    return scope.get("state", {}).get("request_id")


def error_body(code: str, message: str, request_id: str | None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "request_id": request_id}}


# The Open Inference Protocol's paths answer errors in its own shape, {"error": "<message>"}.
PROTOCOL_PREFIX = "/v2"


def is_protocol_path(path: str) -> bool:
    """/v2 and what is under it; not /v2foo, which is nobody's path and gets the service's shape."""
    return path == PROTOCOL_PREFIX or path.startswith(PROTOCOL_PREFIX + "/")


def error_response(scope: Scope, status_code: int, code: str, message: str,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The error answer of a request, in the shape of the API its path belongs to; also for the
    middleware's refusals (upload too large, overloaded), which come before any route."""
    if status_code < 500:
        metrics.REJECTED.labels(reason=code).inc()
    if is_protocol_path(scope.get("path", "")):
        return JSONResponse({"error": message}, status_code=status_code, headers=headers)
    return JSONResponse(error_body(code, message, request_id_of(scope)), status_code=status_code, headers=headers)


async def http_exception_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = getattr(exc, "code", None) or DEFAULT_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code in DEFAULT_MESSAGES and message in ("Not Found", "Method Not Allowed"):
        message = DEFAULT_MESSAGES[exc.status_code]
    headers = exc.headers
    allowed = (headers or {}).get("Allow", "").split(", ")
    if "GET" in allowed and "HEAD" not in allowed:  # every GET route answers HEAD (app.middleware)
        headers = {**(headers or {}), "Allow": ", ".join([*allowed, "HEAD"])}
    return error_response(request.scope, exc.status_code, code, message, headers=headers)


def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    kind, *rest = list(loc) or ["request"]
    name = ".".join(str(part) for part in rest)
    return {"query": f"query parameter {name!r}", "body": f"form field {name!r}",
            "header": f"header {name!r}"}.get(str(kind), name or str(kind))


async def validation_exception_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    missing = [e for e in errors if e.get("type") == "missing" and list(e.get("loc", ()))[:1] == ["body"]]
    if missing and len(missing) == len(errors):
        fields = ", ".join(repr(str(e["loc"][-1])) for e in missing)
        message = (f"the multipart form has no {fields} field; send the image as multipart/form-data, "
                   f"e.g. curl -F file=@cell.jpg (or -F files=@a.jpg -F files=@b.jpg for /classify/batch)")
        return error_response(request.scope, error_codes.MISSING_FIELD.status, error_codes.MISSING_FIELD.code, message)
    details = "; ".join(f"{_where(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors)
    return error_response(request.scope, error_codes.VALIDATION_ERROR.status, error_codes.VALIDATION_ERROR.code,
                          f"invalid request: {details}; see /docs")


async def decode_error_handler(request: Request, exc: ImageDecodeError) -> JSONResponse:
    return await http_exception_handler(request, from_decode_error(exc))


async def unhandled_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    request_id = request_id_of(request.scope)
    logger.exception("unhandled error", extra={"fields": {"request_id": request_id}})
    # Starlette answers this one from outside the middleware that adds X-Request-ID.
    return error_response(request.scope, error_codes.INTERNAL_ERROR.status, error_codes.INTERNAL_ERROR.code,
                          f"internal error; report it with the request id {request_id}",
                          headers={"X-Request-ID": request_id} if request_id else None)


# nginx's convention for "the client closed the connection before the answer": no one reads it.
CLIENT_CLOSED_STATUS = 499


async def client_disconnect_handler(request: Request, exc: ClientDisconnect) -> Response:
    # The client went away mid-upload (or the server closed a stalled one): not the server's error.
    return Response(status_code=CLIENT_CLOSED_STATUS)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_exception_handler)  # type: ignore[arg-type]
    app.add_exception_handler(ImageDecodeError, decode_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(ClientDisconnect, client_disconnect_handler)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unhandled_exception_handler)


# For the OpenAPI schema: the error answers each route can give, as codes of the catalogue (each
# status described by those codes), or as bare statuses (described by all the catalogue's codes of it).
def error_responses(*errors: ErrorCode | int) -> dict[int | str, dict[str, Any]]:
    by_status: dict[int, list[ErrorCode]] = {}
    for error in errors:
        if isinstance(error, ErrorCode):
            by_status.setdefault(error.status, []).append(error)
        else:
            by_status.setdefault(error, []).extend(error_codes.of_status(error))
    return {status: {"model": ErrorResponse,
                     "description": error_codes.describe(sorted(set(codes), key=error_codes.CATALOGUE.index))}
            for status, codes in sorted(by_status.items())}
