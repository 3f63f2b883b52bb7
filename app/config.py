"""Every setting of the service, read from the environment (prefix ``BLOODCELLS_``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.preprocessing import MODES

ENV_PREFIX = "BLOODCELLS_"
MEGABYTE = 1024 * 1024


def _cpu_count() -> int:
    # The CPUs this process may run on, not the machine's: a container or taskset may allow fewer.
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Settings(BaseSettings):
    """One place for the service's configuration; ``BLOODCELLS_<NAME>`` sets ``<name>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    model_dir: Path = Field(Path("models"), description="folder holding <mode>.onnx + <mode>.json")
    default_mode: str | None = Field(
        None, description="mode used when a request names none; default: the loaded model with the best "
                          "test accuracy in its metadata")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(default_factory=_cpu_count, ge=1, description="uvicorn worker processes")
    # One intra-op thread per worker: with one worker per core, more threads only oversubscribe the CPUs.
    threads: int = Field(1, ge=1, description="onnxruntime intra-op threads per worker")
    max_upload_bytes: int = Field(10 * MEGABYTE, ge=1, description="largest request body, counted while it streams")
    max_image_pixels: int = Field(25_000_000, ge=1, description="largest decoded image (width x height); "
                                  "checked from the header before decoding")
    max_batch_files: int = Field(64, ge=1, description="most files in one /classify/batch request")
    max_concurrent_images: int = Field(4, ge=1, description="images decoded and classified at once per worker, "
                                       "in its threadpool; bounds memory and thread contention")
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
