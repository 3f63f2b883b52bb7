"""Helpers of the API tests: uploads, the error shape, metric values."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from app.labels import CLASSES
from app.model import Classifier
from app.model_metadata import ModelMetadata
from app.preprocessing import decode_image
from tests.synthetic import encode, make_smear

ERROR_KEYS = {"code", "message", "request_id"}


def upload(data: bytes, name: str = "cell.jpeg", content_type: str = "image/jpeg") -> dict[str, Any]:
    return {"file": (name, data, content_type)}


def smear_png(**kwargs: Any) -> bytes:
    return encode(make_smear(**kwargs).rgb, ".png")


def probabilities(body: dict[str, Any]) -> np.ndarray:
    return np.array([body["probabilities"][name] for name in CLASSES])


def pipeline_probabilities(model: Classifier, data: bytes) -> np.ndarray:
    """What the service's own pipeline gives for these bytes, called directly."""
    return model.predict(model.prepare(decode_image(data)).model_image[None])[0]


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """The one error shape: status, code, a message and the request id also sent as X-Request-ID."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    error = body["error"]
    assert error["code"] == code, error
    assert len(error["message"]) > 20, error
    assert error["request_id"] and error["request_id"] == response.headers["x-request-id"]
    return error


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, 0 when absent (counters start there)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(key) == value for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def all_model_metadata(model_dir: Path) -> dict[str, dict[str, Any]]:
    """The metadata of each model in ``model_dir``, by name (the .json beside each .onnx; other JSON
    files there, such as evaluation results, are not models)."""
    files = (json.loads(path.with_suffix(".json").read_text()) for path in sorted(model_dir.glob("*.onnx")))
    return {meta["name"]: meta for meta in files}


def model_metadata(model_dir: Path) -> dict[str, dict[str, Any]]:
    """The metadata of each mode's default model, by mode: the most accurate of the mode's models."""
    by_mode: dict[str, dict[str, Any]] = {}
    for meta in all_model_metadata(model_dir).values():
        kept = by_mode.get(meta["mode"])
        if kept is None or _accuracy(meta) > _accuracy(kept) or (_accuracy(meta) == _accuracy(kept)
                                                                 and meta["name"] < kept["name"]):
            by_mode[meta["mode"]] = meta
    return by_mode


def _accuracy(meta: dict[str, Any]) -> float:
    return ModelMetadata.model_validate(meta).accuracy_across_inputs or -1.0


def best_mode(model_dir: Path) -> str:
    """The service's default: the mode whose metadata records the best accuracy across inputs (the
    contract's one definition, tested in tests/test_model_metadata.py)."""
    contracts = {mode: ModelMetadata.model_validate(meta) for mode, meta in model_metadata(model_dir).items()}
    return max(contracts, key=lambda mode: contracts[mode].accuracy_across_inputs or -1.0)
