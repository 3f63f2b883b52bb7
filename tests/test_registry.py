"""Loading the models, choosing the default mode and each mode's default model, and finding a model by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app import preprocessing
from app.model import ModelLoadError
from app.preprocessing import PreprocessingParams
from app.registry import ModelRegistry, UnknownModeError, UnknownModelError, warm_up_images
from tests.api import model_metadata


def copy_with_accuracies(model_dir: Path, target: Path,
                         accuracies: dict[str, float | tuple[float, float] | None]) -> Path:
    """The real models, with the TEST and full-field accuracies in their metadata replaced: one figure
    sets both, a pair sets (TEST, full-field), None removes both."""
    target.mkdir()
    for onnx_path in sorted(model_dir.glob("*.onnx")):
        meta_path = onnx_path.with_suffix(".json")
        meta = json.loads(meta_path.read_text())
        shutil.copyfile(meta_path.with_suffix(".onnx"), target / f"{meta_path.stem}.onnx")
        if meta["mode"] in accuracies:
            value = accuracies[meta["mode"]]
            if value is None:
                meta.pop("test", None)
                meta.pop("fullfield", None)
            else:
                test, field = value if isinstance(value, tuple) else (value, value)
                meta["test"]["accuracy"] = test
                meta["fullfield"] = {**meta.get("fullfield", {}), "accuracy": field}
        (target / meta_path.name).write_text(json.dumps(meta))
    return target


@pytest.fixture
def modes(model_dir: Path) -> list[str]:
    found = sorted(model_metadata(model_dir))
    if len(found) < 2:
        pytest.skip("needs two models to choose between")
    return found


def test_default_is_the_most_accurate_model_whatever_the_mode(model_dir: Path, modes: list[str],
                                                              tmp_path: Path) -> None:
    first, second = modes[:2]
    chosen = ModelRegistry.load(copy_with_accuracies(model_dir, tmp_path / "a", {first: 0.9, second: 0.4}))
    assert chosen.default_mode == first and chosen.get(None).mode == first
    chosen = ModelRegistry.load(copy_with_accuracies(model_dir, tmp_path / "b", {first: 0.4, second: 0.9}))
    assert chosen.default_mode == second


def test_default_is_the_most_accurate_across_centred_and_full_field_images(model_dir: Path, modes: list[str],
                                                                          tmp_path: Path) -> None:
    first, second = modes[:2]
    # first: best on TEST alone; second: best on average over TEST and full-field frames.
    chosen = ModelRegistry.load(copy_with_accuracies(model_dir, tmp_path / "a", {first: (0.9, 0.2),
                                                                                 second: (0.85, 0.8)}))
    assert chosen.default_mode == second


def test_a_model_without_test_accuracy_is_never_the_default(model_dir: Path, modes: list[str],
                                                            tmp_path: Path) -> None:
    first, second = modes[:2]
    others = {mode: 0.05 for mode in modes[2:]}
    chosen = ModelRegistry.load(copy_with_accuracies(model_dir, tmp_path / "a", {first: None, second: 0.1, **others}))
    assert chosen.default_mode == second


def test_the_default_mode_setting_wins(model_dir: Path, modes: list[str]) -> None:
    for mode in modes:
        assert ModelRegistry.load(model_dir, default_mode=mode).default_mode == mode


def test_a_default_mode_without_a_model_fails_loudly(model_dir: Path, modes: list[str], tmp_path: Path) -> None:
    kept, missing = modes[:2]
    stem = next(path.stem for path in model_dir.glob("*.onnx")
                if json.loads(path.with_suffix(".json").read_text())["mode"] == kept)
    for suffix in (".onnx", ".json"):
        shutil.copyfile(model_dir / f"{stem}{suffix}", tmp_path / f"{stem}{suffix}")
    with pytest.raises(ModelLoadError, match="BLOODCELLS_DEFAULT_MODE"):
        ModelRegistry.load(tmp_path, default_mode=missing)


def test_unknown_mode_names_the_loaded_ones(model_dir: Path, modes: list[str]) -> None:
    registry = ModelRegistry.load(model_dir)
    with pytest.raises(UnknownModeError) as raised:
        registry.get("sepia")
    assert raised.value.available == registry.modes
    assert all(mode in raised.value.message for mode in modes)


def test_an_empty_model_directory_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no .onnx models"):
        ModelRegistry.load(tmp_path)


def with_second_model(model_dir: Path, target: Path, mode: str, name: str, accuracy: float) -> Path:
    """The real models, plus a copy of ``mode``'s default model under another name and accuracy."""
    shutil.copytree(model_dir, target, ignore=shutil.ignore_patterns("*.keras", "README.md", "*.png"))
    meta = model_metadata(model_dir)[mode]
    copy = {**meta, "name": name, "test": {**meta["test"], "accuracy": accuracy}}
    copy["fullfield"] = {**meta.get("fullfield", {}), "accuracy": accuracy}
    shutil.copyfile(model_dir / f"{meta['name']}.onnx", target / f"{name}.onnx")
    (target / f"{name}.json").write_text(json.dumps(copy))
    return target


