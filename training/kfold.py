"""Cross-validation by source photo over TRAIN: the way to choose between configurations.

A single validation split of TRAIN read high and disagreed with TEST on several choices (the data set
holds ~36 augmented copies of each photo, and 15% of the photos is few). ``cross_validate`` trains one
configuration ``folds`` times, each fold's photos held out once (``data.kfold_by_source``), and reports
the mean and spread of the held-out figures; choose on the mean. TEST is never loaded here.

Each fold's network is also measured with every test-time augmentation its input allows
(``training.tta``), on the same held-out photos: an export choice is chosen the same way. The held-out
predictions of all folds also fit each augmentation's temperature (``training.calibration``): the report
gives it, and the figures with it cross-fitted (each fold scaled by the temperature of the others).
``resume=True`` measures folds already trained under ``out_dir`` with the same settings instead of
training them again.

A fold's early stopping watches the same held-out photos it is measured on, and keeps the best epoch's
weights: its figure reads high, by 5 points on one crop fold over photos found by appearance (0.807
against 0.758 with all 40 epochs). View sets compared on one fold's network are compared fairly; to
compare trainings, give every one the same epochs (``--start-from-epoch`` at ``--epochs`` turns early
stopping off).

    bloodcells kfold --recipe crop --folds 5           # -> runs/kfold/sepnet/crop/kfold.json
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from training import calibration, data, report, tta
from training.config import TrainConfig
from training.console import say

KEYS = ("accuracy", "loss", "ece")


def fold_dir(config: TrainConfig, out_dir: Path, index: int, folds: int) -> Path:
    return Path(out_dir) / config.model / config.mode / f"fold-{index}-of-{folds}"


def _trained(run_dir: Path, config: TrainConfig) -> dict[str, Any] | None:
    """A finished fold's result.json, if it was trained with exactly these settings."""
    path = run_dir / "result.json"
    if not (path.is_file() and (run_dir / "model.keras").is_file()):
        return None
    result = json.loads(path.read_text())
    return result if result.get("config") == config.to_dict() else None


def cross_validate(config: TrainConfig, data_dir: str | None, out_dir: Path, folds: int,
                   cache_dir: Path | None = None, progress: bool = True, resume: bool = False) -> dict[str, Any]:
    import keras  # TensorFlow

    from training.train import predict, train

    full = data.load_split(data_dir, "TRAIN", (config.mode,), config.size, config.params, cache_dir=cache_dir,
                           limit_per_class=config.limit_per_class, progress=progress,
                           photos=config.photos)[config.mode]
    splits = data.kfold_by_source(full.labels, full.sources, folds, config.seed)
    runs = []
    held_out_predictions: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for index, (_, held_out) in enumerate(splits):
        run_dir = fold_dir(config, out_dir, index, folds)
        done = _trained(run_dir, config) if resume else None
        if done is None:
            say(f"{config.model} {config.mode}: fold {index + 1} of {folds}")
            result = train(config, data_dir, out_dir, cache_dir=cache_dir, progress=progress, fold=(index, folds))
            model, done = result.model, json.loads((run_dir / "result.json").read_text())
        else:
            say(f"{config.model} {config.mode}: fold {index + 1} of {folds} already trained in {run_dir}: measuring it")
            model = keras.models.load_model(run_dir / "model.keras")
        images, labels, sources = full.images[held_out], full.labels[held_out], full.sources[held_out]
        probabilities = {kind: tta.predict_numpy(lambda x: predict(model, x), images, kind)  # noqa: B023
                         for kind in tta.kinds_for(config.size)}
        measured = {kind: report.classification_report(p, labels, sources) for kind, p in probabilities.items()}
        for kind, p in probabilities.items():
            held_out_predictions.setdefault(kind, []).append((p, labels, sources))
        runs.append({"fold": index, "epochs_run": done["epochs_run"], "best_epoch": done["best_epoch"],
                     "restarts": done.get("restarts", 0), "train_seconds": done["train_seconds"],
                     "images": int(len(held_out)), "source_photos": int(len(set(sources))),
                     **{key: measured["none"][key] for key in KEYS},
                     "tta": {kind: {key: figures[key] for key in KEYS} for kind, figures in measured.items()}})
    summary = summarize(runs)
    report_ = {"model": config.model, "mode": config.mode, "folds": folds, "config": config.to_dict(),
               "mean": summary["mean"], "stdev": summary["stdev"],
               "tta": {kind: summarize([run["tta"][kind] for run in runs]) for kind in runs[0]["tta"]},
               "calibration": {kind: calibrate(folds_) for kind, folds_ in held_out_predictions.items()},
               "runs": runs}
    path = Path(out_dir) / config.model / config.mode / "kfold.json"
    path.write_text(json.dumps(report_, indent=2) + "\n")
    report_["path"] = str(path)
    return report_


