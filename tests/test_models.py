"""The committed models on the real TEST split: the accuracy their metadata claims, and the paper's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

MODELS = REPO / "models"
COMMITTED = sorted(p.stem for p in MODELS.glob("*.onnx"))
# The paper's TEST accuracy for Dropout(0.3); crop mode has no paper figure, so it must beat the best one.
PAPER = {"original": 0.842, "color": 0.813, "crop": 0.842}
# The paper's own network, served by name, trained with the paper's protocol: the figure its Table 1 run here
# reaches (models/experiment.md), which on original images is below the paper's 0.842 (see the model card).
REPRODUCED = {"dropout0.3-original": 0.787, "dropout0.3-color": 0.813}
# Each shipped model, most with test-time augmentation (flips), reaches at least these (models/README.md;
# issue 11's color-mode target 0.85 is met by dropout0.3-color).
SHIPPED = {"crop": 0.88, "original": 0.865, "color": 0.82, "dropout0.3-original": 0.79, "dropout0.3-color": 0.85}

pytestmark = [pytest.mark.data, pytest.mark.slow]


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_model_reaches_its_claimed_accuracy_and_the_papers(name: str, data_dir: Path,
                                                                     tmp_path: Path) -> None:
    from training.evaluate import evaluate_onnx

    metadata = json.loads((MODELS / f"{name}.json").read_text())
    result = evaluate_onnx(MODELS / f"{name}.onnx", str(data_dir), "TEST", cache_dir=tmp_path, progress=False)
    assert result["images"] == 2487
    assert result["accuracy"] == pytest.approx(metadata["test"]["accuracy"], abs=0.005)
    assert result["loss"] == pytest.approx(metadata["test"]["loss"], abs=0.01)
    # The recorded interval and worst photos are the ones over photos found by appearance (training.photos).
    assert result["accuracy_ci95"] == pytest.approx(metadata["test"]["accuracy_ci95"], abs=0.01)
    assert result["worst_photos"] == metadata["test"]["worst_photos"]
    assert result["accuracy"] >= REPRODUCED.get(name, PAPER[metadata["mode"]]) - 0.0005
    assert result["accuracy"] >= SHIPPED[name]


@pytest.mark.training
@pytest.mark.parametrize("name", COMMITTED)
def test_onnx_matches_the_keras_model_it_was_exported_from(name: str, data_dir: Path) -> None:
    pytest.importorskip("tensorflow", reason="the train extra is not installed")
    import keras

    from app.model import Classifier
    from training import data
    from training.export import reference

    model = Classifier.load(MODELS / f"{name}.onnx")
    arrays = data.load_split(str(data_dir), "TEST", (model.mode,), model.input_size, model.params,
                             limit_per_class=16, progress=False)[model.mode]
    # The graph folds in the metadata's test-time augmentation and temperature: the Keras side applies them in NumPy.
    network = keras.models.load_model(MODELS / f"{name}.keras")
    expected = reference(lambda x: network.predict(x, verbose=0), arrays.images.astype(np.float32) / 255.0,
                         model.contract.test_time_augmentation, model.contract.temperature)  # type: ignore[arg-type]
    assert np.abs(model.predict(arrays.images) - expected).max() <= 1e-5
