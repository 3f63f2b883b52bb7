"""Every setting of the service, read from the environment (prefix ``BLOODCELLS_``)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.affinity import CpuAffinity, cpu_quota
from app.preprocessing import MODES

ENV_PREFIX = "BLOODCELLS_"
MAX_WORKERS = 256  # and the default on a host with more CPUs
MEGABYTE = 1024 * 1024


def _cpu_count() -> int:
    # The CPUs this process may run on, not the machine's: a container or taskset may allow fewer, and a CPU
    # quota (docker run --cpus, a Kubernetes CPU limit) fewer CPUs' worth of time: a worker per host CPU
    # under --cpus 2 on a 64-CPU host would be 64 workers' memory, throttled to two.
    try:
        count = len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    quota = cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return min(count, MAX_WORKERS)


class Settings(BaseSettings):
    """One place for the service's configuration; ``BLOODCELLS_<NAME>`` sets ``<name>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    model_dir: Path = Field(Path("models"), description="folder holding <mode>.onnx + <mode>.json")
    default_mode: str | None = Field(
        None, description="mode used when a request names none; default: the loaded model with the best "
                          "test accuracy in its metadata")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(default_factory=_cpu_count, ge=1, le=MAX_WORKERS, description="uvicorn worker processes")
    # One intra-op thread per worker: with one worker per core, more threads only oversubscribe the CPUs.
    threads: int = Field(1, ge=1, le=256, description="onnxruntime intra-op threads per worker")
    cpu_affinity: CpuAffinity = Field("auto", description="auto: each worker on a CPU of its own when the workers "
                                      "are exactly as many as the CPUs the server may use; off: never pinned")
    max_upload_bytes: int = Field(10 * MEGABYTE, ge=1, description="largest request body, counted while it streams")
    max_image_pixels: int = Field(25_000_000, ge=1, description="largest decoded image (width x height); "
                                  "checked from the header before decoding")
    max_batch_files: int = Field(64, ge=1, description="most files in one /classify/batch request")
    max_concurrent_images: int = Field(4, ge=1, description="images decoded and classified at once per worker, "
                                       "in its threadpool; bounds memory and thread contention")
    coalesce_images: int = Field(16, ge=1, description="most small images of single-image requests that a busy "
                                 "worker runs back to back in one threadpool hop (app.concurrency); 1: one image "
                                 "per hop, still one runner per CPU")
    # Per request, not only per image: a batch of images that are each under max_image_pixels.
    max_request_pixels: int = Field(100_000_000, ge=1, description="most pixels (width x height, from the "
                                    "headers) that one request's images may declare in all")
    max_working_pixels: int = Field(4_000_000, ge=1, description="a larger image is analysed reduced by 2, 4 or 8 "
                                    "(JPEG: decoded reduced by libjpeg) to at most this many pixels")
    max_cells: int = Field(16, ge=0, description="most white cells classified and reported per image, largest "
                           "first; the rest are counted in cells_omitted")
    max_pending: int = Field(32, ge=1, description="requests admitted at once per worker to the endpoints that "
                             "classify; beyond, 503 with Retry-After at once (load shedding)")
    max_connections: int = Field(1000, ge=1, description="open connections per worker; at the cap the oldest idle "
                                 "one is closed for a new one, or the new one when none is idle")
    max_header_bytes: int = Field(32 * 1024, ge=1024, description="request line and headers of one request, "
                                  "bytes (431 beyond)")
    max_request_line: int = Field(8 * 1024, ge=256, description="URL of one request, bytes (414 beyond)")
    max_headers: int = Field(100, ge=16, description="header lines of one request (431 beyond)")
    max_pipelined: int = Field(32, ge=1, le=10_000, description="requests of one connection waiting, parsed, behind "
                               "the one being answered (HTTP pipelining); beyond, the connection is closed")
    max_unsent_bytes: int = Field(128 * MEGABYTE, ge=MEGABYTE, description="answers written but not yet taken by "
                                  "clients whose sockets are full, all connections of a worker together; beyond, "
                                  "those of clients that have read nothing for a second or more are closed")
    header_timeout: float = Field(10.0, gt=0, allow_inf_nan=False,
                                  description="seconds a connection has to send a request's whole header section "
                                  "(from its first byte, or from connecting); then 408 and closed")
    body_timeout: float = Field(30.0, gt=0, allow_inf_nan=False,
                                description="seconds a request has to send its whole body after its headers; then "
                                "408 and closed")
    keepalive_timeout: float = Field(5.0, gt=0, allow_inf_nan=False,
                                     description="seconds an idle keep-alive connection stays open")
    shutdown_delay: float = Field(0.0, ge=0, allow_inf_nan=False,
                                  description="on SIGTERM, seconds during which /readyz answers 503 while requests "
                                  "are still served, so that a load balancer stops routing here")
    shutdown_grace: float = Field(10.0, ge=0, allow_inf_nan=False,
                                  description="then, seconds the requests in flight get to finish before the process "
                                  "exits, whatever the clients do")
    expose_versions: bool = Field(False, description="whether GET /models shows the library versions that "
                                  "exported each model (they are in the model card either way)")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS, comma-separated; empty: same origin only")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lowercase_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("default_mode")
    @classmethod
    def _known_mode(cls, value: str | None) -> str | None:
        if value in ("", None):
            return None
        if value not in MODES:
            raise ValueError(f"unknown mode {value!r}; choose one of {', '.join(MODES)} or leave it unset")
        return value
