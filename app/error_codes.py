"""The catalogue of error codes: every ``code`` an error answer can carry, with its HTTP status, a
one-line description (the OpenAPI ``responses`` are built from it, and tests/test_error_codes.py checks
the README's table against it) and the layer that answers it.

This module is the only place the code strings live: call sites raise ``ApiError.of(TOO_MANY_FILES, ...)``
and the handlers map a status to its default code from here. The one exception is
``app.preprocessing.DecodeErrorReason``, a Literal because preprocessing is shared with training and
imports nothing of the service; a test checks it equals :data:`DECODE_CODES`.

Under ``/v2`` the Open Inference Protocol answers ``{"error": message}``, with no code; its request
validation errors are 400 there (422 elsewhere).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum


class Origin(str, Enum):
    """Which layer answers the error."""

    DECODE = "decode"  # app.preprocessing.ImageDecodeError: the bytes are not a usable image
    PROTOCOL = "protocol"  # app.http_guard: `bloodcells serve`'s HTTP protocol, before the application
    MIDDLEWARE = "middleware"  # app.middleware: upload size and load shedding, before any route
    FRAMEWORK = "framework"  # Starlette/FastAPI: routing, request validation, unhandled exceptions
    APP = "app"  # the routes and their dependencies (app.deps, app.routes)
    NGINX = "nginx"  # deploy/nginx.conf, in the compose and Swarm stacks only


@dataclass(frozen=True)
class ErrorCode:
    code: str
    status: int
    description: str
    origins: tuple[Origin, ...]
    # The code of an HTTPException raised with this status and no code of its own (Starlette's 404 and
    # 405, a malformed multipart body, ...): one per status.
    default: bool = False

    def __str__(self) -> str:
        return self.code


D, P, M, F, A, N = Origin.DECODE, Origin.PROTOCOL, Origin.MIDDLEWARE, Origin.FRAMEWORK, Origin.APP, Origin.NGINX

EMPTY = ErrorCode("empty", 400, "the upload is empty", (D,))
NOT_AN_IMAGE = ErrorCode("not_an_image", 400, "the upload is not an image (text or PDF renamed .jpg)", (D,))
CORRUPT = ErrorCode("corrupt", 400, "a truncated image, or a damaged PNG/JPEG header", (D,))
ZERO_SIZE = ErrorCode("zero_size", 400, "the image has no pixels", (D,))
TOO_MANY_SCANS = ErrorCode("too_many_scans", 400, "a JPEG with more scans than any encoder writes (each costs a "
                           "pass over the whole image)", (D,))
TOO_MUCH_METADATA = ErrorCode("too_much_metadata", 400, "an image with more metadata segments or chunks than cameras "
                              "and editors write (each is parsed and kept)", (D,))
BAD_REQUEST = ErrorCode("bad_request", 400, "a malformed form, or an HTTP request the server cannot parse",
                        (F, P, N), default=True)
NOT_FOUND = ErrorCode("not_found", 404, "no such endpoint, documentation file, model or model version", (F, A),
                      default=True)
METHOD_NOT_ALLOWED = ErrorCode("method_not_allowed", 405, "the endpoint does not accept that method", (F, A),
                               default=True)
REQUEST_TIMEOUT = ErrorCode("request_timeout", 408, "headers or body not received in time; the connection is closed",
                            (P,), default=True)
UPLOAD_TOO_LARGE = ErrorCode("upload_too_large", 413, "the body is over the upload limit (refused while it streams)",
                             (M, N), default=True)
TOO_MANY_PIXELS = ErrorCode("too_many_pixels", 413, "an image declares too many pixels (refused before decoding)",
                            (D,))
REQUEST_TOO_MANY_PIXELS = ErrorCode("request_too_many_pixels", 413, "the images of one request have too many pixels",
                                    (D,))
URI_TOO_LONG = ErrorCode("uri_too_long", 414, "the request line is too long", (P, N), default=True)
UNSUPPORTED_MEDIA_TYPE = ErrorCode("unsupported_media_type", 415, "the request is not multipart/form-data", (A,),
                                   default=True)
UNSUPPORTED_FORMAT = ErrorCode("unsupported_format", 415, "the image is neither JPEG nor PNG", (D,))
MISSING_FIELD = ErrorCode("missing_field", 422, "the form has no file field", (F,))
DUPLICATE_FIELD = ErrorCode("duplicate_field", 422, "the form has two file fields", (A,))
VALIDATION_ERROR = ErrorCode("validation_error", 422, "an invalid parameter", (F,), default=True)
UNKNOWN_MODE = ErrorCode("unknown_mode", 422, "an unknown, unloaded or empty mode", (A,))
UNKNOWN_MODEL = ErrorCode("unknown_model", 422, "an unknown or empty model name, or a model of another mode than the "
                          "one asked for", (A,))
TOO_MANY_FILES = ErrorCode("too_many_files", 422, "the batch holds too many files", (A,))
TOO_MANY_REQUESTS = ErrorCode("too_many_requests", 429, "nginx's per-client limits (compose and Swarm stacks); more "
                              "pipelined requests waiting than the server keeps (the connection is closed)", (P, N))
HEADERS_TOO_LARGE = ErrorCode("headers_too_large", 431, "the headers are too large or too many", (P, N),
                              default=True)
INTERNAL_ERROR = ErrorCode("internal_error", 500, "a bug; report it with the request id", (F,), default=True)
NOT_READY = ErrorCode("not_ready", 503, "the models are not loaded", (A, N), default=True)
SHUTTING_DOWN = ErrorCode("shutting_down", 503, "the server is draining before exit", (A,))
OVERLOADED = ErrorCode("overloaded", 503, "load shedding, or the proxy's /tmp full of uploads; retry after "
                       "Retry-After", (M, P, N))

del D, P, M, F, A, N

CATALOGUE: tuple[ErrorCode, ...] = tuple(value for value in dict(globals()).values() if isinstance(value, ErrorCode))
BY_CODE: dict[str, ErrorCode] = {error.code: error for error in CATALOGUE}
DEFAULT_CODES: dict[int, str] = {error.status: error.code for error in CATALOGUE if error.default}
DECODE_CODES: frozenset[str] = frozenset(error.code for error in CATALOGUE if Origin.DECODE in error.origins)
DECODE_ERROR_STATUS: dict[str, int] = {error.code: error.status for error in CATALOGUE
                                       if Origin.DECODE in error.origins}


# What every route that takes a multipart image upload can answer, besides its own codes: the form
# (malformed, not multipart, no file field, a bad parameter), the mode, the models, the middleware.
UPLOAD_ERRORS: tuple[ErrorCode, ...] = (BAD_REQUEST, UPLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, MISSING_FIELD,
                                        VALIDATION_ERROR, UNKNOWN_MODE, UNKNOWN_MODEL, NOT_READY,
                                        OVERLOADED)
# The decode errors of one image, for the routes that answer them (a batch gives each file its own entry).
IMAGE_ERRORS: tuple[ErrorCode, ...] = tuple(error for error in CATALOGUE if Origin.DECODE in error.origins)


def of_status(status: int) -> tuple[ErrorCode, ...]:
    return tuple(error for error in CATALOGUE if error.status == status)


def describe(errors: Iterable[ErrorCode]) -> str:
    """The OpenAPI description of one status: its codes, each with what it means."""
    return "; ".join(f"`{error.code}`: {error.description}" for error in errors)
