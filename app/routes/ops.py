"""Operational endpoints: liveness, readiness, the loaded models and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app import metrics
from app.deps import LifecycleDep, RegistryDep, SettingsDep
from app.error_codes import SHUTTING_DOWN
from app.errors import ApiError, error_responses
from app.schemas import Health, ModelInfo, ModelsResponse, Readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Readiness, responses=error_responses(503),
            summary="The models are loaded and a warm-up inference is done, and the server is not shutting down")
async def readyz(registry: RegistryDep, lifecycle: LifecycleDep) -> Readiness:
    if lifecycle.draining:
        raise ApiError.of(SHUTTING_DOWN, "this server is shutting down; send requests to another replica",
                          headers={"Retry-After": "1"})
    return Readiness(modes=list(registry.modes), default_mode=registry.default_mode, models=list(registry.names))


# The library versions that exported a model tell an attacker which CVEs to try; the model card has them.
PRIVATE_METADATA = ("versions",)


def public_metadata(metadata: dict, expose_versions: bool) -> dict:
    if expose_versions:
        return metadata
    return {key: value for key, value in metadata.items() if key not in PRIVATE_METADATA}


@router.get("/models", response_model=ModelsResponse, responses=error_responses(503),
            summary="The metadata of each loaded model")
async def models(registry: RegistryDep, settings: SettingsDep) -> ModelsResponse:
    infos = [ModelInfo(mode=m.mode, name=m.name, version=m.version, sha256=m.sha256,
                       default=m.name == registry.defaults[registry.default_mode],
                       mode_default=registry.is_default(m), architecture=m.contract.architecture,
                       parameters=m.contract.parameters, input_size=m.input_size,
                       test_time_augmentation=m.contract.test_time_augmentation,
                       temperature=m.contract.temperature,
                       test_accuracy=m.contract.test.accuracy if m.contract.test else None,
                       test_accuracy_ci95=m.contract.test.accuracy_ci95 if m.contract.test else None,
                       fullfield_accuracy=m.contract.fullfield.accuracy if m.contract.fullfield else None,
                       metadata=public_metadata(m.metadata, settings.expose_versions))
             for m in sorted(registry.models.values(), key=lambda m: (registry.modes.index(m.mode), m.name))]
    return ModelsResponse(default_mode=registry.default_mode, defaults=registry.defaults, models=infos)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics of every worker",
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text exposition format"}})
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
