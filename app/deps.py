"""FastAPI dependencies: settings, the loaded models, the requested model (by mode or name), and request checks.

All are ``async def`` although none awaits: FastAPI runs a plain ``def`` dependency in the threadpool,
and those hops cost more than the dependencies themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from anyio import CapacityLimiter
from fastapi import Depends, File, Query, Request, UploadFile
from pydantic import WithJsonSchema

from app import error_codes
from app.admission import Admission
from app.classification import Limits
from app.concurrency import Coalescer
from app.config import Settings
from app.errors import ApiError, from_unknown_mode
from app.lifecycle import Lifecycle
from app.model import Classifier
from app.preprocessing import MODES
from app.registry import ModelRegistry, UnknownModeError, UnknownModelError


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_registry(request: Request) -> ModelRegistry:
    # Put in the request's state by the lifespan handler once the models are loaded and warm.
    registry = getattr(request.state, "registry", None)
    if registry is None:
        raise ApiError.of(error_codes.NOT_READY, "the models are not loaded; retry in a moment (see /readyz)")
    return registry


@dataclass(frozen=True)
class Work:
    """What a request that classifies needs from its worker, in one dependency: FastAPI solves each
    dependency of a route on every request, and four of them cost more than the one."""

    registry: ModelRegistry
    limits: Limits
    limiter: CapacityLimiter  # the threadpool's slots (app.concurrency)
    coalescer: Coalescer  # the small images waiting for a busy worker (app.concurrency)
    admission: Admission | None


async def get_work(request: Request) -> Work:
    state = request.state
    return Work(registry=await get_registry(request), limits=state.limits, limiter=state.cpu_limiter,
                coalescer=state.coalescer,
                admission=getattr(state, "admission", None))


async def get_cpu_limiter(request: Request) -> CapacityLimiter:
    return request.state.cpu_limiter


async def get_limits(request: Request) -> Limits:
    return request.state.limits


async def get_lifecycle(request: Request) -> Lifecycle:
    return getattr(request.state, "lifecycle", None) or Lifecycle()


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
CpuLimiterDep = Annotated[CapacityLimiter, Depends(get_cpu_limiter)]
LimitsDep = Annotated[Limits, Depends(get_limits)]
LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]
WorkDep = Annotated[Work, Depends(get_work)]

# A plain string to the validator, so that an unavailable mode gets the error naming the loaded ones;
# the schema still lists the modes there are.
ModeQuery = Annotated[str | None, Query(
    description="input mode of the model to use: one with a loaded model (see GET /models); "
                "default: the most accurate loaded model, or BLOODCELLS_DEFAULT_MODE"),
    WithJsonSchema({"type": "string", "enum": list(MODES)})]


ModelQuery = Annotated[str | None, Query(
    alias="model",
    description="name of the model to use (see GET /models); default: the most accurate model of the mode")]


async def get_model(work: WorkDep, mode: ModeQuery = None, name: ModelQuery = None) -> Classifier:
    registry = work.registry
    if mode == "":
        raise ApiError.of(error_codes.UNKNOWN_MODE, f"the mode parameter is empty; leave it out for the default "
                          f"mode or choose one of {', '.join(registry.modes)}")
    if name == "":
        raise ApiError.of(error_codes.UNKNOWN_MODEL, f"the model parameter is empty; leave it out for the mode's "
                          f"default model or choose one of {', '.join(registry.names)}")
    try:
        return registry.get(mode, name)
    except UnknownModeError as exc:
        raise from_unknown_mode(exc) from None
    except UnknownModelError as exc:
        raise ApiError.of(error_codes.UNKNOWN_MODEL, exc.message) from None


ModelDep = Annotated[Classifier, Depends(get_model)]

ImageFile = Annotated[UploadFile, File(description="a JPEG or PNG image of a stained blood smear; the part's "
                                                   "declared content type is ignored, the bytes decide")]
ImageFiles = Annotated[list[UploadFile], File(description="several JPEG or PNG images, one field per file")]


async def require_multipart(request: Request) -> None:
    """415 unless the body is multipart/form-data. Only the request's type is checked: the type a client
    declares for the file part is ignored, because browsers and tools send odd ones; the bytes decide."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise ApiError.of(error_codes.UNSUPPORTED_MEDIA_TYPE,
                          f"the request body is {content_type or 'untyped'}, not multipart/form-data; upload the "
                          "image as a form field, e.g. curl -F file=@cell.jpg")


async def single_file(request: Request) -> None:
    """422 when the form holds the ``file`` field more than once: which one to answer is the client's
    mistake to fix, not the server's to guess. The form is the one FastAPI parsed (Starlette caches it)."""
    form = await request.form()
    if len(form.getlist("file")) > 1:
        raise ApiError.of(error_codes.DUPLICATE_FIELD, "the form holds several 'file' fields; send one image per "
                          "request to this endpoint, or several as 'files' to /classify/batch")
