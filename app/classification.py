"""Image bytes to predictions: decode, preprocess, one batched onnxruntime call, and what to report.

Shared by the HTTP routes and the offline ``bloodcells classify``; knows nothing of HTTP.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app import metrics, preprocessing, smear
from app.config import Settings
from app.labels import CLASSES
from app.model import Classifier
from app.preprocessing import ImageDecodeError, ImageHeader, Preprocessed
from app.schemas import BatchItem, Box, Cell, ErrorDetail, ModelRef, Prediction, Probabilities, WhiteCell

NO_CELL_WARNING = ("no stained white cell found: the image may not be a stained blood smear, or the cell is out "
                   "of focus or cut off; treat the answer as unreliable")
# Stretching an image by more than this factor in one direction is worth a word to the user.
ASPECT_TOLERANCE = 1.15
# Most images per onnxruntime call, and per step of a batch: it bounds the memory one call's
# activations and decoded images take (with onnxruntime's arena, since turned off in app/model.py,
# a call for 64 images grew a worker by ~30 MB per model for good). It costs no speed (the time per
# image is flat from 8 images on) and changes no result: the probabilities are bit-identical.
INFER_CHUNK = 8


@dataclass(frozen=True)
class Limits:
    """The work one request may cause: the README's "Limits" table, from the settings of the same names."""

    max_image_pixels: int = 25_000_000
    max_request_pixels: int = 100_000_000
    max_working_pixels: int = 4_000_000
    max_cells: int = 16

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(**{field.name: getattr(settings, field.name) for field in dataclasses.fields(cls)})

    @property
    def per_image_pixels(self) -> int:
        return min(self.max_image_pixels, self.max_request_pixels)


def header_of(data: bytes, limits: Limits) -> ImageHeader | None:
    """The upload's header as ``prepare`` checks it, for a caller that needs the image's size before the work
    (where to run it) to hand on to ``classify``; None where it is refused: ``classify`` raises the error."""
    try:
        return preprocessing.read_header(data, limits.per_image_pixels)
    except ImageDecodeError:
        return None


def prepare(model: Classifier, data: bytes, limits: Limits, header: ImageHeader | None = None) -> Preprocessed:
    """Decode straight from the uploaded bytes and preprocess for ``model``; raises ImageDecodeError.
    ``header``: ``header_of(data, limits)``, where the caller has read it."""
    start = time.perf_counter()
    decoded = preprocessing.decode(data, limits.per_image_pixels, limits.max_working_pixels, header)
    prepared = dataclasses.replace(model.prepare(decoded.rgb), scale=decoded.reduction,
                                   uploaded_size=(decoded.width, decoded.height))
    metrics.labelled(metrics.PREPROCESS, model.mode).observe(time.perf_counter() - start)
    return prepared


def check_request_pixels(payloads: Sequence[bytes], limits: Limits) -> None:
    """Refuses, from the headers alone, a request whose images declare more than max_request_pixels in
    all; a payload that is no image counts for nothing here (it gets its own error)."""
    total = 0
    for data in payloads:
        try:
            _, width, height = preprocessing.read_header(data, limits.max_image_pixels)
        except ImageDecodeError:
            continue
        total += width * height
    if total > limits.max_request_pixels:
        raise ImageDecodeError("request_too_many_pixels", f"the images of this request declare {total:,} pixels in "
                               f"all, over the limit of {limits.max_request_pixels:,} per request; send fewer or "
                               "smaller images per request")


def infer(model: Classifier, prepared: Sequence[Preprocessed]) -> np.ndarray:
    """Probabilities (N x classes) for preprocessed images, in onnxruntime calls of at most INFER_CHUNK."""
    batch = prepared[0].model_image[None] if len(prepared) == 1 else np.stack([p.model_image for p in prepared])
    start = time.perf_counter()
    probabilities = model.predict_batched(batch, INFER_CHUNK)
    metrics.labelled(metrics.INFERENCE, model.mode).observe(time.perf_counter() - start)
    return probabilities


def model_ref(model: Classifier) -> ModelRef:
    return ModelRef(name=model.name, version=model.version, sha256=model.sha256)


