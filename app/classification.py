"""Image bytes to predictions: decode, preprocess, one batched onnxruntime call, and what to report.

Shared by the HTTP routes and the offline ``bloodcells classify``; knows nothing of HTTP.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from app import metrics
from app.inference import Classifier
from app.labels import CLASSES
from app.preprocessing import ImageDecodeError, Preprocessed, decode_image
from app.schemas import Box, ModelRef, Prediction, Probabilities, WhiteCell

NO_CELL_WARNING = ("no stained white cell found: the image may not be a stained blood smear, or the cell is out "
                   "of focus or cut off; treat the answer as unreliable")
# Stretching an image by more than this factor in one direction is worth a word to the user.
ASPECT_TOLERANCE = 1.15
# Most images per onnxruntime call. onnxruntime keeps, per model and for the life of the process,
# the memory of the largest batch it has run: one call for a batch of 64 grew a worker by about
# 30 MB per model, calls of 8 by 6. It costs no speed (the time per image is flat from 8 images on)
# and changes no result: the probabilities are bit-identical to one call's.
INFER_CHUNK = 8


def prepare(model: Classifier, data: bytes, max_pixels: int) -> Preprocessed:
    """Decode straight from the uploaded bytes and preprocess for ``model``; raises ImageDecodeError."""
    start = time.perf_counter()
    prepared = model.prepare(decode_image(data, max_pixels))
    metrics.PREPROCESS.labels(mode=model.mode).observe(time.perf_counter() - start)
    return prepared


def infer(model: Classifier, prepared: Sequence[Preprocessed]) -> np.ndarray:
    """Probabilities (N x classes) for preprocessed images, in onnxruntime calls of at most INFER_CHUNK."""
    batch = prepared[0].model_image[None] if len(prepared) == 1 else np.stack([p.model_image for p in prepared])
    start = time.perf_counter()
    if len(batch) <= INFER_CHUNK:
        probabilities = model.predict(batch)
    else:
        probabilities = np.concatenate([model.predict(batch[i:i + INFER_CHUNK])
                                        for i in range(0, len(batch), INFER_CHUNK)])
    metrics.INFERENCE.labels(mode=model.mode).observe(time.perf_counter() - start)
    return probabilities


def model_ref(model: Classifier) -> ModelRef:
    return ModelRef(name=model.name, version=model.version, sha256=model.sha256)


def warnings_for(model: Classifier, prepared: Preprocessed) -> list[str]:
    wbc, mask = prepared.wbc, prepared.mask
    warnings = []
    if not wbc.found:
        warnings.append(NO_CELL_WARNING)
    elif len(wbc.cells) > 1:
        looked_at = "the largest one, boxed" if model.mode == "crop" else "the whole image; the largest one is boxed"
        warnings.append(f"{len(wbc.cells)} stained white cells found: the answer is for {looked_at}; "
                        "send one cell per image for one answer per cell")
    image_h, image_w = mask.shape[:2]
    input_h, input_w = model.input_size
    stretch = abs(math.log((image_w / image_h) / (input_w / input_h)))
    if model.mode != "crop" and stretch > math.log(ASPECT_TOLERANCE):
        warnings.append(f"the image is {image_w}x{image_h}, unlike the model's {input_w}x{input_h} aspect ratio: "
                        "it is stretched to fit, which may lower accuracy; send a 4:3 image")
    return warnings


def white_cell(prepared: Preprocessed) -> WhiteCell:
    wbc = prepared.wbc
    box = Box(x=wbc.box.x, y=wbc.box.y, width=wbc.box.width, height=wbc.box.height) if wbc.box else None
    return WhiteCell(found=wbc.found, box=box, area_fraction=wbc.area_fraction, count=len(wbc.cells))


def prediction(model: Classifier, prepared: Preprocessed, probabilities: np.ndarray) -> Prediction:
    values = [float(p) for p in probabilities]
    best = int(np.argmax(probabilities))
    metrics.PREDICTIONS.labels(mode=model.mode, label=CLASSES[best]).inc()
    return Prediction(label=CLASSES[best], confidence=values[best],
                      probabilities=Probabilities(**dict(zip(CLASSES, values))), mode=model.mode,
                      model=model_ref(model), wbc=white_cell(prepared), warnings=warnings_for(model, prepared))


def classify(model: Classifier, data: bytes, max_pixels: int) -> Prediction:
    prepared = prepare(model, data, max_pixels)
    return prediction(model, prepared, infer(model, [prepared])[0])


def classify_many(model: Classifier, payloads: Sequence[bytes], max_pixels: int) -> list[Prediction | ImageDecodeError]:
    """One result per payload, in order: a prediction, or the decode error of that payload alone.
    The good images go through batched onnxruntime calls (``infer``)."""
    outcomes: list[Preprocessed | ImageDecodeError] = []
    for data in payloads:
        try:
            outcomes.append(prepare(model, data, max_pixels))
        except ImageDecodeError as exc:
            outcomes.append(exc)
    good = [o for o in outcomes if isinstance(o, Preprocessed)]
    probabilities = iter(infer(model, good) if good else ())
    return [prediction(model, o, next(probabilities)) if isinstance(o, Preprocessed) else o for o in outcomes]