def calibrate(folds: list[tuple[np.ndarray, np.ndarray, np.ndarray]], objective: str = "brier") -> dict[str, Any]:
    """The temperature fitted on every fold's held-out predictions, and the folds' figures cross-fitted; or why
    none fits (the folds' training is kept either way). The Brier fit is the one export uses; the log-loss fit
    is reported beside it (training/calibration.py says why it is not used)."""
    try:
        temperature = calibration.fit_temperature(np.concatenate([p for p, _, _ in folds]),
                                                  np.concatenate([y for _, y, _ in folds]), objective)
        fold_temperatures, scaled = calibration.cross_fitted([(p, y) for p, y, _ in folds], objective)
    except ValueError as exc:
        return {"temperature": None, "reason": str(exc)}
    figures = [report.classification_report(p, y, s) for p, (_, y, s) in zip(scaled, folds)]
    fitted = {"temperature": temperature, "fold_temperatures": fold_temperatures,
              **summarize([{key: f[key] for key in KEYS} for f in figures])}
    return fitted if objective != "brier" else {**fitted, "objective": "brier",
                                                "log_loss_fit": calibrate(folds, "log_loss")}


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation of each figure over the folds."""
    values = {key: [float(run[key]) for run in runs] for key in KEYS}
    return {"mean": {key: statistics.fmean(v) for key, v in values.items()},
            "stdev": {key: statistics.stdev(v) if len(v) > 1 else 0.0 for key, v in values.items()}}


def format_report(report: dict[str, Any]) -> str:
    mean, stdev = report["mean"], report["stdev"]
    lines = [f"{report['model']} / {report['mode']}, {report['folds']}-fold cross-validation by source photo over TRAIN:"]
    lines += [f"  fold {run['fold']}: accuracy {run['accuracy']:.3f}, loss {run['loss']:.3f} ({run['source_photos']} photos, "
              f"{run['images']} images)" for run in report["runs"]]
    lines.append(f"  mean accuracy {mean['accuracy']:.3f} (sd {stdev['accuracy']:.3f}), loss {mean['loss']:.3f} "
                 f"(sd {stdev['loss']:.3f}), ECE {mean['ece']:.3f}")
    for kind, figures in report.get("tta", {}).items():
        if kind != "none":
            lines.append(f"  with test-time augmentation {kind} ({len(tta.VIEWS[kind])} views): mean accuracy "
                         f"{figures['mean']['accuracy']:.3f} (sd {figures['stdev']['accuracy']:.3f}), "
                         f"loss {figures['mean']['loss']:.3f}, ECE {figures['mean']['ece']:.3f}")
    for kind, fitted in report.get("calibration", {}).items():
        if fitted["temperature"] is None:
            lines.append(f"  {kind}: no temperature fits: {fitted['reason']}")
            continue
        lines.append(f"  {kind}, calibrated (temperature {fitted['temperature']:.3f}; each fold scaled by the others' "
                     f"temperature): loss {fitted['mean']['loss']:.3f}, ECE {fitted['mean']['ece']:.3f}")
        other = fitted.get("log_loss_fit") or {}
        if other.get("temperature") is not None:
            lines.append(f"    (fitted by the log loss instead: temperature {other['temperature']:.3f}, loss "
                         f"{other['mean']['loss']:.3f}, ECE {other['mean']['ece']:.3f})")
    lines.append(f"  written to {report['path']}")
    return "\n".join(lines)
