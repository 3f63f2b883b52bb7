"""The metadata contract (app/model_metadata.py): every committed file fits it and survives a load and a dump,
the loader refuses a file that breaks it, and one property gives the accuracy across inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.model import Classifier, ModelLoadError
from app.model_metadata import ModelMetadata
from app.registry import reported_accuracy
from tests.conftest import REPO

MODELS = REPO / "models"
COMMITTED = sorted(p.stem for p in MODELS.glob("*.onnx"))


def committed(name: str) -> dict:
    return json.loads((MODELS / f"{name}.json").read_text())


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_metadata_round_trips(name: str) -> None:
    text = (MODELS / f"{name}.json").read_text()
    metadata = ModelMetadata.from_json(text)
    assert metadata.to_dict() == json.loads(text)
    assert metadata.to_json() == text  # same keys in the same order, as the export writes them


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_metadata_typed_fields(name: str) -> None:
    raw = committed(name)
    metadata = ModelMetadata.model_validate(raw)
    assert (metadata.name, metadata.version, metadata.mode) == (raw["name"], raw["version"], raw["mode"])
    assert metadata.input.size == tuple(raw["input"]["shape"][1:3]) and metadata.input.channels == 3
    assert metadata.params.to_dict() == raw["preprocessing"]
    assert metadata.test is not None and metadata.fullfield is not None
    assert metadata.test.accuracy == raw["test"]["accuracy"]
    assert metadata.fullfield.accuracy == raw["fullfield"]["accuracy"]


@pytest.mark.parametrize("name", COMMITTED)
def test_classifier_keeps_the_file_as_a_plain_dict(name: str) -> None:
    model = Classifier.load(MODELS / f"{name}.onnx")
    assert model.metadata == committed(name) and isinstance(model.metadata, dict)
    assert model.contract.onnx_sha256 == model.sha256
    assert reported_accuracy(model) == model.contract.accuracy_across_inputs


def test_accuracy_across_inputs_is_the_mean_of_what_was_measured() -> None:
    raw = committed(COMMITTED[0])
    raw["test"]["accuracy"], raw["fullfield"]["accuracy"] = 0.9, 0.5
    assert ModelMetadata.model_validate(raw).accuracy_across_inputs == pytest.approx(0.7)
    del raw["fullfield"]
    assert ModelMetadata.model_validate(raw).accuracy_across_inputs == pytest.approx(0.9)
    del raw["test"]
    assert ModelMetadata.model_validate(raw).accuracy_across_inputs is None


def test_unknown_keys_are_kept() -> None:
    raw = committed(COMMITTED[0])
    raw["notes"] = {"by": "hand"}
    raw["input"]["dtype"] = "float32"
    raw["test"]["extra_figure"] = 1
    assert ModelMetadata.model_validate(raw).to_dict() == raw


def test_built_metadata_leaves_out_what_was_not_given() -> None:
    raw = committed(COMMITTED[0])
    minimal = {key: raw[key] for key in ("name", "version", "mode", "classes", "input", "preprocessing", "onnx_sha256")}
    assert ModelMetadata(**minimal).to_dict() == minimal


@pytest.mark.parametrize("breakage", [
    lambda m: m.pop("onnx_sha256"),
    lambda m: m["input"].update(shape=[None, 60, 80]),
    lambda m: m["input"].update(shape=[None, 60, None, 3]),
    lambda m: m["preprocessing"].update(hue_mni=3),
    lambda m: m["test"].update(accuracy="high"),
    lambda m: m.update(classes="eosinophil"),
])
def test_a_file_that_breaks_the_contract_is_refused(tmp_path: Path, breakage) -> None:
    raw = committed(COMMITTED[0])
    breakage(raw)
    with pytest.raises(ValidationError):
        ModelMetadata.model_validate(raw)
    stem = COMMITTED[0]
    shutil.copy(MODELS / f"{stem}.onnx", tmp_path / f"{stem}.onnx")
    (tmp_path / f"{stem}.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match=r"malformed .*re-export the model"):
        Classifier.load(tmp_path / f"{stem}.onnx")


def test_inconsistent_metadata_keeps_its_own_message(tmp_path: Path) -> None:
    stem = COMMITTED[0]
    shutil.copy(MODELS / f"{stem}.onnx", tmp_path / f"{stem}.onnx")
    changes: list[tuple[dict[str, Any], str]] = [
        ({"mode": "sepia"}, "unknown mode"), ({"classes": ["a", "b", "c", "d"]}, "lists classes"),
        ({"input": {**committed(stem)["input"], "channel_order": "BGR"}}, "channel order")]
    for change, message in changes:
        (tmp_path / f"{stem}.json").write_text(json.dumps({**committed(stem), **change}))
        with pytest.raises(ModelLoadError, match=message):
            Classifier.load(tmp_path / f"{stem}.onnx")
