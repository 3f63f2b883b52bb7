"""The Open Inference Protocol v2 REST API (KServe, Triton) under /v2: health, metadata, inference.

Each loaded model is served twice. Under its own name it is the ONNX file as it is: FP32 NHWC
pixels in [0, 1] in, class probabilities out, for clients that preprocess themselves. As
``<name>-image`` it takes encoded JPEG or PNG files as BYTES and runs the whole pipeline of
POST /classify. Every error of these routes answers in the protocol's shape, ``{"error": message}``,
because that is all a v2 client reads; the service's own shape stays on its own routes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import numpy as np
from anyio import CapacityLimiter
from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app import __version__, classification, error_codes, metrics, oip
from app.classification import Limits
from app.concurrency import run_cpu_bound
from app.config import Settings
from app.deps import CpuLimiterDep, LifecycleDep, LimitsDep, RegistryDep, SettingsDep
from app.error_codes import DECODE_ERROR_STATUS, DEFAULT_CODES
from app.errors import ApiError, request_id_of
from app.labels import CLASSES
from app.model import Classifier
from app.oip import InputTensor, OutputTensor, ProtocolError, TensorMetadata
from app.preprocessing import SCALING, ImageDecodeError
from app.registry import ModelRegistry
from app.schemas import Prediction

logger = logging.getLogger("bloodcells")

SERVER_NAME = "bloodcells"
# The protocol's platform names: an ONNX file run by ONNX Runtime; an image model is the service's own Python
# pipeline around one, which no listed platform names (KServe's custom models say "").
PLATFORM = "onnx_onnxv1"
PIPELINE_PLATFORM = ""
IMAGE_SUFFIX = "-image"
ONNX_DATATYPES = {"tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(double)": "FP64",
                  "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
                  "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
                  "tensor(uint64)": "UINT64", "tensor(bool)": "BOOL", "tensor(string)": "BYTES"}
BINARY_HINT = ("send each encoded file as binary data (the binary tensor data extension: parameters."
               "binary_data_size and the Inference-Header-Content-Length header; tritonclient: "
               "set_data_from_numpy(..., binary_data=True)): JSON strings cannot carry JPEG or PNG bytes")


# --- errors in the protocol's shape ------------------------------------------------------------

def _validation_message(exc: RequestValidationError) -> str:
    details = "; ".join(f"{'.'.join(str(part) for part in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
                        for e in exc.errors())
    return f"invalid request: {details}"


def as_protocol_error(exc: Exception) -> ProtocolError | None:
    """The protocol's view of an error raised by a v2 route or a dependency it shares with the rest
    of the service (not ready, upload too large); None for a bug."""
    if isinstance(exc, ProtocolError):
        return exc
    if isinstance(exc, ApiError):
        return ProtocolError(exc.message, exc.status_code, exc.code)
    if isinstance(exc, StarletteHTTPException):
        return ProtocolError(str(exc.detail), exc.status_code, DEFAULT_CODES.get(exc.status_code, error_codes.BAD_REQUEST.code))
    if isinstance(exc, RequestValidationError):
        # The protocol's 400, where the service answers 422.
        return ProtocolError(_validation_message(exc), 400, error_codes.VALIDATION_ERROR.code)
    if isinstance(exc, ImageDecodeError):
        return ProtocolError(exc.message, DECODE_ERROR_STATUS.get(exc.reason, 400), exc.reason)
    return None


def error_response(request: Request, exc: Exception) -> JSONResponse:
    error = as_protocol_error(exc)
    if error is None:
        request_id = request_id_of(request.scope)
        logger.exception("unhandled error", extra={"fields": {"request_id": request_id}})
        error = ProtocolError(f"internal error; report it with the request id {request_id}",
                              error_codes.INTERNAL_ERROR.status, error_codes.INTERNAL_ERROR.code)
    elif error.status < 500:
        metrics.REJECTED.labels(reason=error.reason).inc()
    # An upload refused while it streams says Connection: close, so that the client stops sending.
    headers = getattr(exc, "headers", None)
    return JSONResponse({"error": error.message}, status_code=error.status, headers=headers)


class ProtocolRoute(APIRoute):
    """Catches every error of the route and of its dependencies, FastAPI's request validation
    included, before the service's global handlers would give them the service's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer_in_protocol_shape(request: Request) -> Response:
            try:
                return await handler(request)
            except ClientDisconnect:
                raise  # no one is left to read an answer; the service's handler knows this case
            except Exception as exc:  # every error, so that none leaves in the service's shape
                return error_response(request, exc)

        return answer_in_protocol_shape


