"""``app.classification``: a batch goes through onnxruntime in chunks, with one call's results."""

from __future__ import annotations

import numpy as np
import pytest

from app import classification
from app.inference import Classifier
from tests.conftest import REPO
from tests.synthetic import encode, make_smear

MODELS = sorted((REPO / "models").glob("*.onnx"))
LIMITS = classification.Limits(max_image_pixels=10_000_000)


@pytest.mark.parametrize("path", MODELS, ids=lambda path: path.stem)
def test_a_batch_larger_than_a_chunk_gives_one_calls_probabilities(path) -> None:
    model = Classifier.load(path)
    count = 2 * classification.INFER_CHUNK + 3  # two full chunks and a partial one
    payloads = [encode(make_smear(wbcs=((150 + seed, 120, 22 + seed % 12),), seed=seed).rgb, ".png")
                for seed in range(count)]
    prepared = [classification.prepare(model, data, LIMITS) for data in payloads]
    chunked = classification.infer(model, prepared)
    one_call = model.predict(np.stack([p.model_image for p in prepared]))
    assert chunked.shape == one_call.shape == (count, len(model.classes))
    assert np.array_equal(chunked, one_call)  # bit-identical, not merely close
    results = classification.classify_many(model, payloads, LIMITS)
    assert [r.label for r in results] == [model.classes[i] for i in one_call.argmax(axis=1)]


def test_a_batch_answers_each_image_as_alone_with_its_errors_in_place() -> None:
    model = Classifier.load(REPO / "models" / "original.onnx")
    cell_model = Classifier.load(REPO / "models" / "crop.onnx")
    two_cells = ((100, 120, 30), (230, 110, 24))
    payloads = [encode(make_smear(wbcs=two_cells if seed % 3 == 0 else ((160, 120, 25 + seed),), seed=seed).rgb,
                       ".jpg") for seed in range(2 * classification.INFER_CHUNK + 1)]
    payloads[classification.INFER_CHUNK] = b"not an image"  # first in the second chunk
    results = classification.classify_many(model, payloads, LIMITS, cell_model)
    assert len(results) == len(payloads)
    for index, (data, result) in enumerate(zip(payloads, results)):
        if index == classification.INFER_CHUNK:
            assert isinstance(result, classification.ImageDecodeError)
            continue
        alone = classification.classify(model, data, LIMITS, cell_model)
        assert result.model_dump() == alone.model_dump()
    assert any(len(r.cells) == 2 for r in results if not isinstance(r, Exception))
