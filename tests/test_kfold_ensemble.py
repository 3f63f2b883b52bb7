"""Ensembles of cross-validated trainings on the held-out folds (``training.kfold_ensemble``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.config import TrainConfig
from training.kfold_ensemble import EnsembleError, check_folds, combine, read_reports


def answers(labels: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Sure (0.9) of the true class where ``right``, else unsure (0.4) of the next class; the rest spread evenly."""
    confidence = np.where(right, 0.9, 0.4)
    probabilities = np.repeat(((1.0 - confidence) / 3)[:, None], 4, axis=1)
    chosen = np.where(right, labels, (labels + 1) % 4)
    probabilities[np.arange(len(labels)), chosen] = confidence
    return probabilities


def test_two_members_that_err_on_different_images_are_right_together() -> None:
    rng = np.random.default_rng(0)
    held_out, first, second = [], [], []
    for _ in range(3):
        labels = rng.integers(0, 4, 40)
        sources = np.array([f"p{i % 8}" for i in range(40)])
        half = np.arange(40) < 20
        held_out.append((labels, sources))
        first.append(answers(labels, half))
        second.append(answers(labels, ~half))
    results = combine(["a", "b"], [first, second], held_out)
    assert [r["members"] for r in results][0] == ["a", "b"]
    assert results[0]["mean"]["accuracy"] == 1.0
    alone = {r["members"][0]: r["mean"]["accuracy"] for r in results if len(r["members"]) == 1}
    assert alone == {"a": 0.5, "b": 0.5}
    assert all(set(r) == {"members", "mean", "stdev"} for r in results)


def write_report(directory: Path, folds: int = 5, **config: object) -> Path:
    directory.mkdir(parents=True)
    values = {**TrainConfig(mode="crop").to_dict(), **config}
    (directory / "kfold.json").write_text(json.dumps({"folds": folds, "config": values}))
    return directory


def test_only_configurations_cross_validated_on_the_same_folds_are_combined(tmp_path: Path) -> None:
    first = write_report(tmp_path / "a")
    assert len(read_reports([first, write_report(tmp_path / "b", augment="flips+jitter+zoom")])) == 2
    with pytest.raises(EnsembleError, match="its seed differ"):
        read_reports([first, write_report(tmp_path / "c", seed=1)])
    with pytest.raises(EnsembleError, match="its input_size, folds differ"):
        read_reports([first, write_report(tmp_path / "d", folds=3, input_size=[96, 96])])
    with pytest.raises(EnsembleError, match="run `bloodcells kfold`"):
        read_reports([first, tmp_path / "missing"])
    with pytest.raises(EnsembleError, match="at least two"):
        read_reports([first])


def test_a_report_written_before_photos_existed_split_by_names(tmp_path: Path) -> None:
    old = write_report(tmp_path / "old")
    values = json.loads((old / "kfold.json").read_text())
    del values["config"]["photos"]
    (old / "kfold.json").write_text(json.dumps(values))
    with pytest.raises(EnsembleError, match="its photos differ"):
        read_reports([old, write_report(tmp_path / "new", photos="appearance")])
    assert len(read_reports([old, write_report(tmp_path / "names", photos="names")])) == 2


def test_folds_that_no_longer_hold_what_kfold_measured_are_refused(tmp_path: Path) -> None:
    directory = write_report(tmp_path / "a", folds=2)
    written = json.loads((directory / "kfold.json").read_text())
    sources = np.array(["p1", "p1", "p2", "p3"])
    held_out = [np.array([0, 1, 2]), np.array([3])]
    written["runs"] = [{"images": 3, "source_photos": 2}, {"images": 1, "source_photos": 1}]
    for index in range(2):
        (directory / f"fold-{index}-of-2").mkdir()
        (directory / f"fold-{index}-of-2" / "result.json").write_text(json.dumps({"config": written["config"]}))
    check_folds(directory, written, held_out, sources)
    with pytest.raises(EnsembleError, match="held out 3 images of 2 photos, but the data set now gives 2 of 2"):
        check_folds(directory, written, [np.array([0, 2]), np.array([1, 3])], sources)
    (directory / "fold-1-of-2" / "result.json").write_text(json.dumps({"config": {**written["config"], "seed": 9}}))
    with pytest.raises(EnsembleError, match="trained with other settings"):
        check_folds(directory, written, held_out, sources)


def test_each_member_alone_reads_as_its_own_cross_validation(synthetic_dataset: Path, tmp_path: Path) -> None:
    from training.kfold import cross_validate
    from training.kfold_ensemble import measure

    dirs = []
    for augment in ("none", "flips"):
        config = TrainConfig(model="dropout0.3", mode="color", epochs=1, start_from_epoch=0, seed=3, augment=augment)
        report = cross_validate(config, str(synthetic_dataset), tmp_path / augment, folds=3,
                                cache_dir=tmp_path / "cache", progress=False)
        dirs.append(Path(report["path"]).parent)
    result = measure(dirs, str(synthetic_dataset), "flips", cache_dir=tmp_path / "cache", progress=False)
    assert result["folds"] == 3 and len(result["ensembles"]) == 3
    for directory in dirs:
        alone = next(r for r in result["ensembles"] if r["members"] == [str(directory)])
        expected = json.loads((directory / "kfold.json").read_text())["tta"]["flips"]
        assert alone["mean"]["accuracy"] == pytest.approx(expected["mean"]["accuracy"])
        assert alone["mean"]["loss"] == pytest.approx(expected["mean"]["loss"], rel=1e-5)
