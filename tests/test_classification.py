"""``app.classification``: a batch goes through onnxruntime in chunks, with one call's results."""

from __future__ import annotations

import numpy as np
import pytest

from app import classification
from app.model import Classifier
from app.preprocessing import ImageHeader
from app.schemas import Prediction
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
    assert [r.label if isinstance(r, Prediction) else r for r in results] == [model.classes[i] for i in one_call.argmax(axis=1)]


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
            # No traceback: it would run through the frame whose list holds the error, a cycle that keeps
            # the request's images alive until a full garbage collection.
            assert result.__traceback__ is None and result.__cause__ is None and result.__context__ is None
            continue
        alone = classification.classify(model, data, LIMITS, cell_model)
        assert isinstance(result, Prediction) and result.model_dump() == alone.model_dump()
    assert any(len(r.cells) == 2 for r in results if not isinstance(r, Exception))


def test_cells_beyond_the_limit_are_counted_not_classified() -> None:
    model = Classifier.load(REPO / "models" / "crop.onnx")
    wbcs = ((60, 60, 26), (180, 60, 24), (60, 180, 22), (200, 180, 20))
    data = encode(make_smear(width=320, height=240, wbcs=wbcs, n_rbc=0, seed=5).rgb, ".png")
    limited = classification.classify(model, data, classification.Limits(max_cells=2), model)
    assert limited.wbc.count == 4 and len(limited.cells) == 2 and limited.cells_omitted == 2
    every = classification.classify(model, data, classification.Limits(max_cells=16), model)
    assert len(every.cells) == 4 and every.cells_omitted == 0
    assert [c.box for c in every.cells[:2]] == [c.box for c in limited.cells]


def test_a_reduced_image_reports_boxes_in_the_uploaded_images_pixels() -> None:
    model = Classifier.load(REPO / "models" / "crop.onnx")
    smear = make_smear(width=1280, height=960, wbcs=((500, 400, 120),), n_rbc=0, seed=6)
    data = encode(smear.rgb, ".png")
    reduced = classification.classify(model, data, classification.Limits(max_working_pixels=400_000), model)
    whole = classification.classify(model, data, classification.Limits(), model)
    assert any("reduced by 2" in w for w in reduced.warnings) and not any("reduced" in w for w in whole.warnings)
    for field in ("x", "y", "width", "height"):
        assert abs(getattr(reduced.wbc.box, field) - getattr(whole.wbc.box, field)) <= 4, field


def test_boxes_of_a_reduced_image_stay_within_the_uploaded_image() -> None:
    # 1281 x 961 reduced by 2 is 641 x 481: its last pixel stands for one uploaded pixel, not two.
    model = Classifier.load(REPO / "models" / "crop.onnx")
    smear = make_smear(width=1281, height=961, wbcs=((1240, 920, 120),), n_rbc=0, seed=6)
    answer = classification.classify(model, encode(smear.rgb, ".png"), classification.Limits(max_working_pixels=400_000),
                                      model)
    assert any("reduced by 2" in w for w in answer.warnings)
    assert answer.wbc.box is not None
    for box in (answer.wbc.box, *(c.box for c in answer.cells), *(c.window for c in answer.cells)):
        assert box.x + box.width <= 1281 and box.y + box.height <= 961, box
    assert answer.wbc.box.x + answer.wbc.box.width == 1281  # the cell runs off the edge: clipped there


def test_boxes_of_a_reduced_photo_turned_by_its_exif_orientation_are_where_it_is_shown() -> None:
    import io

    from PIL import Image

    model = Classifier.load(REPO / "models" / "crop.onnx")
    shown = make_smear(width=1800, height=2400, wbcs=((1700, 2300, 120),), n_rbc=0, seed=6).rgb
    stored = io.BytesIO()  # orientation 6: stored turned a quarter anticlockwise, shown turned back
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(shown))).save(stored, "JPEG", quality=95, exif=exif)
    limits = classification.Limits(max_working_pixels=2_000_000)
    turned = classification.classify(model, stored.getvalue(), limits, model)
    plain = classification.classify(model, encode(shown, ".jpg"), limits, model)
    assert any("reduced by 2" in w for w in turned.warnings)
    assert turned.wbc.box is not None and plain.wbc.box is not None
    for field in ("x", "y", "width", "height"):
        assert abs(getattr(turned.wbc.box, field) - getattr(plain.wbc.box, field)) <= 4, (turned.wbc.box, plain.wbc.box)
    assert turned.warnings == plain.warnings


def test_a_request_over_its_pixel_budget_is_refused_before_decoding() -> None:
    model = Classifier.load(REPO / "models" / "crop.onnx")
    image = encode(make_smear(seed=7).rgb, ".png")  # 76,800 pixels
    limits = classification.Limits(max_request_pixels=3 * 76_800)
    assert len(classification.classify_many(model, [image] * 3, limits)) == 3
    with pytest.raises(classification.ImageDecodeError) as caught:
        classification.classify_many(model, [image] * 4, limits)
    assert caught.value.reason == "request_too_many_pixels"
    # A file that is no image counts for nothing against the budget: it gets its own error.
    outcomes = classification.classify_many(model, [image] * 3 + [b"not an image"], limits)
    assert isinstance(outcomes[-1], classification.ImageDecodeError)


def test_a_header_read_beforehand_gives_the_same_answer_and_the_same_refusals() -> None:
    model = Classifier.load(REPO / "models" / "crop.onnx")
    data = encode(make_smear(seed=3).rgb, ".jpg")
    header = classification.header_of(data, LIMITS)
    assert header == ("JPEG", 320, 240)
    assert classification.classify(model, data, LIMITS, model, header).model_dump() == \
        classification.classify(model, data, LIMITS, model).model_dump()
    # The header handed on is the one used, not read again: a wrong one shows in the upload's size.
    assert classification.prepare(model, data, LIMITS, ImageHeader("JPEG", 1, 1)).uploaded_size == (1, 1)
    # Read against the request's own budget, as prepare() checks it: an image over it has no header to hand on.
    tight = classification.Limits(max_image_pixels=10_000_000, max_request_pixels=320 * 240 - 1)
    assert classification.header_of(data, tight) is None
    with pytest.raises(classification.ImageDecodeError) as caught:
        classification.classify(model, data, tight, model, classification.header_of(data, tight))
    assert caught.value.reason == "too_many_pixels"
    assert classification.header_of(b"not an image", LIMITS) is None
