"""POST /classify and /classify/batch with the real models, on real TEST images and synthetic smears.

The skew tests compare the API with the training pipeline's Keras models on the same files: the
service's answers are the trained model's answers, not those of a slightly different preprocessing.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.labels import CLASSES
from app.main import create_app
from app.model import load_model_dir, sha256_file
from app.preprocessing import Mode, decode_image, preprocess, to_tensor
from tests.api import (
    all_model_metadata,
    assert_error,
    best_mode,
    metric_value,
    model_metadata,
    pipeline_probabilities,
    probabilities,
    smear_png,
    upload,
)
from tests.conftest import REPO
from tests.synthetic import encode, make_smear

KERAS_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def models(model_dir: Path) -> dict:
    return load_model_dir(model_dir)


def classify(client: TestClient, data: bytes, mode: str | None = None, model: str | None = None, **kwargs) -> dict:
    params = {key: value for key, value in (("mode", mode), ("model", model)) if value}
    response = client.post("/classify", params=params, files=upload(data, **kwargs))
    assert response.status_code == 200, response.text
    return response.json()


def test_answer_has_every_field_and_consistent_values(client: TestClient, test_images: dict[str, Path],
                                                      model_dir: Path) -> None:
    data = test_images["monocyte"].read_bytes()
    response = client.post("/classify", files=upload(data))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"label", "confidence", "probabilities", "mode", "model", "looks_like_smear", "smear_score", "wbc",
                         "cells", "cells_omitted", "warnings", "elapsed_ms"}
    assert body["looks_like_smear"] is True and 0.5 <= body["smear_score"] <= 1
    assert list(body["probabilities"]) == list(CLASSES)
    values = probabilities(body)
    assert values.sum() == pytest.approx(1.0, abs=1e-5)
    assert body["label"] == CLASSES[int(values.argmax())]
    assert body["confidence"] == pytest.approx(values.max())
    assert body["mode"] == best_mode(model_dir)
    assert body["model"]["sha256"] == sha256_file(model_dir / f"{body['mode']}.onnx")
    assert body["model"]["name"] and body["model"]["version"]
    assert body["elapsed_ms"] > 0
    assert response.headers["x-request-id"]
    wbc = body["wbc"]
    height, width = decode_image(data).shape[:2]
    if wbc["found"]:
        box = wbc["box"]
        assert 0 <= box["x"] < box["x"] + box["width"] <= width and 0 <= box["y"] < box["y"] + box["height"] <= height
        assert 0 < wbc["area_fraction"] < 1 and wbc["count"] >= 1


@pytest.mark.parametrize("name", CLASSES)
def test_each_loaded_model_answers_as_its_onnx_pipeline(client: TestClient, models: dict, test_images: dict[str, Path],
                                                        name: str) -> None:
    data = test_images[name].read_bytes()
    for model_name, model in models.items():
        body = classify(client, data, model=model_name)
        assert body["mode"] == model.mode and body["model"]["name"] == model_name
        np.testing.assert_allclose(probabilities(body), pipeline_probabilities(model, data), atol=1e-6)


def test_a_mode_answers_with_its_default_model_and_models_lists_every_model(client: TestClient, model_dir: Path,
                                                                            test_images: dict[str, Path]) -> None:
    listing = client.get("/models").json()
    assert sorted(m["name"] for m in listing["models"]) == sorted(all_model_metadata(model_dir))
    data = test_images["neutrophil"].read_bytes()
    for mode, meta in model_metadata(model_dir).items():
        assert listing["defaults"][mode] == meta["name"]
        assert classify(client, data, mode)["model"]["name"] == meta["name"]
    for info in listing["models"]:
        meta = all_model_metadata(model_dir)[info["name"]]
        assert (info["mode"], info["architecture"], info["parameters"]) == (meta["mode"], meta["architecture"],
                                                                          meta["parameters"])
        assert info["test_accuracy"] == meta["test"]["accuracy"]
        assert info["test_time_augmentation"] == meta["export"].get("test_time_augmentation", "none")
        assert info["temperature"] == meta["export"].get("temperature", 1.0)
        low, high = info["test_accuracy_ci95"]
        assert low <= info["test_accuracy"] <= high
        assert info["mode_default"] == (listing["defaults"][info["mode"]] == info["name"])
        assert info["default"] == (info["mode_default"] and info["mode"] == listing["default_mode"])


def keras_predict(model, meta: dict, tensor: np.ndarray) -> np.ndarray:
    """Keras with what the exported graph folds in: its metadata's test-time augmentation and temperature."""
    from training.export import reference

    return reference(lambda x: model.predict(x, verbose=0), tensor, meta["export"].get("test_time_augmentation", "none"),
                     meta["export"].get("temperature", 1.0))


# Every committed model of the modes whose Keras file the skew tests compare against.
KERAS_COMPARED = sorted(name for name, meta in all_model_metadata(REPO / "models").items()
                        if meta["mode"] in ("original", "color"))


