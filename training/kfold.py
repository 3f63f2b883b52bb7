"""Cross-validation by source photo over TRAIN: the way to choose between configurations.

A single validation split of TRAIN read high and disagreed with TEST on several choices (the data set
holds ~36 augmented copies of each photo, and 15% of the photos is few). ``cross_validate`` trains one
configuration ``folds`` times, each fold's photos held out once (``data.kfold_by_source``), and reports
the mean and spread of the held-out figures; choose on the mean. TEST is never loaded here.

    bloodcells kfold --recipe crop --folds 5           # -> runs/kfold/sepnet/crop/kfold.json
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from training.config import TrainConfig
from training.console import say

KEYS = ("accuracy", "loss", "ece")


def cross_validate(config: TrainConfig, data_dir: str | None, out_dir: Path, folds: int,
                   cache_dir: Path | None = None, progress: bool = True) -> dict[str, Any]:
    from training.train import train  # TensorFlow

    runs = []
    for index in range(folds):
        say(f"{config.model} {config.mode}: fold {index + 1} of {folds}")
        result = train(config, data_dir, out_dir, cache_dir=cache_dir, progress=progress, fold=(index, folds))
        runs.append({"fold": index, "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                     "restarts": result.restarts, "train_seconds": round(result.train_seconds, 1),
                     "images": result.validation["images"], "source_photos": result.validation["source_photos"],
                     **{key: result.validation[key] for key in KEYS}})
    summary = summarize(runs)
    report = {"model": config.model, "mode": config.mode, "folds": folds, "config": config.to_dict(),
              "mean": summary["mean"], "stdev": summary["stdev"], "runs": runs}
    path = Path(out_dir) / config.model / config.mode / "kfold.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    report["path"] = str(path)
    return report


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
                 f"(sd {stdev['loss']:.3f}), ECE {mean['ece']:.3f}; written to {report['path']}")
    return "\n".join(lines)