def warnings_for(model: Classifier, prepared: Preprocessed, cells_classified: bool) -> list[str]:
    wbc, mask = prepared.wbc, prepared.mask
    warnings = []
    if prepared.scale > 1:
        warnings.append(f"the image is large: it was analysed reduced by {prepared.scale} each way "
                        f"({mask.shape[1]}x{mask.shape[0]}); boxes are in the uploaded image's pixels")
    if not wbc.found:
        warnings.append(NO_CELL_WARNING)
    elif len(wbc.cells) > 1:
        looked_at = "the largest one, boxed" if model.mode == "crop" else "the whole image; the largest one is boxed"
        each = ("`cells` classifies each one" if cells_classified
                else "send one cell per image for one answer per cell")
        warnings.append(f"{len(wbc.cells)} stained white cells found: the answer is for {looked_at}; {each}")
    image_w, image_h = prepared.uploaded_size or (mask.shape[1], mask.shape[0])
    input_h, input_w = model.input_size
    stretch = abs(math.log((image_w / image_h) / (input_w / input_h)))
    if model.mode != "crop" and stretch > math.log(ASPECT_TOLERANCE):
        warnings.append(f"the image is {image_w}x{image_h}, unlike the model's {input_w}x{input_h} aspect ratio: "
                        "it is stretched to fit, which may lower accuracy; send a 4:3 image")
    return warnings


def white_cell(prepared: Preprocessed) -> WhiteCell:
    wbc = prepared.wbc
    box = _box(wbc.box, prepared) if wbc.box else None
    return WhiteCell(found=wbc.found, box=box, area_fraction=wbc.area_fraction, count=len(wbc.cells))


def cells_of(model: Classifier, cell_model: Classifier | None, prepared: Sequence[Preprocessed],
             probabilities: np.ndarray, max_cells: int) -> list[list[Cell]]:
    """The ``max_cells`` largest white cells of every image, classified by the crop model from their
    own windows, in one batched call. Where the request's model is the crop model, its answer for the
    largest cell is reused rather than computed twice."""
    if cell_model is None or max_cells == 0:
        return [[] for _ in prepared]
    reuse = cell_model is model
    crops = [cell_model.cell_crops(p, start=1 if reuse else 0, stop=max_cells) for p in prepared]
    flat = [crop for image_crops in crops for crop in image_crops]
    cell_probabilities = iter(cell_model.predict_batched(np.stack([c.model_image for c in flat]), INFER_CHUNK)
                              if flat else ())
    results = []
    for p, image_probabilities, image_crops in zip(prepared, probabilities, crops):
        cells = []
        if reuse and p.wbc.found:
            box, fraction = p.wbc.cells[0]
            cells.append(_cell(box, fraction, p.window, image_probabilities, p))
        cells += [_cell(c.box, c.area_fraction, c.window, next(cell_probabilities), p) for c in image_crops]
        results.append(cells)
    return results


def _box(box: preprocessing.PixelBox, prepared: Preprocessed) -> Box:
    """In the uploaded image's pixels; clipped to it, since a reduced image's last pixel may stand for fewer
    than ``scale`` of them."""
    scale = prepared.scale
    if scale == 1 or prepared.uploaded_size is None:
        return Box(x=box.x, y=box.y, width=box.width, height=box.height)
    width, height = prepared.uploaded_size
    x, y = min(box.x * scale, width), min(box.y * scale, height)
    return Box(x=x, y=y, width=min((box.x + box.width) * scale, width) - x,
               height=min((box.y + box.height) * scale, height) - y)


def _cell(box: preprocessing.PixelBox, fraction: float, window: preprocessing.PixelBox, probabilities: np.ndarray,
          prepared: Preprocessed) -> Cell:
    values = [float(p) for p in probabilities]
    best = int(np.argmax(probabilities))
    return Cell(box=_box(box, prepared), area_fraction=fraction, window=_box(window, prepared), label=CLASSES[best],
                confidence=values[best], probabilities=Probabilities(**dict(zip(CLASSES, values))))


