"""The one JSON error shape, the status code of each kind of bad input, and the exception handlers.

Every 4xx answer is ``{"error": {"code", "message", "request_id"}}`` and is counted in /metrics under
its code. Status codes (the README's table comes from here):

=====  ==========================================================================================
400    ``empty``, ``not_an_image``, ``corrupt``, ``zero_size`` (the bytes are not a usable image),
       ``bad_request`` (malformed multipart, or an HTTP request the server cannot parse)
404    ``not_found``;  405 ``method_not_allowed``
408    ``request_timeout`` (headers or body not received in time; the connection is closed)
413    ``upload_too_large`` (the body, counted while it streams), ``too_many_pixels`` (declared by
       the image header: refused before decoding), ``request_too_many_pixels`` (the images of one
       request, in all)
414    ``uri_too_long``;  431 ``headers_too_large``
415    ``unsupported_media_type`` (the request is not multipart/form-data),
       ``unsupported_format`` (an image, but neither JPEG nor PNG)
422    ``missing_field``, ``duplicate_field``, ``validation_error`` (FastAPI's own), ``unknown_mode``,
       ``too_many_files``
500    ``internal_error``
503    ``not_ready`` (no models loaded), ``shutting_down`` (draining before exit),
       ``overloaded`` (load shedding; with Retry-After)
=====  ==========================================================================================
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Scope

from app import metrics
from app.preprocessing import ImageDecodeError
from app.registry import UnknownModeError
from app.schemas import ErrorResponse

logger = logging.getLogger("bloodcells")

DECODE_ERROR_STATUS: dict[str, int] = {
    "empty": 400,
    "not_an_image": 400,
    "corrupt": 400,
    "zero_size": 400,
    "unsupported_format": 415,
    "too_many_pixels": 413,
    "request_too_many_pixels": 413,
}

DEFAULT_CODES: dict[int, str] = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "upload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "validation_error",
    431: "headers_too_large",
    500: "internal_error",
    503: "not_ready",
}

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


def from_decode_error(exc: ImageDecodeError) -> ApiError:
    return ApiError(DECODE_ERROR_STATUS.get(exc.reason, 400), exc.reason, exc.message)


def from_unknown_mode(exc: UnknownModeError) -> ApiError:
    return ApiError(422, "unknown_mode", exc.message)


def upload_too_large(limit: int) -> ApiError:
    # Connection: close, so that the client stops sending the rest of the body.
    return ApiError(413, "upload_too_large", f"the upload is over the limit of {limit:,} bytes; send a smaller "
                    "image (a 320x240 or 640x480 JPEG is plenty) or fewer files per batch",
                    headers={"Connection": "close"})


def request_id_of(scope: Scope) -> str | None:
    return scope.get("state", {}).get("request_id")


def error_body(code: str, message: str, request_id: str | None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "request_id": request_id}}


# The Open Inference Protocol's paths answer errors in its own shape, {"error": "<message>"}.
PROTOCOL_PREFIX = "/v2"


def error_response(scope: Scope, status_code: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The error answer of a request, in the shape of the API its path belongs to; also for the
    middleware's refusals (upload too large, overloaded), which come before any route."""
    if status_code < 500:
        metrics.REJECTED.labels(reason=code).inc()
    if scope.get("path", "").startswith(PROTOCOL_PREFIX):
        return JSONResponse({"error": message}, status_code=status_code, headers=headers)
    return JSONResponse(error_body(code, message, request_id_of(scope)), status_code=status_code, headers=headers)


async def http_exception_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = getattr(exc, "code", None) or DEFAULT_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code in DEFAULT_MESSAGES and message in ("Not Found", "Method Not Allowed"):
        message = DEFAULT_MESSAGES[exc.status_code]
    return error_response(request.scope, exc.status_code, code, message, headers=exc.headers)


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
        return error_response(request.scope, 422, "missing_field", message)
    details = "; ".join(f"{_where(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors)
    return error_response(request.scope, 422, "validation_error", f"invalid request: {details}; see /docs")


async def decode_error_handler(request: Request, exc: ImageDecodeError) -> JSONResponse:
    return await http_exception_handler(request, from_decode_error(exc))


async def unhandled_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    request_id = request_id_of(request.scope)
    logger.exception("unhandled error", extra={"fields": {"request_id": request_id}})
    # Starlette answers this one from outside the middleware that adds X-Request-ID.
    return error_response(request.scope, 500, "internal_error",
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


# For the OpenAPI schema: the error answers each route can give.
def error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "the upload is not a usable image (empty, not an image, truncated, zero size) or a malformed form",
        413: "the upload is over the size limit, or the images declare too many pixels",
        415: "the request is not multipart/form-data, or the image is neither JPEG nor PNG",
        422: "a missing or repeated form field, an unknown or unavailable mode, an invalid parameter or too many "
             "files",
        503: "the models are not loaded, the server is shutting down, or it is overloaded (see Retry-After)",
    }
    return {code: {"model": ErrorResponse, "description": described.get(code, "error")} for code in status_codes}