def documented_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {400: "a malformed request, or one the model cannot take (the message says why)",
                 404: "no such model, model version or endpoint", 413: "the body is over the upload limit",
                 503: "the models are not loaded yet"}
    return {status: {"model": oip.ProtocolErrorResponse, "description": described[status]} for status in statuses}


router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"], route_class=ProtocolRoute)


# --- the served models -------------------------------------------------------------------------

class ServedModel(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def metadata(self) -> oip.ModelMetadata: ...

    def max_json_values(self, settings: Settings) -> int:
        """The most JSON values (elements and their nested lists), all inputs together, of a request this model
        takes: the largest batch (``oip.nested_values``)."""
        ...

    def infer(self, inputs: Sequence[InputTensor], settings: Settings, limits: Limits) -> list[OutputTensor]: ...


def _dims(shape: Sequence[Any]) -> list[int]:
    # onnxruntime names a free dimension ('unk__90', 'N') or gives None; the protocol says -1.
    return [dim if isinstance(dim, int) and dim >= 0 else -1 for dim in shape]


def _by_name(model: str, inputs: Sequence[InputTensor], expected: Sequence[TensorMetadata]) -> dict[str, InputTensor]:
    given = {tensor.name: tensor for tensor in inputs}
    names = [spec.name for spec in expected]
    if set(given) != set(names):
        shown = list(given)[:len(names) + 3]
        more = f" and {len(given) - len(shown)} more" if len(given) > len(shown) else ""
        raise ProtocolError(f"model {model!r} takes the input(s) {names}; the request gives {shown}{more}")
    return given


def _check_tensor(model: str, tensor: InputTensor, spec: TensorMetadata, max_batch: int) -> None:
    if tensor.datatype != spec.datatype:
        raise ProtocolError(f"input {tensor.name!r} of model {model!r} is {spec.datatype}, the request gives "
                            f"{tensor.datatype}")
    shape = list(tensor.shape)
    if len(shape) != len(spec.shape) or any(want not in (-1, got) for got, want in zip(shape, spec.shape)):
        raise ProtocolError(f"input {tensor.name!r} of model {model!r} has shape {spec.shape} (-1: any size), the "
                            f"request gives {shape}")
    # The same bound as /classify/batch: the images of one request are held in memory together.
    if not 1 <= shape[0] <= max_batch:
        raise ProtocolError(f"input {tensor.name!r} holds a batch of {shape[0]}; send 1 to {max_batch} per request "
                            "(BLOODCELLS_MAX_BATCH_FILES)")


@dataclass(frozen=True)
class TensorModel:
    """The ONNX model as exported: names, datatypes and shapes as the file declares them."""

    model: Classifier

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> str:
        return self.model.version

    def metadata(self) -> oip.ModelMetadata:
        def described(args: Sequence[Any]) -> list[TensorMetadata]:
            return [TensorMetadata(name=arg.name, datatype=ONNX_DATATYPES.get(arg.type, arg.type),
                                   shape=_dims(arg.shape)) for arg in args]

        session = self.model.session
        return oip.ModelMetadata(name=self.name, versions=[self.version], platform=PLATFORM,
                                 inputs=described(session.get_inputs()), outputs=described(session.get_outputs()))

    def max_json_values(self, settings: Settings) -> int:
        # A batch of at most max_batch_files (as _check_tensor allows); other free dimensions count as one.
        return sum(oip.nested_values([settings.max_batch_files, *(max(dim, 1) for dim in spec.shape[1:])])
                   for spec in self.metadata().inputs)

    def infer(self, inputs: Sequence[InputTensor], settings: Settings, limits: Limits) -> list[OutputTensor]:
        metadata = self.metadata()
        given = _by_name(self.name, inputs, metadata.inputs)
        for spec in metadata.inputs:
            _check_tensor(self.name, given[spec.name], spec, settings.max_batch_files)
        feed = {spec.name: given[spec.name].as_array() for spec in metadata.inputs}
        start = time.perf_counter()
        results = run_session(self.model, feed, [spec.name for spec in metadata.outputs])
        metrics.labelled(metrics.INFERENCE, self.model.mode).observe(time.perf_counter() - start)
        if not all(np.isfinite(array).all() for array in results if array.dtype.kind == "f"):
            # Finite inputs far outside the model's range (3e38) overflow it: no number to answer with.
            raise ProtocolError(f"model {self.name!r} gave NaN for these inputs: they are far outside what it was "
                                f"trained on; send its input as the model's metadata describes ({SCALING})")
        return [OutputTensor.of_array(spec.name, spec.datatype, array)
                for spec, array in zip(metadata.outputs, results)]


def run_session(model: Classifier, feed: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    """onnxruntime on the request's tensors, INFER_CHUNK images per call like the image pipeline:
    it bounds the activations' memory, and changes no result."""
    batch = len(next(iter(feed.values())))
    step = classification.INFER_CHUNK
    chunks = [model.session.run(outputs, {name: array[i:i + step] for name, array in feed.items()})
              for i in range(0, batch, step)]
    return [np.concatenate([chunk[k] for chunk in chunks]) for k in range(len(outputs))]


IMAGE_INPUT = TensorMetadata(name="image", datatype=oip.BYTES, shape=[-1])
IMAGE_COLUMN = IMAGE_INPUT.model_copy(update={"shape": [-1, 1]})  # also taken: one file per row
IMAGE_OUTPUTS = [TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, len(CLASSES)]),
                 TensorMetadata(name="labels", datatype=oip.BYTES, shape=[-1]),
                 TensorMetadata(name="looks_like_smear", datatype="BOOL", shape=[-1]),
                 TensorMetadata(name="smear_score", datatype="FP32", shape=[-1])]


