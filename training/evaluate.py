"""Evaluate an exported ONNX model on a data set split, exactly as the service would run it.

No TensorFlow: the model runs in onnxruntime and the images go through ``app.preprocessing``
with the parameters recorded in the model's metadata.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from app import preprocessing
from app.model import Classifier
from app.model_metadata import Evaluation, ModelMetadata
from training import data, fullfield, report
from training.config import TrainConfig
from training.console import stages
from training.photos import sources_of as photo_sources

# What the metadata keeps of an evaluation (``record``, ``bloodcells export``).
REPORT_KEYS = ("accuracy", "loss", "ece", "mean_confidence", "accuracy_ci95", "ci_method", "images", "source_photos",
               "worst_photos", "per_class", "confusion_matrix", "confusion_matrix_axes", "classes")


def evaluate_onnx(model_path: str | Path, data_dir: str | None, split: str = "TEST",
                  cache_dir: Path | None = None, limit_per_class: int | None = None,
                  progress: bool = True, photos: str = "appearance") -> dict:
    """``photos``: how the interval's resampled source photos are found (``data.load_split``)."""
    stage = stages(progress)  # a cold run reads thousands of files before a bar moves
    model = Classifier.load(model_path)
    stage(f"evaluate: {Path(model_path).name} on {split}: reading the images (preprocessed once, then cached)")
    arrays = data.load_split(data_dir, split, (model.mode,), model.input_size, model.params,
                             cache_dir=cache_dir, limit_per_class=limit_per_class, progress=progress,
                             photos=photos)[model.mode]
    stage(f"evaluate: classifying {len(arrays.images):,} images")
    probabilities = model.predict_batched(arrays.images)
    result = report.classification_report(probabilities, arrays.labels, arrays.sources)
    result["ci_method"] += f", photos found by {photos}"
    return {"model": str(model_path), "name": model.name, "mode": model.mode, "split": split,
            "sha256": model.sha256, "photos": photos, **result}


def evaluate_validation(model_path: str | Path, data_dir: str | None, config: TrainConfig,
                        cache_dir: Path | None = None, progress: bool = True) -> dict:
    """The model on the validation photos of the run that trained it (``config``'s split of TRAIN)."""
    model = Classifier.load(model_path)
    full = data.load_split(data_dir, "TRAIN", (model.mode,), model.input_size, model.params, cache_dir=cache_dir,
                           limit_per_class=config.limit_per_class, progress=progress,
                           photos=config.photos)[model.mode]
    _, held_out = data.split_by_source(full.labels, full.sources, config.val_fraction, config.seed)
    probabilities = model.predict_batched(full.images[held_out])
    result = report.classification_report(probabilities, full.labels[held_out], full.sources[held_out])
    return {"model": str(model_path), "name": model.name, "mode": model.mode, "split": "validation",
            "sha256": model.sha256, **result}


def evaluate_fullfield(model_path: str | Path, data_dir: str | None, split: str = "TEST", seed: int = 0,
                       limit_per_class: int | None = None, progress: bool = True, photos: str = "appearance",
                       cache_dir: Path | None = None) -> dict:
    """The same model on full-field frames: each image of the split at a random place in a 640x480 frame."""
    stage = stages(progress)  # a cold run reads thousands of files before a bar moves
    model = Classifier.load(model_path)
    stage(f"evaluate: {Path(model_path).name} on {split} full-field frames: decoding background patches")
    images_dir = data.resolve_data_dir(data_dir)
    samples = data.list_samples(images_dir, split)
    if limit_per_class:
        samples = data.subset(samples, limit_per_class)
    decode = lambda sample: preprocessing.decode_image(sample.path.read_bytes())  # noqa: E731
    # Background patches from a fixed sample of the same split (no TRAIN pixel enters the set).
    rng = np.random.default_rng(seed)
    sample = [decode(samples[i]) for i in rng.choice(len(samples), size=min(200, len(samples)), replace=False)]
    frames = fullfield.iter_fullfield(map(decode, samples), sample, model.params, seed=seed)
    inputs = np.stack([model.prepare(frame).model_image
                       for frame, _ in tqdm(frames, total=len(samples), desc=f"full-field frames ({model.mode})",
                                            disable=not progress, unit="img")])
    stage(f"evaluate: classifying {len(inputs):,} frames")
    probabilities = model.predict_batched(inputs)
    labels = np.array([s.label for s in samples])
    sources = np.array([s.source for s in samples]) if photos == "names" else photo_sources(
        samples, None if limit_per_class else data.fingerprint(images_dir), split, cache_dir or data.default_cache_dir())
    result = report.classification_report(probabilities, labels, sources)
    result["ci_method"] += f", photos found by {photos}"
    return {"model": str(model_path), "name": model.name, "mode": model.mode, "split": f"{split} full-field",
            "frame": list(fullfield.FRAME), "seed": seed, "sha256": model.sha256, **result}


def record(model_path: str | Path, result: dict) -> Path:
    """Write a TEST or full-field evaluation of the file into its metadata, as ``bloodcells export`` does."""
    meta_path = Path(model_path).with_suffix(".json")
    metadata = ModelMetadata.from_json(meta_path.read_text())
    if result["sha256"] != metadata.onnx_sha256:
        raise ValueError(f"{meta_path.name} describes another file than the one evaluated")
    if result["split"] == "TEST":
        update = {"test": Evaluation.model_validate({key: result[key] for key in REPORT_KEYS})}
    elif result["split"] == "TEST full-field":
        update = {"fullfield": Evaluation.model_validate({key: result[key] for key in (*REPORT_KEYS, "frame", "seed")})}
    else:
        raise ValueError(f"only TEST figures are recorded in the metadata, not {result['split']}")
    meta_path.write_text(metadata.model_copy(update=update).to_json())
    return meta_path
