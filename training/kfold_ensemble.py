"""Ensembles of cross-validated trainings, measured on the folds' held-out photos before any is exported.

Issue 11 lists "a small ensemble exported as one graph" among the ways to a better model. Whether averaging
the networks of several trainings beats the best of them alone is a question for the folds, like any other
choice: each configuration given was cross-validated by ``bloodcells kfold`` on the same folds, so fold I's
networks of every configuration never saw fold I's photos, and their mean is measured there.

    bloodcells kfold-ensemble runs/kfold-photos-full/sepnet/crop runs/kfold-rot90-full/sepnet/crop --tta flips

Each directory is what ``bloodcells kfold`` wrote for one configuration (``kfold.json`` and a ``model.keras``
per fold). Every combination of them is measured, one member alone included (its figures should read as its
``kfold.json``'s), with the same ``--tta`` views, and reported like ``bloodcells kfold``: the mean and sd over
folds. TEST is never loaded here.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from training import data, report, tta
from training.config import TrainConfig
from training.kfold import KEYS, summarize

# What makes two cross-validations' folds hold the same images (data.kfold_by_source, data.load_split).
SAME_FOLDS = ("mode", "input_size", "params", "photos", "seed", "limit_per_class")


class EnsembleError(ValueError):
    """Configurations that cannot be averaged fold by fold; the message says why."""


def read_reports(dirs: list[Path]) -> list[dict[str, Any]]:
    """Each directory's kfold.json, once every one is there and all share the first one's folds."""
    if len(dirs) < 2:
        raise EnsembleError("give at least two cross-validated configurations (directories holding kfold.json)")
    reports = []
    for directory in dirs:
        path = directory / "kfold.json"
        if not path.is_file():
            raise EnsembleError(f"{path} does not exist: run `bloodcells kfold` for that configuration first")
        reports.append(json.loads(path.read_text()))
    first = reports[0]
    for directory, other in zip(dirs[1:], reports[1:]):
        differ = [key for key in SAME_FOLDS if _recorded(other)[key] != _recorded(first)[key]]
        differ += ["folds"] if other["folds"] != first["folds"] else []
        if differ:
            raise EnsembleError(f"{directory} was not cross-validated on the folds of {dirs[0]}: its "
                                f"{', '.join(differ)} differ")
    return reports


def _recorded(report: dict[str, Any]) -> dict[str, Any]:
    """A kfold.json's configuration as it was run: one written before ``photos`` existed split by names."""
    return TrainConfig.recorded(report["config"]).to_dict()


def check_folds(directory: Path, written: dict[str, Any], held_out: list[np.ndarray], sources: np.ndarray) -> None:
    """The folds rebuilt here hold what ``bloodcells kfold`` measured (the data set, and how photos are found,
    may have changed since), and each fold's network was trained with the report's settings."""
    for index, (run, held) in enumerate(zip(written["runs"], held_out)):
        if (run["images"], run["source_photos"]) != (len(held), len(set(sources[held]))):
            raise EnsembleError(f"fold {index} of {directory} held out {run['images']} images of {run['source_photos']} "
                                f"photos, but the data set now gives {len(held)} of {len(set(sources[held]))}: "
                                "cross-validate that configuration again on this data")
        result = directory / f"fold-{index}-of-{written['folds']}" / "result.json"
        if not result.is_file() or json.loads(result.read_text()).get("config") != written["config"]:
            raise EnsembleError(f"{result} is missing or was trained with other settings than {directory / 'kfold.json'}: "
                                "run `bloodcells kfold` for that configuration again")


def combine(names: list[str], probabilities: list[list[np.ndarray]],
            held_out: list[tuple[np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    """Every combination of members, best mean accuracy first. ``probabilities[m][f]``: member m's held-out
    probabilities on fold f; ``held_out[f]``: fold f's labels and source photos."""
    results = []
    for size in range(1, len(names) + 1):
        for members in combinations(range(len(names)), size):
            folds = [report.classification_report(np.mean([probabilities[m][f] for m in members], axis=0), *held)
                     for f, held in enumerate(held_out)]
            results.append({"members": [names[m] for m in members],
                            **summarize([{key: figures[key] for key in KEYS} for figures in folds])})
    return sorted(results, key=lambda r: -r["mean"]["accuracy"])


def measure(dirs: list[Path], data_dir: str | None, kind: tta.Kind, cache_dir: Path | None = None,
            progress: bool = True) -> dict[str, Any]:
    import keras  # TensorFlow

    from training.train import predict

    reports = read_reports(dirs)
    config = TrainConfig.recorded(reports[0]["config"])
    tta.check(kind, config.size)
    folds = int(reports[0]["folds"])
    full = data.load_split(data_dir, "TRAIN", (config.mode,), config.size, config.params, cache_dir=cache_dir,
                           limit_per_class=config.limit_per_class, progress=progress, photos=config.photos)[config.mode]
    splits = data.kfold_by_source(full.labels, full.sources, folds, config.seed)
    for directory, written in zip(dirs, reports):
        check_folds(directory, written, [held for _, held in splits], full.sources)
    probabilities: list[list[np.ndarray]] = [[] for _ in dirs]
    held_out = []
    for index, (_, held) in enumerate(splits):
        images = full.images[held]
        held_out.append((full.labels[held], full.sources[held]))
        for member, directory in enumerate(dirs):
            model = keras.models.load_model(directory / f"fold-{index}-of-{folds}" / "model.keras")
            probabilities[member].append(tta.predict_numpy(lambda x: predict(model, x), images, kind))  # noqa: B023
    return {"mode": config.mode, "folds": folds, "tta": kind, "members": [str(d) for d in dirs],
            "configs": {str(d): r["config"] for d, r in zip(dirs, reports)},
            "ensembles": combine([str(d) for d in dirs], probabilities, held_out)}


def format_report(result: dict[str, Any]) -> str:
    lines = [f"{result['mode']} mode, {result['folds']} folds by source photo over TRAIN, test-time augmentation "
             f"{result['tta']}: held-out figures of the mean of each combination's networks, best first"]
    for ensemble in result["ensembles"]:
        mean, stdev = ensemble["mean"], ensemble["stdev"]
        members = " + ".join(ensemble["members"])
        lines.append(f"  {mean['accuracy']:.3f} (sd {stdev['accuracy']:.3f}), loss {mean['loss']:.3f}, "
                     f"ECE {mean['ece']:.3f}: {members}")
    return "\n".join(lines)