def classify_images(model: Classifier, payloads: Sequence[bytes],
                    limits: Limits) -> list[Prediction | ImageDecodeError]:
    """The one call into the pipeline of POST /classify; without the per-cell answers, which no output carries."""
    return classification.classify_many(model, payloads, limits)


def _decode_failure(tensor: InputTensor, failures: list[tuple[int, ImageDecodeError]]) -> ProtocolError:
    described = "; ".join(f"element {index} of input {tensor.name!r} is not a usable image ({exc.reason}): "
                          f"{exc.message}" for index, exc in failures)
    if not tensor.is_binary:
        described += f"; the images came as JSON strings: {BINARY_HINT}"
    return ProtocolError(described, 400, failures[0][1].reason)


@dataclass(frozen=True)
class ImageModel:
    """Encoded JPEG or PNG files in, the answer of POST /classify out: one element per image."""

    model: Classifier

    @property
    def name(self) -> str:
        return self.model.name + IMAGE_SUFFIX

    @property
    def version(self) -> str:
        return self.model.version

    def metadata(self) -> oip.ModelMetadata:
        return oip.ModelMetadata(name=self.name, versions=[self.version], platform=PIPELINE_PLATFORM,
                                 inputs=[IMAGE_INPUT], outputs=IMAGE_OUTPUTS)

    def max_json_values(self, settings: Settings) -> int:
        return oip.nested_values([settings.max_batch_files, 1])  # one encoded file per element, as [N] or [N, 1]

    def infer(self, inputs: Sequence[InputTensor], settings: Settings, limits: Limits) -> list[OutputTensor]:
        tensor = _by_name(self.name, inputs, [IMAGE_INPUT])[IMAGE_INPUT.name]
        _check_tensor(self.name, tensor, IMAGE_COLUMN if len(tensor.shape) == 2 else IMAGE_INPUT,
                      settings.max_batch_files)
        outcomes = classify_images(self.model, tensor.as_bytes(), limits)
        failures = [(index, outcome) for index, outcome in enumerate(outcomes)
                    if isinstance(outcome, ImageDecodeError)]
        if failures:
            raise _decode_failure(tensor, failures)
        predictions: list[Prediction] = outcomes  # type: ignore[assignment]  # no failures left
        probabilities = np.array([[getattr(p.probabilities, name) for name in CLASSES] for p in predictions],
                                 np.float32)
        labels = [p.label.encode() for p in predictions]
        return [OutputTensor.of_array("probabilities", "FP32", probabilities),
                OutputTensor("labels", oip.BYTES, labels, (len(labels),)),
                OutputTensor.of_array("looks_like_smear", "BOOL", np.array([p.looks_like_smear for p in predictions])),
                OutputTensor.of_array("smear_score", "FP32", np.array([p.smear_score for p in predictions], np.float32))]


