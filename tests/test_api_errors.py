"""Bad input never gets a 500: each gets its status, the one JSON error shape, and a count in /metrics."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app import classification
from app.config import Settings
from app.main import create_app
from tests.api import assert_error, metric_value, upload
from tests.synthetic import encode, make_smear, png_bytes


def jpeg() -> bytes:
    return encode(make_smear(seed=5).rgb, ".jpg")


def gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 100, 200)).save(buffer, format="GIF")
    return buffer.getvalue()


BAD_FILES = {
    "empty file": (b"", 400, "empty"),
    "text renamed .jpg": (b"Dear lab, please find the smear attached.\n" * 20, 400, "not_an_image"),
    "PDF renamed .jpg": (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n", 400,
                         "not_an_image"),
    "truncated JPEG": (jpeg()[:2000], 400, "corrupt"),
    "PNG of zero width": (png_bytes(0, 240), 400, "zero_size"),
    "decompression bomb": (png_bytes(60_000, 60_000), 413, "too_many_pixels"),
    "GIF": (gif(), 415, "unsupported_format"),
}


def rejected(client: TestClient, reason: str) -> float:
    return metric_value(client.get("/metrics").text, "bloodcells_rejected_inputs_total", reason=reason)


@pytest.mark.parametrize("path", ["/classify", "/preprocess"])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_gets_its_status_and_code_and_is_counted(client: TestClient, case: str, path: str) -> None:
    data, status, code = BAD_FILES[case]
    before = rejected(client, code)
    error = assert_error(client.post(path, files=upload(data)), status, code)
    assert rejected(client, code) == before + 1
    assert "send" in error["message"]  # it says what to do


@pytest.mark.parametrize("side, named", [(12_000, "12000x12000"), (200_000, "far too many pixels")])
def test_decompression_bomb_is_refused_from_its_header(client: TestClient, side: int, named: str) -> None:
    bomb = png_bytes(side, side)  # 144 M or 40 G pixels declared, a few kilobytes sent
    assert len(bomb) < 100_000
    start = time.perf_counter()
    error = assert_error(client.post("/classify", files=upload(bomb, "bomb.png", "image/png")), 413,
                         "too_many_pixels")
    assert time.perf_counter() - start < 2.0
    assert named in error["message"]


def test_upload_over_the_limit_is_413(model_dir: Path) -> None:
    image = jpeg()
    with TestClient(create_app(Settings(model_dir=model_dir, max_upload_bytes=len(image) + 1000))) as small:
        before = rejected(small, "upload_too_large")
        error = assert_error(small.post("/classify", files=upload(image + b"\xff" * 2000)), 413, "upload_too_large")
        assert f"{len(image) + 1000:,}" in error["message"]
        assert rejected(small, "upload_too_large") == before + 1
        assert small.post("/classify", files=upload(image)).status_code == 200


def call_asgi(app, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, dict, bytes, int]:
    """Drive the ASGI app with a body sent in chunks; returns status, headers, body and chunks consumed."""

    async def run() -> tuple[int, dict, bytes, int]:
        consumed = 0
        answer: dict = {"body": b""}

        async def receive() -> dict:
            nonlocal consumed
            if consumed < len(chunks):
                consumed += 1
                return {"type": "http.request", "body": chunks[consumed - 1], "more_body": consumed < len(chunks)}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                answer["status"], answer["headers"] = message["status"], dict(message["headers"])
            else:
                answer["body"] += message.get("body", b"")

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/classify", "raw_path": b"/classify", "query_string": b"",
                 "root_path": "", "headers": headers, "client": ("127.0.0.1", 5), "server": ("127.0.0.1", 80),
                 "state": {}}
        await app(scope, receive, send)
        return answer["status"], answer["headers"], answer["body"], consumed

    return asyncio.run(run())


def test_upload_limit_is_enforced_while_the_body_streams(model_dir: Path) -> None:
    app = create_app(Settings(model_dir=model_dir, max_upload_bytes=100_000))
    boundary = b"b0undary"
    head = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n\r\n'
    chunks = [head] + [b"\xff" * 16_384] * 60  # about 1 MB, no Content-Length: only counting can stop it
    headers = [(b"content-type", b"multipart/form-data; boundary=" + boundary)]
    status, response_headers, body, consumed = call_asgi(app, headers, chunks)
    assert status == 413 and json.loads(body)["error"]["code"] == "upload_too_large"
    assert consumed <= 100_000 // 16_384 + 2, f"read {consumed} of {len(chunks)} chunks before refusing"
    assert response_headers[b"connection"] == b"close"


def test_declared_content_length_over_the_limit_is_refused_before_reading(model_dir: Path) -> None:
    app = create_app(Settings(model_dir=model_dir, max_upload_bytes=100_000))
    headers = [(b"content-type", b"multipart/form-data; boundary=x"), (b"content-length", b"5000000")]
    status, _, body, consumed = call_asgi(app, headers, [b"x" * 1000] * 5)
    assert status == 413 and json.loads(body)["error"]["code"] == "upload_too_large"
    assert consumed == 0


def test_missing_field_is_422(client: TestClient) -> None:
    error = assert_error(client.post("/classify", files={"image": ("a.jpg", jpeg(), "image/jpeg")}), 422,
                         "missing_field")
    assert "'file'" in error["message"]
    assert_error(client.post("/classify/batch", files={"file": ("a.jpg", jpeg(), "image/jpeg")}), 422,
                 "missing_field")


def test_a_text_field_instead_of_a_file_is_422(client: TestClient) -> None:
    assert_error(client.post("/classify", data={"file": "cell.jpg"}, files={"other": ("x", b"x")}), 422,
                 "validation_error")


@pytest.mark.parametrize("mode", ["bogus", "orig"])
def test_unknown_or_unloaded_mode_is_422_naming_the_loaded_modes(client: TestClient, mode: str) -> None:
    loaded = [model["mode"] for model in client.get("/models").json()["models"]]
    for path in ("/classify", "/preprocess", "/classify/batch"):
        field = "files" if path.endswith("batch") else "file"
        response = client.post(path, params={"mode": mode}, files={field: ("a.jpg", jpeg(), "image/jpeg")})
        error = assert_error(response, 422, "unknown_mode")
        assert all(name in error["message"] for name in loaded) and repr(mode) in error["message"]


def test_a_mode_in_any_case_is_that_mode_and_an_empty_one_is_422(client: TestClient) -> None:
    for path in ("/classify", "/preprocess"):
        assert client.post(path, params={"mode": "Original"}, files={"file": ("a.jpg", jpeg(), "image/jpeg")}
                           ).status_code == 200
        error = assert_error(client.post(path, params={"mode": ""}, files={"file": ("a.jpg", jpeg(), "image/jpeg")}),
                             422, "unknown_mode")
        assert "empty" in error["message"]


def test_an_unknown_empty_or_mismatched_model_is_422_naming_the_loaded_models(client: TestClient) -> None:
    listing = client.get("/models").json()
    names = [model["name"] for model in listing["models"]]
    first = listing["models"][0]
    other_mode = next(mode for mode in listing["defaults"] if mode != first["mode"])
    for path in ("/classify", "/preprocess", "/classify/batch"):
        field = "files" if path.endswith("batch") else "file"
        for params, says in [({"model": "resnet50"}, names), ({"model": ""}, ["empty", *names]),
                             ({"model": first["name"], "mode": other_mode}, [f"serves mode '{first['mode']}'"])]:
            response = client.post(path, params=params, files={field: ("a.jpg", jpeg(), "image/jpeg")})
            error = assert_error(response, 422, "unknown_model")
            assert all(text in error["message"] for text in says), error["message"]
        ok = client.post(path, params={"model": first["name"], "mode": first["mode"]},
                         files={field: ("a.jpg", jpeg(), "image/jpeg")})
        assert ok.status_code == 200, ok.text


def test_two_file_fields_are_422_not_a_silent_pick(client: TestClient) -> None:
    for path in ("/classify", "/preprocess"):
        response = client.post(path, files=[("file", ("a.jpg", jpeg(), "image/jpeg")),
                                             ("file", ("b.jpg", jpeg(), "image/jpeg"))])
        assert_error(response, 422, "duplicate_field")


def test_a_known_mode_without_a_loaded_model_is_422(model_dir: Path, tmp_path: Path) -> None:
    for suffix in (".onnx", ".json"):
        shutil.copyfile(model_dir / f"original{suffix}", tmp_path / f"original{suffix}")
    with TestClient(create_app(Settings(model_dir=tmp_path))) as only_original:
        for path in ("/classify", "/preprocess"):
            response = only_original.post(path, params={"mode": "crop"}, files={"file": ("a.jpg", jpeg(), "image/jpeg")})
            error = assert_error(response, 422, "unknown_mode")
            assert "'crop'" in error["message"] and "original" in error["message"]


@pytest.mark.parametrize("content_type, body", [
    ("application/json", b'{"file": "aGVsbG8="}'),
    ("image/jpeg", jpeg()),
    ("application/x-www-form-urlencoded", b"file=cell.jpg"),
    (None, b"raw bytes"),
])
def test_a_body_that_is_not_multipart_is_415(client: TestClient, content_type: str | None, body: bytes) -> None:
    headers = {"content-type": content_type} if content_type else {}
    for path in ("/classify", "/classify/batch", "/preprocess"):
        assert_error(client.post(path, content=body, headers=headers), 415, "unsupported_media_type")


def test_malformed_multipart_is_400(client: TestClient) -> None:
    response = client.post("/classify", content=b"--x\r\nnot a part", headers={"content-type": "multipart/form-data"})
    assert_error(response, 400, "bad_request")


@pytest.mark.parametrize("query", [{"view": "xray"}, {"size": "huge"}])
def test_unknown_preview_option_is_422(client: TestClient, query: dict) -> None:
    error = assert_error(client.post("/preprocess", params=query, files=upload(jpeg())), 422, "validation_error")
    assert list(query)[0] in error["message"]


def test_unknown_path_and_wrong_method_use_the_error_shape(client: TestClient) -> None:
    assert_error(client.get("/nowhere"), 404, "not_found")
    assert_error(client.get("/classify"), 405, "method_not_allowed")


def test_an_internal_failure_is_a_500_in_the_same_shape(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(classification, "classify", broken)
    with TestClient(create_app(Settings(model_dir=model_dir)), raise_server_exceptions=False) as failing:
        response = failing.post("/classify", files=upload(jpeg()))
    assert_error(response, 500, "internal_error")
    assert "simulated" not in response.text  # no internals leak to the client