def prediction(model: Classifier, prepared: Preprocessed, probabilities: np.ndarray, cells: list[Cell]) -> Prediction:
    values = [float(p) for p in probabilities]
    best = int(np.argmax(probabilities))
    metrics.labelled(metrics.PREDICTIONS, model.mode, CLASSES[best]).inc()
    evidence = smear.check(prepared)
    not_a_smear = [] if evidence.looks_like_smear else [evidence.warning() or ""]
    return Prediction(label=CLASSES[best], confidence=values[best],
                      probabilities=Probabilities(**dict(zip(CLASSES, values))), mode=model.mode,
                      model=model_ref(model), looks_like_smear=evidence.looks_like_smear, smear_score=evidence.score,
                      wbc=white_cell(prepared), cells=cells,
                      cells_omitted=max(0, len(prepared.wbc.cells) - len(cells)) if cells else 0,
                      warnings=not_a_smear + warnings_for(model, prepared, cells_classified=bool(cells)))


def classify(model: Classifier, data: bytes, limits: Limits, cell_model: Classifier | None = None,
             header: ImageHeader | None = None) -> Prediction:
    prepared = prepare(model, data, limits, header)
    probabilities = infer(model, [prepared])
    cells = cells_of(model, cell_model, [prepared], probabilities, limits.max_cells)[0]
    return prediction(model, prepared, probabilities[0], cells)


def classify_many(model: Classifier, payloads: Sequence[bytes], limits: Limits,
                  cell_model: Classifier | None = None) -> list[Prediction | ImageDecodeError]:
    """One result per payload, in order: a prediction, or the decode error of that payload alone.
    Raises ImageDecodeError ``request_too_many_pixels`` before decoding anything when the images
    declare more than the request's budget. INFER_CHUNK images at a time, so that a large batch
    holds a few decoded images, not all of them (a batch of 32 held at once grew a worker by
    ~30 MB); the results are the same."""
    check_request_pixels(payloads, limits)
    results: list[Prediction | ImageDecodeError] = []
    for start in range(0, len(payloads), INFER_CHUNK):
        results += _classify_chunk(model, payloads[start:start + INFER_CHUNK], limits, cell_model)
    return results


def _classify_chunk(model: Classifier, payloads: Sequence[bytes], limits: Limits,
                    cell_model: Classifier | None) -> list[Prediction | ImageDecodeError]:
    outcomes: list[Preprocessed | ImageDecodeError] = []
    for data in payloads:
        try:
            outcomes.append(prepare(model, data, limits))
        except ImageDecodeError as exc:
            outcomes.append(_detached(exc))
    good = [o for o in outcomes if isinstance(o, Preprocessed)]
    if not good:
        return [o for o in outcomes if isinstance(o, ImageDecodeError)]
    probabilities = infer(model, good)
    cells = cells_of(model, cell_model, good, probabilities, limits.max_cells)
    answers = iter([prediction(model, p, probs, image_cells) for p, probs, image_cells in zip(good, probabilities, cells)])
    return [next(answers) if isinstance(o, Preprocessed) else o for o in outcomes]


def _detached(error: ImageDecodeError) -> ImageDecodeError:
    """The error without its traceback or the exceptions it was raised from: their tracebacks run through
    the frame whose list of outcomes holds it, a cycle that kept the request's images alive until a full
    garbage collection. Only its reason and message are answered."""
    error.__traceback__ = error.__cause__ = error.__context__ = None
    return error


def batch_items(filenames: Sequence[str | None], outcomes: Sequence[Prediction | ImageDecodeError],
                request_id: str | None) -> list[BatchItem]:
    """A batch's answer, one item per file in upload order: its prediction, or the error of that file alone
    (counted in the rejections' metric like any refused image)."""
    items = []
    for index, (filename, outcome) in enumerate(zip(filenames, outcomes)):
        if isinstance(outcome, ImageDecodeError):
            metrics.REJECTED.labels(reason=outcome.reason).inc()
            error = ErrorDetail(code=outcome.reason, message=outcome.message, request_id=request_id)
            items.append(BatchItem(index=index, filename=filename, error=error))
        else:
            items.append(BatchItem(index=index, filename=filename, result=outcome))
    return items