def find_model(registry: ModelRegistry, name: str) -> ServedModel:
    for model in registry.models.values():
        if name == model.name:
            return TensorModel(model)
        if name == model.name + IMAGE_SUFFIX:
            return ImageModel(model)
    names = [served for m in registry.models.values() for served in (m.name, m.name + IMAGE_SUFFIX)]
    raise ProtocolError(f"unknown model {name!r}; this server serves {', '.join(names)}",
                        error_codes.NOT_FOUND.status, error_codes.NOT_FOUND.code)


async def get_served_model(model_name: str, registry: RegistryDep) -> ServedModel:
    return find_model(registry, model_name)


ServedModelDep = Annotated[ServedModel, Depends(get_served_model)]


async def get_served_version(model: ServedModelDep, model_version: str) -> ServedModel:
    if model_version != model.version:
        raise ProtocolError(f"model {model.name!r} has no version {model_version!r}; the loaded one is "
                            f"{model.version!r}", error_codes.NOT_FOUND.status, error_codes.NOT_FOUND.code)
    return model


ServedVersionDep = Annotated[ServedModel, Depends(get_served_version)]


# --- inference ---------------------------------------------------------------------------------

def run_inference(model: ServedModel, body: bytes, encoding: str, header_length: str | None, settings: Settings,
                  limits: Limits) -> tuple[bytes, int | None]:
    """Body in, body out; CPU-bound throughout (inflating, JSON, decoding, inference), so it runs in the
    threadpool."""
    body = oip.decompress(body, encoding, settings.max_upload_bytes)
    request, inputs = oip.parse_request(body, header_length, model.max_json_values(settings))
    wanted = oip.requested_outputs(request, [spec.name for spec in model.metadata().outputs])
    produced = {tensor.name: tensor for tensor in model.infer(inputs, settings, limits)}
    return oip.encode_response(model.name, model.version, request.id, [produced[name] for name in wanted], wanted)


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    # pydantic's "#/$defs/..." references would resolve against the whole OpenAPI document.
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        return [resolve(item) for item in node] if isinstance(node, list) else node

    return resolve(schema)


BINARY_SCHEMA = {"schema": {"type": "string", "format": "binary"}}
INFER_OPENAPI = {"requestBody": {"required": True, "content": {
    oip.JSON_CONTENT_TYPE: {"schema": _inline_refs(oip.InferenceRequest.model_json_schema())},
    oip.BINARY_CONTENT_TYPE: BINARY_SCHEMA}}}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": oip.InferenceResponse, "content": {oip.BINARY_CONTENT_TYPE: BINARY_SCHEMA},
          "description": f"JSON; or, when an output is asked for with binary_data, the JSON header (its length in "
                         f"{oip.HEADER_LENGTH}) followed by the binary outputs"},
    **documented_errors(400, 404, 413, 503)}
HeaderLength = Annotated[str | None, Header(
    alias=oip.HEADER_LENGTH, description="binary tensor data extension: the byte length of the JSON header that "
                                         "starts the body; the inputs' binary data follows it")]


async def answer_inference(request: Request, model: ServedModel, settings: Settings, limits: Limits,
                           limiter: CapacityLimiter, header_length: str | None) -> Response:
    encoding = oip.content_encoding(request.headers.get("content-encoding"))
    body = await request.body()
    content, json_length = await run_cpu_bound(limiter, run_inference, model, body, encoding, header_length,
                                               settings, limits)
    if json_length is None:
        return Response(content, media_type=oip.JSON_CONTENT_TYPE)
    return Response(content, media_type=oip.BINARY_CONTENT_TYPE, headers={oip.HEADER_LENGTH: str(json_length)})


