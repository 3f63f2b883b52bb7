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
from training import data, fullfield, report
from training.config import TrainConfig
from training.console import stages


def evaluate_onnx(model_path: str | Path, data_dir: str | None, split: str = "TEST",
                  cache_dir: Path | None = None, limit_per_class: int | None = None,
                  progress: bool = True) -> dict:
    stage = stages(progress)  # a cold run reads thousands of files before a bar moves
    model = Classifier.load(model_path)
    stage(f"evaluate: {Path(model_path).name} on {split}: reading the images (preprocessed once, then cached)")
    arrays = data.load_split(data_dir, split, (model.mode,), model.input_size, model.params,
                             cache_dir=cache_dir, limit_per_class=limit_per_class, progress=progress)[model.mode]
    stage(f"evaluate: classifying {len(arrays.images):,} images")
    probabilities = model.predict_batched(arrays.images)
    result = report.classification_report(probabilities, arrays.labels, arrays.sources)
    return {"model": str(model_path), "name": model.name, "mode": model.mode, "split": split,
            "sha256": model.sha256, **result}


def evaluate_validation(model_path: str | Path, data_dir: str | None, config: TrainConfig,
                        cache_dir: Path | None = None, progress: bool = True) -> dict:
    """The model on the validation photos of the run that trained it (``config``'s split of TRAIN)."""
    model = Classifier.load(model_path)
    full = data.load_split(data_dir, "TRAIN", (model.mode,), model.input_size, model.params, cache_dir=cache_dir,
                           limit_per_class=config.limit_per_class, progress=progress)[model.mode]
    _, held_out = data.split_by_source(full.labels, full.sources, config.val_fraction, config.seed)
    probabilities = model.predict_batched(full.images[held_out])
    result = report.classification_report(probabilities, full.labels[held_out], full.sources[held_out])
    return {"model": str(model_path), "name": model.name, "mode": model.mode, "split": "validation",
            "sha256": model.sha256, **result}


def evaluate_fullfield(model_path: str | Path, data_dir: str | None, split: str = "TEST", seed: int = 0,
                       limit_per_class: int | None = None, progress: bool = True) -> dict:
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
    sources = np.array([s.source for s in samples])
    result = report.classification_report(probabilities, labels, sources)
    return {"model": str(model_path), "name": model.name, "mode": model.mode, "split": f"{split} full-field",
            "frame": list(fullfield.FRAME), "seed": seed, "sha256": model.sha256, **result}
