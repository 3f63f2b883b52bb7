"""A smoke run of the training pipeline: train, export, parity, evaluate (needs the train extra)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the train extra is not installed: pip install -e '.[train]'")

from app.inference import Classifier  # noqa: E402
from training import data  # noqa: E402
from training.evaluate import evaluate_onnx  # noqa: E402
from training.export import PARITY_TOLERANCE, export  # noqa: E402
from training.train import TrainConfig, predict, train  # noqa: E402

pytestmark = pytest.mark.training


def smoke(dataset: Path, tmp_path: Path, mode: str, limit: int | None) -> None:
    config = TrainConfig(model="dropout0.3", mode=mode, epochs=2, start_from_epoch=0, val_fraction=0.34,
                         limit_per_class=limit, seed=3)
    result = train(config, str(dataset), tmp_path / "runs", cache_dir=tmp_path / "cache", progress=False)
    run_dir = tmp_path / "runs" / "dropout0.3" / mode
    for name in ("model.keras", "curves.png", "confusion_test.png", "result.json", "history.json"):
        assert (run_dir / name).is_file(), name
    assert result.parameters == 26_596
    assert result.epochs_run == 2 and 0.0 <= result.test["accuracy"] <= 1.0

    onnx_path = export(run_dir, tmp_path / "models", mode, str(dataset), limit_per_class=limit,
                       cache_dir=tmp_path / "cache")
    metadata = json.loads(onnx_path.with_suffix(".json").read_text())
    assert metadata["export"]["parity_max_abs_diff"] <= PARITY_TOLERANCE
    assert metadata["mode"] == mode and metadata["input"]["shape"] == [None, 60, 80, 3]
    assert metadata["test"]["accuracy"] == pytest.approx(result.test["accuracy"])
    assert (tmp_path / "models" / f"{mode}.keras").is_file()

    # The ONNX model, loaded as the service loads it, agrees with Keras on the same preprocessed images.
    model = Classifier.load(onnx_path)
    images = data.load_split(str(dataset), "TEST", (mode,), (60, 80), cache_dir=tmp_path / "cache",
                             limit_per_class=limit, progress=False)[mode].images
    assert np.abs(model.predict(images) - predict(result.model, images)).max() <= PARITY_TOLERANCE
    evaluated = evaluate_onnx(onnx_path, str(dataset), limit_per_class=limit, cache_dir=tmp_path / "cache",
                              progress=False)
    assert evaluated["accuracy"] == pytest.approx(result.test["accuracy"])


def test_train_export_evaluate_on_a_synthetic_dataset(synthetic_dataset: Path, tmp_path: Path) -> None:
    smoke(synthetic_dataset, tmp_path, "color", limit=None)


@pytest.mark.data
@pytest.mark.slow
def test_train_export_evaluate_on_a_subset_of_the_real_dataset(data_dir: Path, tmp_path: Path) -> None:
    smoke(data_dir, tmp_path, "original", limit=40)


@pytest.mark.parametrize(("kind", "shape"), [("flips", (60, 80)), ("flips+jitter", (60, 80)),
                                             ("flips+jitter", (64, 64)), ("flips+jitter+rot90", (64, 64))])
def test_augmentation_keeps_shape_range_and_black_background(kind: str, shape: tuple[int, int]) -> None:
    import tensorflow as tf

    from training.train import augmenter

    rng = np.random.default_rng(0)
    images = np.zeros((8, *shape, 3), np.float32)
    images[:, shape[0] // 4: shape[0] // 2, shape[1] // 4: shape[1] // 2] = rng.uniform(0.2, 1.0, 3)
    out, labels = augmenter(kind, seed=1)(tf.constant(images), tf.constant(np.arange(8)))
    out = out.numpy()
    assert out.shape == images.shape and labels.numpy().tolist() == list(range(8))
    assert out.min() >= 0.0 and out.max() <= 1.0
    # Flips, shifts, turns and gains move and tint the stained patch but never light up the black.
    assert ((out > 0).any(axis=3).sum(axis=(1, 2)) <= (images > 0).any(axis=3).sum(axis=(1, 2))).all()
    assert not np.array_equal(out, images)


def test_unknown_augmentation_is_refused() -> None:
    from training.train import augmenter

    with pytest.raises(ValueError, match="unknown augmentation"):
        augmenter("mixup", seed=0)
