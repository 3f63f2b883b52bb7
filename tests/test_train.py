"""A smoke run of the training pipeline: train, export, parity, evaluate (needs the train extra)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the train extra is not installed: pip install -e '.[train]'")

from app.model import Classifier  # noqa: E402
from app.preprocessing import Mode  # noqa: E402
from training import data  # noqa: E402
from training.evaluate import evaluate_onnx  # noqa: E402
from training.export import PARITY_TOLERANCE, export  # noqa: E402
from training.train import TrainConfig, predict, train  # noqa: E402

pytestmark = pytest.mark.training


def smoke(dataset: Path, tmp_path: Path, mode: Mode, limit: int | None) -> Path:
    config = TrainConfig(model="dropout0.3", mode=mode, epochs=2, start_from_epoch=0, val_fraction=0.34,
                         limit_per_class=limit, seed=3)
    result = train(config, str(dataset), tmp_path / "runs", cache_dir=tmp_path / "cache", progress=False)
    run_dir = tmp_path / "runs" / "dropout0.3" / mode
    for name in ("model.keras", "curves.png", "confusion_test.png", "result.json", "history.json"):
        assert (run_dir / name).is_file(), name
    assert result.parameters == 26_596
    assert result.test is not None and result.epochs_run == 2 and 0.0 <= result.test["accuracy"] <= 1.0

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
    return run_dir


def test_train_export_evaluate_on_a_synthetic_dataset(synthetic_dataset: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    run_dir = smoke(synthetic_dataset, tmp_path, "color", limit=None)
    # export spends most of its time measuring the exported file: every stage says when it starts, in order.
    starts = [line for line in capsys.readouterr().err.splitlines() if line.startswith("export: ")]
    stages = ("export: loading", "export: converting to ONNX", "export: parity check",
              "export: measuring color.onnx on TEST", "export: measuring color.onnx on full-field frames")
    assert len(starts) == len(stages) and all(line.startswith(stage) for line, stage in zip(starts, stages)), starts

    # The same run as an ensemble of two, with flips folded in: one graph, checked against Keras; its validation
    # figure is of that graph, the run's own stays in the training section.
    import keras

    from training import tta
    from training.evaluate import evaluate_validation

    cache = tmp_path / "cache"
    single = export(tmp_path / "models" / "color.keras", tmp_path / "flips", "color", str(synthetic_dataset),
                    cache_dir=cache, progress=False, test_time_augmentation="flips")
    pair = export([run_dir, run_dir], tmp_path / "pair", "pair", str(synthetic_dataset), cache_dir=cache,
                  progress=False, test_time_augmentation="flips")
    meta = json.loads(pair.with_suffix(".json").read_text())
    assert meta["parameters"] == 2 * 26_596 and meta["architecture"] == "2 x dropout0.3"
    assert {key: meta["export"][key] for key in ("members", "test_time_augmentation", "views")} == \
        {"members": 2, "test_time_augmentation": "flips", "views": 4}
    assert meta["export"]["parity_max_abs_diff"] <= PARITY_TOLERANCE and len(meta["training"]["members"]) == 2
    config = TrainConfig.from_dict(meta["training"]["config"])
    validation = evaluate_validation(pair, str(synthetic_dataset), config, cache_dir=cache, progress=False)
    assert meta["validation"]["accuracy"] == validation["accuracy"]
    assert meta["training"]["validation"] == json.loads((run_dir / "result.json").read_text())["validation"]
    images = data.load_split(str(synthetic_dataset), "TEST", ("color",), (60, 80), cache_dir=cache,
                             progress=False)["color"].images
    assert json.loads(single.with_suffix(".json").read_text())["export"]["test_time_augmentation"] == "flips"
    flipped = Classifier.load(single).predict(images)
    assert np.abs(Classifier.load(pair).predict(images) - flipped).max() <= PARITY_TOLERANCE
    keras_model = keras.models.load_model(run_dir / "model.keras")
    expected = tta.predict_numpy(lambda x: keras_model.predict(x, verbose=0), images.astype(np.float32) / 255, "flips")
    assert np.abs(flipped - expected).max() <= PARITY_TOLERANCE
    assert np.abs(flipped - predict(keras_model, images)).max() > PARITY_TOLERANCE  # the views do change the answer
    # A temperature from a k-fold report of this recipe is folded in after the views, and recorded.
    from training import calibration

    report = tmp_path / "kfold.json"
    run_config = json.loads((run_dir / "result.json").read_text())["config"]
    report.write_text(json.dumps({"config": run_config, "calibration": {"flips": {"temperature": 2.0}, "none": {
        "temperature": None, "reason": "no usable confidence"}}}))
    scaled = export(tmp_path / "models" / "color.keras", tmp_path / "scaled", "color", str(synthetic_dataset),
                    cache_dir=cache, progress=False, test_time_augmentation="flips", calibration_report=report)
    assert json.loads(scaled.with_suffix(".json").read_text())["export"]["temperature"] == 2.0
    assert Classifier.load(scaled).contract.temperature == 2.0 and Classifier.load(single).contract.temperature == 1.0
    assert np.abs(Classifier.load(scaled).predict(images) - calibration.scale(flipped, 2.0)).max() <= PARITY_TOLERANCE
    with pytest.raises(ValueError, match="no temperature for test-time augmentation 'none'"):
        export(run_dir, tmp_path / "bad", "bad", str(synthetic_dataset), cache_dir=cache, progress=False,
               calibration_report=report)
    report.write_text(json.dumps({"config": {**run_config, "mode": "original"}, "calibration": {}}))
    with pytest.raises(ValueError, match="mode: 'original' there, 'color' here"):
        export(run_dir, tmp_path / "bad", "bad", str(synthetic_dataset), cache_dir=cache, progress=False,
               test_time_augmentation="flips", calibration_report=report)
    with pytest.raises(ValueError, match="an ensemble"):
        export([run_dir, run_dir], tmp_path / "bad", "bad", str(synthetic_dataset), cache_dir=cache, progress=False,
               test_time_augmentation="flips", calibration_report=report)
    with pytest.raises(ValueError, match="quarter turns need a square input"):
        export(run_dir, tmp_path / "bad", "bad", str(synthetic_dataset), cache_dir=cache, progress=False,
               test_time_augmentation="dihedral")

@pytest.mark.data
@pytest.mark.slow
def test_train_export_evaluate_on_a_subset_of_the_real_dataset(data_dir: Path, tmp_path: Path) -> None:
    smoke(data_dir, tmp_path, "original", limit=40)


@pytest.mark.parametrize(("kind", "shape"), [("flips", (60, 80)), ("flips+jitter", (60, 80)),
                                             ("flips+jitter", (64, 64)), ("flips+jitter+rot90", (64, 64)),
                                             ("flips+jitter+stain", (60, 80))])  # mixup: its own test
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


def test_mixup_blends_images_and_their_labels_alike() -> None:
    import tensorflow as tf

    from training.train import augmenter

    rng = np.random.default_rng(0)
    images = np.zeros((16, 64, 64, 3), np.float32)
    images[:, 16:48, 16:48] = rng.uniform(0.2, 1.0, (16, 1, 1, 3))
    one_hot = np.eye(4, dtype=np.float32)[np.arange(16) % 4]
    out, labels = augmenter("flips+jitter+mixup", seed=3)(tf.constant(images), tf.constant(one_hot))
    out, labels = out.numpy(), labels.numpy()
    assert out.shape == images.shape and out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-6)
    # Image i is blended with image 15 - i (another class here): its label holds their two classes only.
    index = np.arange(16)
    weight, other = labels[index, index % 4], labels[index, (15 - index) % 4]
    np.testing.assert_allclose(weight + other, 1.0, rtol=1e-6)
    assert ((weight > 0.05) & (weight < 0.95)).any() and (weight != 1.0).any()
    assert not np.array_equal(out, images)


def test_cutmix_pastes_a_box_of_another_image_and_blends_the_labels_by_its_area() -> None:
    import tensorflow as tf

    from training.train import _cut_mix, augmenter

    images = np.broadcast_to((np.arange(16, dtype=np.float32) / 20 + 0.1)[:, None, None, None], (16, 64, 64, 3))
    one_hot = np.eye(4, dtype=np.float32)[np.arange(16) % 4]
    out, labels = _cut_mix(tf.constant(images), tf.constant(one_hot), tf.random.Generator.from_seed(5))
    out, labels = out.numpy(), labels.numpy()
    index = np.arange(16)
    # Image i is image 15 - i (another class) inside the box, itself outside: the label weighs the two by area.
    from_other = out[..., 0] == images[::-1, :, :, 0]
    assert (from_other | (out[..., 0] == images[..., 0])).all()
    np.testing.assert_allclose(labels[index, (15 - index) % 4], from_other.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(labels[index, index % 4], 1.0 - from_other.mean(axis=(1, 2)), rtol=1e-6)
    assert 0 < from_other.mean() < 1 and (from_other.mean(axis=(1, 2)) < 1).all()
    # In the augmenter, after flips, gains and shifts: shape, range and labels that still sum to one.
    out, labels = augmenter("flips+jitter+cutmix", seed=5)(tf.constant(images), tf.constant(one_hot))
    assert out.shape == images.shape and out.numpy().min() >= 0.0 and out.numpy().max() <= 1.0
    np.testing.assert_allclose(labels.numpy().sum(axis=1), 1.0, rtol=1e-6)


def test_zoom_scales_the_image_about_its_centre_within_its_range() -> None:
    import tensorflow as tf

    from training.train import ZOOM_RANGE, augmenter

    images = np.zeros((32, 64, 64, 3), np.float32)
    images[:, 24:40, 24:40] = 0.6  # a 16x16 stained square at the centre: flips and turns leave it in place
    out, _ = augmenter("flips+jitter+zoom", seed=2)(tf.constant(images), tf.constant(np.arange(32)))
    out = out.numpy()
    assert out.shape == images.shape and out.min() >= 0.0 and out.max() <= 1.0
    # Its side after the zoom (the shift moves it, the gains tint it; it stays square and black around).
    sides = np.sqrt((out > 0.05).any(axis=3).sum(axis=(1, 2)))
    assert (sides >= 16 * ZOOM_RANGE[0] - 2).all() and (sides <= 16 * ZOOM_RANGE[1] + 2).all(), sides
    assert sides.min() < 15 and sides.max() > 17  # zoomed both ways


def test_edge_shows_about_half_the_images_cut_and_augments_whichever_it_shows() -> None:
    import tensorflow as tf

    from training.train import augmenter

    plain = np.zeros((64, 64, 64, 3), np.float32)
    cut = np.full((64, 64, 64, 3), 0.5, np.float32)
    out, labels = augmenter("flips+jitter+edge", seed=4)((tf.constant(plain), tf.constant(cut)),
                                                         tf.constant(np.arange(64)))
    out = out.numpy()
    assert out.shape == plain.shape and labels.numpy().tolist() == list(range(64))
    shown_cut = out.max(axis=(1, 2, 3)) > 0
    assert 16 <= shown_cut.sum() <= 48, shown_cut.sum()
    assert (out[~shown_cut] == 0).all()
    # The cut ones went through the gains and the shift (zero fill) like any image.
    assert not np.allclose(out[shown_cut], 0.5)


def test_the_training_set_is_shuffled_whole_when_it_comes_with_its_cut_cells() -> None:
    from training.train import _dataset

    images = np.zeros((256, 4, 4, 3), np.float32)
    labels = np.eye(4, dtype=np.float32)[np.repeat(np.arange(4), 64)]  # sorted by class, as the data set is
    ds = _dataset((images, images + 1), labels, 32, seed=0, augment=lambda pair, y: (pair[1], y))
    batch_images, batch_labels = next(iter(ds))
    assert (batch_images.numpy() == 1).all()
    assert len(set(batch_labels.numpy().argmax(axis=1).tolist())) > 1  # not the first 32 of one class


def test_training_with_cut_cells_runs_on_a_synthetic_dataset(synthetic_dataset: Path, tmp_path: Path) -> None:
    config = TrainConfig(model="sepnet", mode="crop", epochs=1, start_from_epoch=0, val_fraction=0.34,
                         augment="flips+jitter+edge", max_restarts=0, seed=1)
    result = train(config, str(synthetic_dataset), tmp_path / "runs", cache_dir=tmp_path / "cache", progress=False)
    assert result.epochs_run == 1 and result.test is not None
    assert len(list((tmp_path / "cache").glob("TRAIN-crop-edge-*.npz"))) == 1


def test_unknown_augmentation_is_refused() -> None:
    from training.train import augmenter

    with pytest.raises(ValueError, match="unknown augmentation"):
        augmenter("mixup", seed=0)


def test_plateau_guard_says_once_that_a_run_is_at_chance_and_stops_it_at_the_check(
        capsys: pytest.CaptureFixture) -> None:
    from types import SimpleNamespace

    from training.train import CHANCE_LOSS, PlateauGuard

    short = PlateauGuard(epochs=8, label="dropout0.3 original", total_epochs=2)
    short.set_model(SimpleNamespace(stop_training=False))
    for epoch in range(2):
        short.on_epoch_end(epoch, {"val_loss": CHANCE_LOSS})
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("dropout0.3 original: on the chance-level plateau at epoch 1 (validation loss 1.386, ln 4")
    assert line.endswith("this run ends at epoch 2, before the restart check at epoch 8: give it more --epochs")
    assert not short.stuck and not short.model.stop_training

    checked = PlateauGuard(epochs=2, label="basic color", total_epochs=80)
    checked.set_model(SimpleNamespace(stop_training=False))
    checked.on_epoch_end(0, {"val_loss": 0.9})
    assert capsys.readouterr().err == ""
    checked.on_epoch_end(1, {"val_loss": 1.40})
    assert "at epoch 2 (validation loss 1.400" in capsys.readouterr().err
    assert checked.stuck and checked.model.stop_training

    learnt = PlateauGuard(epochs=2, label="sepnet crop", total_epochs=40)
    learnt.set_model(SimpleNamespace(stop_training=False))
    for epoch in range(2):  # held-out photos can cost more than ln 4 while training has left the plateau
        learnt.on_epoch_end(epoch, {"val_loss": 2.08, "loss": 0.50})
    assert capsys.readouterr().err == "" and not learnt.stuck and not learnt.model.stop_training


def test_a_run_stuck_at_chance_says_so_and_restarts(synthetic_dataset: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    # Label smoothing 1 makes every target uniform: the loss can never go below ln 4, a guaranteed plateau.
    config = TrainConfig(model="dropout0.3", mode="color", epochs=1, label_smoothing=1.0, plateau_epochs=1,
                         max_restarts=1, start_from_epoch=0, val_fraction=0.34, seed=3)
    result = train(config, str(synthetic_dataset), tmp_path / "runs", cache_dir=tmp_path / "cache", progress=False)
    lines = capsys.readouterr().err.splitlines()
    assert result.restarts == 1
    assert [line.split(":")[0] for line in lines] == ["dropout0.3 color"] * 3
    assert lines[0].endswith("a run still on it at epoch 1 restarts from a new initialisation")
    assert "still at chance level after 1 epoch: restart 1 of 1, from a new initialisation (seed 1003)" in lines[1]
    assert lines[2].endswith("this last try is not restarted")


def test_cross_validation_trains_each_fold_and_never_loads_test(synthetic_dataset: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from training.kfold import cross_validate

    splits: list[str] = []
    load_split = data.load_split

    def recording(data_dir, split, *args, **kwargs):
        splits.append(split)
        return load_split(data_dir, split, *args, **kwargs)

    monkeypatch.setattr(data, "load_split", recording)
    config = TrainConfig(model="dropout0.3", mode="color", epochs=1, start_from_epoch=0, seed=3)
    report = cross_validate(config, str(synthetic_dataset), tmp_path / "kfold", folds=3, cache_dir=tmp_path / "cache",
                            progress=False)
    assert splits and set(splits) == {"TRAIN"}
    assert [run["fold"] for run in report["runs"]] == [0, 1, 2]
    # Every photo (3 per class, 4 classes) is held out exactly once.
    assert sum(run["source_photos"] for run in report["runs"]) == 12
    assert report["mean"]["accuracy"] == pytest.approx(sum(run["accuracy"] for run in report["runs"]) / 3)
    written = json.loads((tmp_path / "kfold" / "dropout0.3" / "color" / "kfold.json").read_text())
    assert written["folds"] == 3 and len(written["runs"]) == 3
    for fold in range(3):
        run_dir = tmp_path / "kfold" / "dropout0.3" / "color" / f"fold-{fold}-of-3"
        assert (run_dir / "model.keras").is_file() and not (run_dir / "confusion_test.png").exists()
        assert json.loads((run_dir / "result.json").read_text())["test"] is None
    # Each fold is measured with each test-time augmentation a 60x80 input allows, on the same held-out photos.
    assert set(report["tta"]) == {"none", "flips"} and report["tta"]["none"]["mean"] == report["mean"]
    assert all(set(run["tta"]) == {"none", "flips"} for run in report["runs"])
    # A temperature per view set, fitted on every fold's held-out photos; cross-fitted, it changes no answer.
    assert set(report["calibration"]) == {"none", "flips"}
    for kind, fitted in report["calibration"].items():
        if fitted["temperature"] is None:  # a 1-epoch network on easy synthetic smears may be right everywhere
            assert "no usable confidence" in fitted["reason"] or "every prediction is right" in fitted["reason"]
            continue
        assert fitted["temperature"] > 0 and len(fitted["fold_temperatures"]) == 3
        assert fitted["mean"]["accuracy"] == pytest.approx(report["tta"][kind]["mean"]["accuracy"])
    # resume: the trained folds are measured again, not retrained.
    mtimes = [(tmp_path / "kfold" / "dropout0.3" / "color" / f"fold-{f}-of-3" / "model.keras").stat().st_mtime_ns
              for f in range(3)]
    again = cross_validate(config, str(synthetic_dataset), tmp_path / "kfold", folds=3, cache_dir=tmp_path / "cache",
                           progress=False, resume=True)
    assert [(tmp_path / "kfold" / "dropout0.3" / "color" / f"fold-{f}-of-3" / "model.keras").stat().st_mtime_ns
            for f in range(3)] == mtimes
    assert again["tta"] == report["tta"] and again["runs"] == report["runs"]