@pytest.mark.training
@pytest.mark.parametrize("name", KERAS_COMPARED)
def test_no_training_serving_skew_against_the_keras_model(client: TestClient, model_dir: Path,
                                                          test_images: dict[str, Path], name: str) -> None:
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    keras_path = model_dir / f"{name}.keras"
    if not keras_path.is_file():
        pytest.skip(f"{keras_path} is absent: export writes it beside the .onnx")
    model = keras.models.load_model(keras_path)
    meta = json.loads((model_dir / f"{name}.json").read_text())
    mode: Mode = meta["mode"]
    input_size = tuple(meta["input"]["shape"][1:3])
    from app.preprocessing import PreprocessingParams

    params = PreprocessingParams.from_dict(meta["preprocessing"])
    for cell, path in test_images.items():
        data = path.read_bytes()
        image = preprocess(decode_image(data), mode, input_size, params).model_image
        expected = keras_predict(model, meta, to_tensor(image[None]))[0]
        body = classify(client, data, model=name)
        difference = np.abs(probabilities(body) - expected).max()
        assert difference <= KERAS_TOLERANCE, f"{cell}: API and Keras differ by {difference:.2e}"
        assert body["label"] == CLASSES[int(expected.argmax())]


@pytest.mark.training
@pytest.mark.parametrize("name", KERAS_COMPARED)
def test_api_agrees_with_keras_fed_by_the_training_data_loader(client: TestClient, model_dir: Path, data_dir: Path,
                                                               tmp_path: Path, name: str) -> None:
    """An independent path to the model input: training.data.load_split, as training and export use it."""
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    from training import data as training_data

    keras_path = model_dir / f"{name}.keras"
    if not keras_path.is_file():
        pytest.skip(f"{keras_path} is absent: export writes it beside the .onnx")
    model = keras.models.load_model(keras_path)
    meta = json.loads((model_dir / f"{name}.json").read_text())
    mode: Mode = meta["mode"]
    from app.preprocessing import PreprocessingParams

    arrays = training_data.load_split(data_dir, "TEST", (mode,), tuple(meta["input"]["shape"][1:3]),
                                      PreprocessingParams.from_dict(meta["preprocessing"]), cache_dir=tmp_path,
                                      limit_per_class=1, progress=False)[mode]
    assert sorted(set(arrays.labels.tolist())) == list(range(len(CLASSES)))
    expected = keras_predict(model, meta, to_tensor(arrays.images))
    images_dir = training_data.resolve_data_dir(data_dir)
    for relative, keras_probabilities in zip(arrays.paths, expected):
        body = classify(client, (images_dir / relative).read_bytes(), model=name)
        assert np.abs(probabilities(body) - keras_probabilities).max() <= KERAS_TOLERANCE, relative


def test_image_without_a_white_cell_is_classified_with_a_warning(client: TestClient) -> None:
    body = classify(client, smear_png(wbcs=(), seed=3), name="empty.png", content_type="image/png")
    assert body["wbc"] == {"found": False, "box": None, "area_fraction": 0.0, "count": 0}
    assert any("no stained white cell" in warning for warning in body["warnings"])


def test_several_cells_are_counted_and_warned_about(client: TestClient) -> None:
    body = classify(client, smear_png(wbcs=((240, 160, 34), (70, 70, 24)), seed=4), content_type="image/png")
    assert body["wbc"]["count"] == 2
    assert any("2 stained white cells" in warning for warning in body["warnings"])


def test_a_full_field_image_is_accepted_and_the_box_is_in_its_coordinates(client: TestClient) -> None:
    smear = make_smear(width=640, height=480, wbcs=((470, 330, 40),), n_rbc=40, seed=6)
    body = classify(client, encode(smear.rgb, ".jpg"))
    x, y, w, h = smear.wbc_boxes[0]
    box = body["wbc"]["box"]
    assert abs(box["x"] - x) <= 3 and abs(box["y"] - y) <= 3
    assert abs(box["width"] - w) <= 4 and abs(box["height"] - h) <= 4
    assert not body["warnings"]  # 4:3 like the models' inputs, one cell


def test_a_stretched_image_is_warned_about(client: TestClient) -> None:
    # Only the whole-image modes stretch the image to the model's aspect; crop cuts a square around the cell.
    body = classify(client, smear_png(width=480, height=160, wbcs=((240, 80, 30),), seed=2), content_type="image/png",
                    mode="original")
    assert any("stretched" in warning for warning in body["warnings"])


def test_grayscale_rgba_and_16_bit_png_are_handled_like_their_rgb_equivalent(client: TestClient) -> None:
    rgb = make_smear(wbcs=((150, 110, 32),), seed=8).rgb
    reference = probabilities(classify(client, encode(rgb, ".png")))

    opaque_rgba = cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), cv2.COLOR_BGR2BGRA)
    np.testing.assert_allclose(probabilities(classify(client, cv2.imencode(".png", opaque_rgba)[1].tobytes())),
                               reference, atol=1e-6)

    sixteen_bit = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257
    np.testing.assert_allclose(probabilities(classify(client, cv2.imencode(".png", sixteen_bit)[1].tobytes())),
                               reference, atol=1e-6)

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    as_rgb = encode(np.repeat(gray[..., None], 3, axis=2), ".png")
    np.testing.assert_allclose(probabilities(classify(client, cv2.imencode(".png", gray)[1].tobytes())),
                               probabilities(classify(client, as_rgb)), atol=1e-6)


