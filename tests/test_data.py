"""Data-set discovery, the source-photo split and the preprocessing cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from app.labels import CLASSES
from app.preprocessing import PreprocessingParams
from training import data


def test_resolve_accepts_the_download_folder_or_its_images_folder(synthetic_dataset: Path) -> None:
    images = synthetic_dataset / "images"
    assert data.resolve_data_dir(synthetic_dataset) == images
    assert data.resolve_data_dir(images) == images
    assert data.resolve_data_dir(synthetic_dataset.parent) == images


def test_resolve_reads_the_environment(synthetic_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(data.DATA_DIR_ENV, str(synthetic_dataset))
    assert data.resolve_data_dir(None) == synthetic_dataset / "images"


def test_missing_or_wrong_layout_is_a_clear_error(tmp_path: Path, synthetic_dataset: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    with pytest.raises(data.DataSetError, match="BLOODCELLS_DATA_DIR"):
        data.resolve_data_dir(None)
    with pytest.raises(data.DataSetError, match="does not exist"):
        data.resolve_data_dir(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    with pytest.raises(data.DataSetError, match="Kaggle layout"):
        data.resolve_data_dir(tmp_path / "flat")
    shutil.rmtree(synthetic_dataset / "images" / "TEST" / "MONOCYTE")
    with pytest.raises(data.DataSetError, match="TEST/MONOCYTE"):
        data.resolve_data_dir(synthetic_dataset)


def test_samples_carry_class_and_source_photo(synthetic_dataset: Path) -> None:
    samples = data.list_samples(synthetic_dataset / "images", "TRAIN")
    assert len(samples) == 4 * 3 * 2
    assert {s.label for s in samples} == set(range(len(CLASSES)))
    first = samples[0]
    assert first.path.name == "_0_0.jpeg" and first.source == "eosinophil/0"


def test_split_keeps_every_source_photo_on_one_side_and_every_class_on_both() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 200)
    sources = np.array([f"{CLASSES[label]}/{rng.integers(0, 20)}" for label in labels])
    train, val = data.split_by_source(labels, sources, 0.2, seed=1)
    assert set(sources[train]).isdisjoint(sources[val])
    assert len(train) + len(val) == len(labels)
    assert set(labels[val]) == set(labels[train]) == {0, 1, 2, 3}
    again, _ = data.split_by_source(labels, sources, 0.2, seed=1)
    assert np.array_equal(train, again)  # seeded


def test_split_refuses_a_class_with_too_few_photos() -> None:
    labels = np.array([0, 0, 1, 1])
    sources = np.array(["eosinophil/0", "eosinophil/0", "lymphocyte/0", "lymphocyte/1"])
    with pytest.raises(data.DataSetError, match="too few"):
        data.split_by_source(labels, sources, 0.5, seed=0)


def test_load_split_caches_and_rebuilds_when_parameters_change(synthetic_dataset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = data.load_split(synthetic_dataset, "TRAIN", ("original", "color"), (60, 80), cache_dir=cache,
                            progress=False)
    assert first["original"].images.shape == (24, 60, 80, 3)
    assert first["original"].images.dtype == np.uint8
    assert len(list(cache.glob("*.npz"))) == 2
    again = data.load_split(synthetic_dataset, "TRAIN", ("color",), (60, 80), cache_dir=cache, progress=False)
    assert np.array_equal(again["color"].images, first["color"].images)
    assert len(list(cache.glob("*.npz"))) == 2  # served from the cache
    data.load_split(synthetic_dataset, "TRAIN", ("color",), (60, 80), PreprocessingParams(blur_kernel=3),
                    cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.npz"))) == 3  # new parameters, new entry


def test_limit_per_class_spreads_over_source_photos(synthetic_dataset: Path, tmp_path: Path) -> None:
    arrays = data.load_split(synthetic_dataset, "TRAIN", ("original",), (60, 80), cache_dir=tmp_path,
                             limit_per_class=3, progress=False)["original"]
    assert len(arrays.labels) == 12
    assert len(set(arrays.sources)) == 12  # three photos per class, one copy each
    assert not list(tmp_path.glob("*.npz"))  # subsets are not cached


def test_fingerprint_changes_with_the_files(synthetic_dataset: Path) -> None:
    images = synthetic_dataset / "images"
    before = data.fingerprint(images)
    (images / "TEST" / "LYMPHOCYTE" / "_0_0.jpeg").unlink()
    assert data.fingerprint(images) != before


def photos(per_class: tuple[int, ...], copies: int = 3) -> tuple[np.ndarray, np.ndarray]:
    labels, sources = [], []
    for label, count in enumerate(per_class):
        for photo in range(count):
            labels += [label] * copies
            sources += [f"{CLASSES[label]}/{photo}"] * copies
    return np.array(labels), np.array(sources)


def test_kfold_holds_every_photo_out_once_stratified_and_seeded() -> None:
    labels, sources = photos((13, 6, 5, 40))
    folds = data.kfold_by_source(labels, sources, 5, seed=1)
    held_out = np.concatenate([val for _, val in folds])
    assert sorted(held_out.tolist()) == list(range(len(labels)))  # every image validated exactly once
    for train_idx, val_idx in folds:
        assert not set(sources[train_idx]) & set(sources[val_idx])  # a photo never on both sides
        assert set(labels[val_idx]) == set(range(4))  # every class in every fold
        assert len(train_idx) + len(val_idx) == len(labels)
    again = data.kfold_by_source(labels, sources, 5, seed=1)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    other = data.kfold_by_source(labels, sources, 5, seed=2)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, other))


def test_kfold_refuses_more_folds_than_a_class_has_photos() -> None:
    labels, sources = photos((13, 4, 5, 40))
    with pytest.raises(data.DataSetError, match="lymphocyte has only 4 source photos"):
        data.kfold_by_source(labels, sources, 5, seed=0)
    with pytest.raises(data.DataSetError, match="at least 2 folds"):
        data.kfold_by_source(labels, sources, 1, seed=0)