def test_each_mode_answers_with_its_most_accurate_model_and_the_others_by_name(model_dir: Path, modes: list[str],
                                                                             tmp_path: Path) -> None:
    mode = modes[0]
    usual = model_metadata(model_dir)[mode]["name"]
    worse = ModelRegistry.load(with_second_model(model_dir, tmp_path / "worse", mode, "second-model", 0.3))
    assert worse.get(mode).name == usual and worse.defaults[mode] == usual
    assert worse.get(None, "second-model").name == "second-model" and worse.get(mode, "second-model").mode == mode
    assert worse.get(mode.upper(), "second-model").name == "second-model"
    assert not worse.is_default(worse.models["second-model"]) and worse.is_default(worse.models[usual])
    better = ModelRegistry.load(with_second_model(model_dir, tmp_path / "better", mode, "second-model", 0.999))
    assert better.get(mode).name == "second-model" and better.default_mode == mode


def test_an_unknown_model_name_lists_the_loaded_ones(model_dir: Path) -> None:
    registry = ModelRegistry.load(model_dir)
    with pytest.raises(UnknownModelError) as raised:
        registry.get(None, "resnet50")
    assert all(name in raised.value.message for name in registry.names)


def test_a_model_of_another_mode_than_the_one_asked_for_is_refused(model_dir: Path, modes: list[str]) -> None:
    registry = ModelRegistry.load(model_dir)
    name = registry.defaults[modes[0]]
    with pytest.raises(UnknownModelError, match=f"serves mode '{modes[0]}', not '{modes[1]}'"):
        registry.get(modes[1], name)


def test_two_files_with_one_model_name_fail_loudly(model_dir: Path, modes: list[str], tmp_path: Path) -> None:
    target = with_second_model(model_dir, tmp_path / "twice", modes[0], "second-model", 0.5)
    shutil.copyfile(target / "second-model.onnx", target / "again.onnx")
    shutil.copyfile(target / "second-model.json", target / "again.json")
    with pytest.raises(ModelLoadError, match="'second-model'"):
        ModelRegistry.load(target)


@pytest.mark.parametrize("encoding", ["jpeg", "png"])
def test_the_warm_up_image_reaches_every_step(encoding: str) -> None:
    """The warm-up only spares the first request its lazy initialisation if its image takes the whole path:
    a header Pillow reads, a decode, a white cell that crop mode cuts out."""
    data = dict(zip(["jpeg", "png"], warm_up_images()))[encoding]
    decoded = preprocessing.decode(data)
    assert decoded.rgb.shape == (240, 320, 3)
    prepared = preprocessing.preprocess(decoded.rgb, "crop", (64, 64), PreprocessingParams())
    assert prepared.wbc.found and len(prepared.wbc.cells) == 1
    assert prepared.window.width < 320  # cut around the cell, not the whole image

