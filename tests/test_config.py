"""Settings come from BLOODCELLS_* environment variables, with documented defaults and clear errors."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from app.config import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BLOODCELLS_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = Settings()
    assert str(settings.model_dir) == "models"
    assert settings.max_upload_bytes == 10 * 1024 * 1024
    assert settings.max_batch_files == 64
    assert settings.threads == 1
    assert settings.workers == len(os.sched_getaffinity(0))
    assert settings.default_mode is None and settings.cors_origins == []
    assert (settings.host, settings.port, settings.log_level) == ("127.0.0.1", 8000, "info")


def test_environment_with_the_prefix_sets_each_field(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {"MODEL_DIR": "/srv/models", "MAX_UPLOAD_BYTES": "1234", "MAX_IMAGE_PIXELS": "999", "THREADS": "2",
              "MAX_BATCH_FILES": "8", "WORKERS": "3", "LOG_LEVEL": "WARNING", "DEFAULT_MODE": "original",
              "CORS_ORIGINS": "http://a.example, http://b.example", "MAX_CONCURRENT_IMAGES": "2"}
    for name, value in values.items():
        monkeypatch.setenv(f"BLOODCELLS_{name}", value)
    monkeypatch.setenv("MAX_UPLOAD_BYTES", "1")  # without the prefix: ignored
    settings = Settings()
    assert str(settings.model_dir) == "/srv/models" and settings.max_upload_bytes == 1234
    assert settings.max_image_pixels == 999 and settings.threads == 2 and settings.max_batch_files == 8
    assert settings.workers == 3 and settings.log_level == "warning" and settings.default_mode == "original"
    assert settings.cors_origins == ["http://a.example", "http://b.example"]
    assert settings.max_concurrent_images == 2


@pytest.mark.parametrize("name, value, words", [
    ("DEFAULT_MODE", "sepia", "original, color, crop"),
    ("THREADS", "0", "greater than or equal to 1"),
    ("MAX_UPLOAD_BYTES", "ten", "integer"),
    ("LOG_LEVEL", "chatty", "info"),
])
def test_bad_values_fail_with_a_message(monkeypatch: pytest.MonkeyPatch, name: str, value: str, words: str) -> None:
    monkeypatch.setenv(f"BLOODCELLS_{name}", value)
    with pytest.raises(ValidationError, match=words):
        Settings()


def test_empty_default_mode_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOODCELLS_DEFAULT_MODE", "")
    assert Settings().default_mode is None


def test_a_host_with_more_cpus_than_workers_may_be_still_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    # The default (one worker per CPU) was validated against the bound: 320 CPUs failed with no setting given.
    monkeypatch.delenv("BLOODCELLS_WORKERS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(320)))
    assert Settings().workers == 256


@pytest.mark.parametrize(("name", "value"), [("SHUTDOWN_DELAY", "inf"), ("HEADER_TIMEOUT", "nan"),
                                             ("THREADS", "99999999999"), ("WORKERS", "0")])
def test_settings_that_would_break_the_server_are_refused(monkeypatch: pytest.MonkeyPatch, name: str,
                                                          value: str) -> None:
    monkeypatch.setenv(f"BLOODCELLS_{name}", value)
    with pytest.raises(ValidationError):
        Settings()
