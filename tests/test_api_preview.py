"""POST /preprocess: the PNG previews show exactly what the preprocessing computes."""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app import preprocessing, rendering
from app.model import load_model_dir
from tests.api import upload
from tests.synthetic import encode, make_smear


@pytest.fixture(scope="module")
def models(model_dir: Path) -> dict:
    return load_model_dir(model_dir)


@pytest.fixture(scope="module")
def smear() -> np.ndarray:
    return make_smear(width=400, height=300, wbcs=((260, 120, 36),), seed=11).rgb


def preview(client: TestClient, rgb: np.ndarray, **params: str) -> np.ndarray:
    response = client.post("/preprocess", params=params, files=upload(encode(rgb, ".png"), "s.png", "image/png"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def test_extracted_at_model_size_is_exactly_the_color_models_input(client: TestClient, models: dict,
                                                                   smear: np.ndarray) -> None:
    model = models.get("color") or next(iter(models.values()))
    shown = preview(client, smear, view="extracted", size="model", mode=model.mode)
    expected = preprocessing.preprocess(smear, "color", model.input_size, model.params).model_image
    np.testing.assert_array_equal(shown, expected)


def test_mask_at_original_size_is_the_stain_mask(client: TestClient, models: dict, smear: np.ndarray) -> None:
    model = next(iter(models.values()))
    shown = preview(client, smear, view="mask", size="original", mode=model.mode)
    np.testing.assert_array_equal(shown, preprocessing.stain_mask(smear, model.params))


def test_overlay_draws_the_cell_box_and_the_crop_window(client: TestClient, models: dict, smear: np.ndarray) -> None:
    model = next(iter(models.values()))
    shown = preview(client, smear, view="overlay", size="original", mode=model.mode)
    assert shown.shape == smear.shape
    prepared = model.prepare(smear)
    box = prepared.wbc.box
    assert tuple(shown[box.y, box.x + box.width // 2]) == rendering.CELL_BOX
    window = rendering.square_window(model, prepared)
    assert tuple(shown[window.y + window.height // 2, window.x]) == rendering.CROP_BOX
    far_from_everything = (5, 5)
    assert tuple(shown[far_from_everything]) == tuple(smear[far_from_everything])


def test_crop_view_is_the_square_window_around_the_cell(client: TestClient, models: dict, smear: np.ndarray) -> None:
    model = models[client.get("/models").json()["default_mode"]]
    window = rendering.square_window(model, model.prepare(smear))
    assert window.width == window.height
    shown = preview(client, smear, view="crop", size="original")
    np.testing.assert_array_equal(shown, smear[window.y:window.y + window.height, window.x:window.x + window.width])
    side = max(model.input_size)
    assert preview(client, smear, view="crop", size="model").shape == (side, side, 3)


@pytest.mark.parametrize("view", rendering.VIEWS)
def test_every_view_comes_at_both_sizes(client: TestClient, models: dict, smear: np.ndarray, view: str) -> None:
    model = models[client.get("/models").json()["default_mode"]]
    at_model = preview(client, smear, view=view, size="model")
    at_original = preview(client, smear, view=view, size="original")
    if view == "crop":
        assert at_model.shape[0] == at_model.shape[1] == max(model.input_size)
    else:
        assert at_model.shape[:2] == model.input_size
        assert at_original.shape[:2] == smear.shape[:2]


def test_default_view_is_extracted_at_model_size(client: TestClient, smear: np.ndarray) -> None:
    np.testing.assert_array_equal(preview(client, smear), preview(client, smear, view="extracted", size="model"))


def test_a_large_upload_is_never_written_to_the_temporary_directory(client: TestClient, smear: np.ndarray,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Starlette wrote a file part over 1 MiB to /tmp: a container's small tmpfs filled, and forms failed."""
    padded = encode(smear, ".png") + b"\0" * (3 * 1024 * 1024)  # bytes after IEND are ignored by decoders
    monkeypatch.setattr(tempfile, "tempdir", "/nonexistent-tmp-for-this-test")
    response = client.post("/preprocess", files=upload(padded, "s.png", "image/png"))
    assert response.status_code == 200, response.text