def test_the_part_content_type_is_ignored_the_bytes_decide(client: TestClient, test_images: dict[str, Path]) -> None:
    data = test_images["eosinophil"].read_bytes()
    expected = probabilities(classify(client, data))
    for content_type in ("application/octet-stream", "text/plain", "image/png"):
        body = classify(client, data, name="cell.bin", content_type=content_type)
        np.testing.assert_allclose(probabilities(body), expected, atol=1e-6)


def test_batch_answers_in_order_with_one_error_entry_per_bad_file(client: TestClient, models: dict,
                                                                  test_images: dict[str, Path]) -> None:
    names = list(CLASSES)
    files = [("files", (f"{name}.jpeg", test_images[name].read_bytes(), "image/jpeg")) for name in names]
    files.insert(2, ("files", ("notes.jpg", b"these are my notes, not an image", "image/jpeg")))
    mode = "original"
    before = client.get("/metrics").text
    response = client.post("/classify/batch", params={"mode": mode}, files=files)
    after = client.get("/metrics").text
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == mode and body["elapsed_ms"] > 0
    results = body["results"]
    assert [item["index"] for item in results] == list(range(len(files)))
    assert [item["filename"] for item in results] == [f[1][0] for f in files]
    bad = results.pop(2)
    assert bad["result"] is None and bad["error"]["code"] == "not_an_image"
    assert bad["error"]["request_id"] == response.headers["x-request-id"]
    for name, item in zip(names, results):
        assert item["error"] is None
        single = classify(client, test_images[name].read_bytes(), mode)
        np.testing.assert_allclose(probabilities(item["result"]), probabilities(single), atol=1e-5)
        assert item["result"]["label"] == single["label"]
    # Four good images, one onnxruntime call; the bad file counted as a rejected input.
    calls = (metric_value(after, "bloodcells_inference_seconds_count", mode=mode)
             - metric_value(before, "bloodcells_inference_seconds_count", mode=mode))
    assert calls == 1
    assert (metric_value(after, "bloodcells_rejected_inputs_total", reason="not_an_image")
            - metric_value(before, "bloodcells_rejected_inputs_total", reason="not_an_image")) == 1


def test_batch_of_only_bad_files_is_answered_without_inference(client: TestClient) -> None:
    files = [("files", ("a.jpg", b"", "image/jpeg")), ("files", ("b.jpg", b"%PDF-1.4 nothing", "image/jpeg"))]
    response = client.post("/classify/batch", files=files)
    assert response.status_code == 200
    assert [item["error"]["code"] for item in response.json()["results"]] == ["empty", "not_an_image"]


def test_batch_over_the_file_limit_is_refused(model_dir: Path) -> None:
    data = smear_png(seed=1)
    with TestClient(create_app(Settings(model_dir=model_dir, max_batch_files=2))) as small:
        files = [("files", (f"{i}.png", data, "image/png")) for i in range(3)]
        error = assert_error(small.post("/classify/batch", files=files), 422, "too_many_files")
        assert "limit of 2" in error["message"]
        assert small.post("/classify/batch", files=files[:2]).status_code == 200


def test_every_white_cell_of_a_full_field_image_is_classified_largest_first(client: TestClient) -> None:
    cells = ((150, 120, 26), (470, 340, 38))  # x, y, radius in a 640x480 frame
    data = encode(make_smear(640, 480, wbcs=cells, n_rbc=40, seed=21).rgb)
    for mode in [m["mode"] for m in client.get("/models").json()["models"]]:
        body = classify(client, data, mode=mode)
        assert body["wbc"]["count"] == 2 and len(body["cells"]) == 2
        first, second = body["cells"]
        assert abs(first["box"]["x"] - (470 - 38)) <= 3 and abs(second["box"]["x"] - (150 - 26)) <= 3
        assert first["area_fraction"] > second["area_fraction"]
        for cell in body["cells"]:
            assert abs(sum(cell["probabilities"].values()) - 1.0) < 1e-5
            assert cell["label"] == max(cell["probabilities"], key=cell["probabilities"].get)
            window, box = cell["window"], cell["box"]
            assert window["x"] <= box["x"] and box["x"] + box["width"] <= window["x"] + window["width"]
        assert any("cells" in warning for warning in body["warnings"])
        if mode == "crop":  # the top-level answer is the largest cell's
            assert body["probabilities"] == first["probabilities"]


def test_each_cell_answer_is_the_crop_model_on_that_cell_alone(client: TestClient) -> None:
    two = make_smear(640, 480, wbcs=((150, 120, 26), (470, 340, 38)), n_rbc=40, seed=22).rgb
    together = classify(client, encode(two), mode="original")["cells"]
    for cell in together:
        w = cell["window"]
        alone = encode(np.ascontiguousarray(two[w["y"]:w["y"] + w["height"], w["x"]:w["x"] + w["width"]]))
        body = classify(client, alone, mode="crop")
        for name, value in cell["probabilities"].items():
            assert abs(body["probabilities"][name] - value) < 1e-4
