"""Loading the committed ONNX models with their metadata, and refusing inconsistent ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from app import preprocessing
from app.labels import CLASSES
from app.model import CALL_PIXELS, Classifier, ModelLoadError, load_model_dir
from tests.conftest import REPO
from tests.synthetic import make_smear

MODELS = REPO / "models"
COMMITTED = sorted(p.stem for p in MODELS.glob("*.onnx"))


def test_the_shipped_modes_are_committed() -> None:
    assert {"original", "color"} <= set(COMMITTED)


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_model_loads_and_gives_probabilities(name: str) -> None:
    model = Classifier.load(MODELS / f"{name}.onnx")
    assert model.classes == CLASSES and model.mode in preprocessing.MODES
    smears = [make_smear(seed=seed).rgb for seed in range(3)]
    batch = np.stack([model.prepare(rgb).model_image for rgb in smears])
    probabilities = model.predict(batch)
    assert probabilities.shape == (3, len(CLASSES))
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5) and (probabilities >= 0).all()
    # One batched call gives what one call per image gives.
    single = np.concatenate([model.predict(image[None]) for image in batch])
    assert np.abs(single - probabilities).max() < 1e-6


@pytest.mark.parametrize("name", COMMITTED)
def test_a_batch_is_split_into_calls_that_stay_under_the_pixel_budget(name: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    model = Classifier.load(MODELS / f"{name}.onnx")
    height, width = model.input_size
    per_call = model.images_per_call
    assert per_call == 1 or per_call * height * width * model.contract.views <= CALL_PIXELS
    assert (per_call + 1) * height * width * model.contract.views > CALL_PIXELS
    batch = np.stack([model.prepare(make_smear(seed=seed).rgb).model_image for seed in range(2)] * (per_call + 1))
    calls: list[int] = []
    run = model.session.run

    def counting(outputs, feed):
        calls.append(len(next(iter(feed.values()))))
        return run(outputs, feed)

    monkeypatch.setattr(model.session, "run", counting, raising=False)
    batched = model.predict_batched(batch)
    assert max(calls) <= per_call and sum(calls) == len(batch)
    assert np.abs(batched - model.predict(batch)).max() < 1e-6


@pytest.mark.parametrize("name", COMMITTED)
def test_metadata_records_what_the_service_needs(name: str) -> None:
    metadata = json.loads((MODELS / f"{name}.json").read_text())
    assert metadata["classes"] == list(CLASSES)
    assert metadata["input"]["channel_order"] == "RGB" and metadata["input"]["layout"] == "NHWC"
    assert preprocessing.PreprocessingParams.from_dict(metadata["preprocessing"])
    assert metadata["parameters"] <= 35_000
    for key in ("accuracy", "loss", "per_class", "confusion_matrix", "accuracy_ci95"):
        assert key in metadata["test"]
    assert len(metadata["dataset"]["fingerprint"]) == 64
    assert metadata["training"]["seed"] == metadata["training"]["config"]["seed"]
    assert {"tensorflow-cpu", "tf2onnx", "onnxruntime"} <= set(metadata["versions"]) or \
        {"tensorflow", "tf2onnx", "onnxruntime"} <= set(metadata["versions"])
    assert (MODELS / f"{name}.keras").is_file()


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    for suffix in (".onnx", ".json"):
        shutil.copy(MODELS / f"original{suffix}", tmp_path / f"original{suffix}")
    return tmp_path / "original.onnx"


def test_a_file_that_does_not_match_its_sha256_is_refused(model_copy: Path) -> None:
    data = bytearray(model_copy.read_bytes())
    data[-1] ^= 0xFF
    model_copy.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256"):
        Classifier.load(model_copy)


def test_metadata_with_another_input_shape_is_refused(model_copy: Path) -> None:
    meta_path = model_copy.with_suffix(".json")
    metadata = json.loads(meta_path.read_text())
    metadata["input"]["shape"] = [None, 128, 128, 3]
    meta_path.write_text(json.dumps(metadata))
    with pytest.raises(ModelLoadError, match="input"):
        Classifier.load(model_copy)


def test_missing_or_malformed_metadata_is_refused(model_copy: Path) -> None:
    meta_path = model_copy.with_suffix(".json")
    meta_path.write_text("{not json")
    with pytest.raises(ModelLoadError, match="malformed"):
        Classifier.load(model_copy)
    meta_path.unlink()
    with pytest.raises(ModelLoadError, match="not found"):
        Classifier.load(model_copy)


@pytest.mark.parametrize("change", ["views 0", "crop scale 1e308", "nested without end", "views four",
                                    "temperature hot", "blur kernel 4", "open kernel 3.5"])
def test_metadata_that_loads_but_would_break_in_use_is_refused_at_load(model_copy: Path, change: str) -> None:
    # Each loaded before: views 0 made every /classify a 500 (division by zero), a crop scale of 1e308 overflowed
    # at warm-up, JSON nested 100,000 deep raised RecursionError past the loader.
    meta_path = model_copy.with_suffix(".json")
    metadata = json.loads(meta_path.read_text())
    if change == "views 0":
        metadata["export"] = {**(metadata.get("export") or {}), "views": 0}
        meta_path.write_text(json.dumps(metadata))
    elif change in ("views four", "temperature hot"):
        key, word = change.split()
        metadata["export"] = {**(metadata.get("export") or {}), key: word}
        meta_path.write_text(json.dumps(metadata))
    elif change in ("crop scale 1e308", "blur kernel 4", "open kernel 3.5"):
        name, value = {"crop scale 1e308": ("crop_scale", 1e308), "blur kernel 4": ("blur_kernel", 4),
                       "open kernel 3.5": ("open_kernel", 3.5)}[change]
        metadata["preprocessing"][name] = value
        meta_path.write_text(json.dumps(metadata))
    else:
        meta_path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelLoadError):
        Classifier.load(model_copy)


def test_an_empty_model_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no .onnx models"):
        load_model_dir(tmp_path)


def test_model_dir_loads_every_model_by_name() -> None:
    models = load_model_dir(MODELS)
    assert set(models) == {json.loads((MODELS / f"{n}.json").read_text())["name"] for n in COMMITTED}
    assert {model.mode for model in models.values()} == {"original", "color", "crop"}
