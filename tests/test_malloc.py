"""``app.malloc``: the glibc settings apply, and those set in the environment are left alone."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

PROBE = "import json; from app.malloc import bound_heap; print(json.dumps(bound_heap()))"


def applied(environment: dict[str, str]) -> dict[str, int]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    completed = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env={**env, **environment},
                               capture_output=True, text=True, check=True)
    return json.loads(completed.stdout)


def test_every_setting_applies_in_a_plain_process() -> None:
    assert applied({}) == {"MALLOC_ARENA_MAX": 2, "MALLOC_MMAP_THRESHOLD_": 4194304, "MALLOC_TRIM_THRESHOLD_": 2097152}


def test_a_setting_from_the_environment_wins() -> None:
    assert "MALLOC_ARENA_MAX" not in applied({"MALLOC_ARENA_MAX": "4"})
