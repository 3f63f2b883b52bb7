"""The FastAPI application: ``create_app(settings)`` builds one; ``app`` is the one uvicorn imports.

Nothing heavy happens at import: the models are loaded and warmed up in the lifespan handler, once
per worker process, before the worker accepts connections.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import cv2
from fastapi import FastAPI
from starlette.formparsers import MultiPartParser

from app import __version__
from app.admission import Admission
from app.affinity import pin_worker
from app.classification import Limits
from app.concurrency import Coalescer, cpu_limiter
from app.config import Settings
from app.errors import install_error_handlers, is_protocol_path
from app.fast_path import ClassifyFastPath
from app.lifecycle import Lifecycle, drain_before_exit
from app.logs import flush_all
from app.malloc import bound_heap
from app.middleware import (
    REQUEST_ID_HEADER,
    AdmissionMiddleware,
    JsonCorsMiddleware,
    RequestContextMiddleware,
    UploadLimitMiddleware,
)
from app.registry import ModelRegistry
from app.routes import classify, docs, ops, preview, v2, web

logger = logging.getLogger("bloodcells")

DESCRIPTION = """Classifies the white blood cell of a stained blood smear image (JPEG or PNG) as an
eosinophil, lymphocyte, monocyte or neutrophil, with small CNNs run by onnxruntime.

Every error answer has the shape `{"error": {"code", "message", "request_id"}}`; the message says
what to do. Every response carries an `X-Request-ID` header (the client's, or a new one)."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    settings: Settings = app.state.settings
    # OpenCV's own thread pool would oversubscribe the cores next to the other workers, as ORT's would.
    cv2.setNumThreads(settings.threads)
    bound_heap()
    cpu = pin_worker()
    if cpu is not None:
        logger.info("worker pinned", extra={"fields": {"cpu": cpu}})
    registry = ModelRegistry.load(settings.model_dir, threads=settings.threads, default_mode=settings.default_mode)
    registry.warm_up()
    lifecycle = Lifecycle()
    drain_before_exit(lifecycle, settings.shutdown_delay)
    limiter, admission = cpu_limiter(settings.max_concurrent_images), Admission(settings.max_pending)
    yield {"registry": registry, "cpu_limiter": limiter,
           "coalescer": Coalescer(limiter, settings.coalesce_images, admission),
           "limits": Limits.from_settings(settings), "lifecycle": lifecycle, "admission": admission}
    # Every request is answered by now. uvicorn then ends the worker by re-raising SIGTERM, which skips atexit:
    # the access lines still queued for the log writer are written here.
    flush_all()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    # FastAPI's own /docs and /redoc load their scripts from a CDN: app.routes.docs serves them from the package.
    # FastAPI's own OpenTelemetry hooks: off. Left on, every request asks OpenTelemetry for its providers
    # (about 3% of a worker's time in benchmarks.profile); the service's metrics are Prometheus's (/metrics).
    app = FastAPI(title="Blood cell classifier", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None, telemetry={"tracing": False, "metrics": False, "logs": False},
                  # A path with a trailing slash too many is a JSON 404, not a 307 to a Location built from the
                  # client's Host header.
                  redirect_slashes=False)
    app.state.settings = settings
    # Starlette writes a form's file part over 1 MiB to a temporary file: in a container, a small /tmp (tmpfs,
    # counted as memory) that a few 10 MiB uploads at once filled, failing forms with a 400 and the workers'
    # metrics files with SIGBUS. Uploads are bounded and read whole anyway: they stay in memory.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, settings.max_upload_bytes + 1)
    install_error_handlers(app)
    # Added innermost first: the request context wraps everything, so even a 413 has its id and log line.
    app.add_middleware(ClassifyFastPath)
    app.add_middleware(UploadLimitMiddleware, max_bytes=settings.max_upload_bytes)
    if settings.cors_origins:
        app.add_middleware(JsonCorsMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=[REQUEST_ID_HEADER])
    app.add_middleware(AdmissionMiddleware)
    app.add_middleware(RequestContextMiddleware)
    for module in (classify, preview, ops, web, docs, v2):
        app.include_router(module.router)
    app.mount("/static", web.StaticAssets(directory=web.STATIC_DIR), name="static")
    app.openapi = _without_v2_validation_errors(app)  # type: ignore[method-assign]
    return app


def _without_v2_validation_errors(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI documents a 422 on every route with parameters; the Open Inference Protocol's routes answer
    a bad request 400 in their own shape (app/routes/v2.py), so their schema says so and no more."""
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            for path, operations in default_openapi()["paths"].items():
                if is_protocol_path(path):
                    for operation in operations.values():
                        operation.get("responses", {}).pop("422", None)
        return app.openapi_schema  # type: ignore[return-value]
    return openapi


app = create_app()