@router.post("/models/{model_name}/infer", response_class=Response, responses=INFER_RESPONSES,
             openapi_extra=INFER_OPENAPI, summary="Inference (JSON, or the binary tensor data extension)")
async def infer(request: Request, model: ServedModelDep, settings: SettingsDep, limits: LimitsDep,
                limiter: CpuLimiterDep, header_length: HeaderLength = None) -> Response:
    return await answer_inference(request, model, settings, limits, limiter, header_length)


@router.post("/models/{model_name}/versions/{model_version}/infer", response_class=Response,
             responses=INFER_RESPONSES, openapi_extra=INFER_OPENAPI, summary="Inference on the given model version")
async def infer_version(request: Request, model: ServedVersionDep, settings: SettingsDep,
                        limits: LimitsDep, limiter: CpuLimiterDep, header_length: HeaderLength = None) -> Response:
    return await answer_inference(request, model, settings, limits, limiter, header_length)


# --- health and metadata -----------------------------------------------------------------------

@router.get("/health/live", response_model=oip.ServerLive, summary="The server is alive")
async def server_live() -> oip.ServerLive:
    return oip.ServerLive(live=True)


@router.get("/health/ready", response_model=oip.ServerReady, responses=documented_errors(503),
            summary="Every model is loaded and warmed up")
async def server_ready(registry: RegistryDep, lifecycle: LifecycleDep) -> oip.ServerReady:
    if lifecycle.draining:
        raise ProtocolError("this server is shutting down; send requests to another replica",
                            error_codes.SHUTTING_DOWN.status, error_codes.SHUTTING_DOWN.code)
    return oip.ServerReady(ready=True)


@router.get("", response_model=oip.ServerMetadata, summary="Server metadata")
@router.get("/", response_model=oip.ServerMetadata, include_in_schema=False)  # the protocol's OpenAPI file says /v2/
async def server_metadata() -> oip.ServerMetadata:
    return oip.ServerMetadata(name=SERVER_NAME, version=__version__, extensions=list(oip.EXTENSIONS))


MODEL_ERRORS = documented_errors(404, 503)


@router.get("/models/{model_name}", response_model=oip.ModelMetadata, responses=MODEL_ERRORS,
            summary="Model metadata: inputs and outputs")
async def model_metadata(model: ServedModelDep) -> oip.ModelMetadata:
    return model.metadata()


@router.get("/models/{model_name}/versions/{model_version}", response_model=oip.ModelMetadata,
            responses=MODEL_ERRORS, summary="Metadata of the given model version")
async def model_version_metadata(model: ServedVersionDep) -> oip.ModelMetadata:
    return model.metadata()


@router.get("/models/{model_name}/ready", response_model=oip.ModelReady, responses=MODEL_ERRORS,
            summary="The model is loaded and warmed up")
async def model_ready(model: ServedModelDep) -> oip.ModelReady:
    return oip.ModelReady(name=model.name, ready=True)


@router.get("/models/{model_name}/versions/{model_version}/ready", response_model=oip.ModelReady,
            responses=MODEL_ERRORS, summary="The given model version is loaded and warmed up")
async def model_version_ready(model: ServedVersionDep) -> oip.ModelReady:
    return oip.ModelReady(name=model.name, ready=True)


# Last: a path no route above matches gets the protocol's 404, or 405 where only the method is wrong.
@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"], include_in_schema=False)
async def unknown_endpoint(request: Request, path: str) -> Response:
    allowed = sorted({method for route in router.routes if isinstance(route, APIRoute)
                      and route.endpoint is not unknown_endpoint and route.path_regex.match(request.scope["path"])
                      for method in route.methods or ()})
    if "GET" in allowed:
        allowed.append("HEAD")  # every GET route answers HEAD (app.middleware)
    if not allowed:
        raise ProtocolError(f"no v2 endpoint at {request.scope['path']}; see the Open Inference Protocol "
                            "(GET /v2, /v2/models/<name>, POST /v2/models/<name>/infer)",
                            error_codes.NOT_FOUND.status, error_codes.NOT_FOUND.code)
    raise ApiError.of(error_codes.METHOD_NOT_ALLOWED, f"{request.method} is not allowed here; use "
                      f"{', '.join(allowed)}", headers={"Allow": ", ".join(allowed)})
