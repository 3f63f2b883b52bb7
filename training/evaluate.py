"""Evaluate an exported ONNX model on a data set split, exactly as the service would run it.

No TensorFlow: the model runs in onnxruntime and the images go through ``app.preprocessing``
with the parameters recorded in the model's metadata.
"""

from __future__ import annotations

from pathlib import Path

from app.inference import Classifier
from training import data, report


def evaluate_onnx(model_path: str | Path, data_dir: str | None, split: str = "TEST",
                  cache_dir: Path | None = None, limit_per_class: int | None = None,
                  progress: bool = True) -> dict:
    model = Classifier.load(model_path)
    arrays = data.load_split(data_dir, split, (model.mode,), model.input_size, model.params,
                             cache_dir=cache_dir, limit_per_class=limit_per_class, progress=progress)[model.mode]
    probabilities = model.predict_batched(arrays.images)
    result = report.classification_report(probabilities, arrays.labels, arrays.sources)
    return {"model": str(model_path), "name": model.name, "mode": model.mode, "split": split,
            "sha256": model.sha256, **result}
