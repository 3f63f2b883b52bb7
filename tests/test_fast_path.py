"""POST /classify's fast path: the route's answers for the usual request, the route itself for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app import fast_path
from tests.api import assert_error, upload
from tests.synthetic import encode, make_smear

BOUNDARY = b"xyz"


def form(*parts: bytes) -> bytes:
    return b"".join(b"--" + BOUNDARY + b"\r\n" + part for part in parts) + b"--" + BOUNDARY + b"--\r\n"


def file_part(name: bytes = b"file", filename: bytes | None = b"cell.jpg", data: bytes = b"DATA") -> bytes:
    disposition = b'form-data; name="' + name + b'"' + (b'; filename="' + filename + b'"' if filename is not None else b"")
    return b"Content-Disposition: " + disposition + b"\r\nContent-Type: image/jpeg\r\n\r\n" + data + b"\r\n"


def test_only_a_form_of_one_file_part_named_file_is_taken() -> None:
    assert fast_path._single_file(form(file_part(data=b"\x00\r\n--x--\xff")), BOUNDARY) == b"\x00\r\n--x--\xff"
    assert fast_path._single_file(form(file_part(data=b"")), BOUNDARY) == b""
    for other in (form(file_part(), file_part()), form(file_part(name=b"files")), form(file_part(filename=None)),
                  form(), b"", b"garbage", form(file_part())[:-10]):
        assert fast_path._single_file(other, BOUNDARY) is None, other


@pytest.mark.parametrize("query, expected", [
    (b"", {}), (b"mode=crop", {"mode": "crop"}), (b"model=original&mode=original", {"model": "original", "mode": "original"}),
    (b"mode=", None), (b"mode=crop&mode=color", None), (b"debug=1", None), (b"model", None),
])
def test_only_mode_and_model_once_each_and_not_empty_are_taken(query: bytes, expected: dict | None) -> None:
    assert fast_path._query({"query_string": query}) == expected


def test_the_fast_answer_is_the_routes(client: TestClient, test_images: dict[str, Path],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[bool] = []
    parse = fast_path._single_file

    def spy(body: bytes, boundary: bytes) -> bytes | None:
        taken.append(True)
        return parse(body, boundary)

    monkeypatch.setattr(fast_path, "_single_file", spy)
    for name, path in test_images.items():
        data = path.read_bytes()
        for params in ({}, {"mode": "original"}, {"model": "dropout0.3-color"}):
            taken.clear()
            fast = client.post("/classify", params=params, files=upload(data))
            assert taken, "the fast path did not parse the form"
            # An unknown query parameter is ignored by the route and sends the request to it.
            routed = client.post("/classify", params={**params, "via": "route"}, files=upload(data))
            assert fast.status_code == routed.status_code == 200, (fast.text, routed.text)
            assert fast.headers["content-type"] == routed.headers["content-type"]
            assert fast.headers["x-request-id"] and fast.headers["x-content-type-options"] == "nosniff"
            mine, theirs = fast.json(), routed.json()
            mine.pop("elapsed_ms"), theirs.pop("elapsed_ms")
            assert mine == theirs, name


def test_the_routes_errors_still_come_from_the_route(client: TestClient) -> None:
    image = encode(make_smear(seed=1).rgb, ".jpg")
    assert_error(client.post("/classify", files=upload(b"not an image")), 400, "not_an_image")
    assert_error(client.post("/classify", params={"model": "resnet50"}, files=upload(image)), 422, "unknown_model")
    assert_error(client.post("/classify", params={"mode": ""}, files=upload(image)), 422, "unknown_mode")
    assert_error(client.post("/classify", files=[("file", ("a.jpg", image, "image/jpeg"))] * 2), 422, "duplicate_field")
    assert_error(client.post("/classify", files={"other": ("a.jpg", image, "image/jpeg")}), 422, "missing_field")
    assert_error(client.post("/classify", content=image, headers={"content-type": "image/jpeg"}), 415,
                 "unsupported_media_type")


def test_the_fast_path_counts_in_the_routes_metrics(client: TestClient) -> None:
    from tests.api import metric_value

    before = metric_value(client.get("/metrics").text, "bloodcells_http_requests_total", route="/classify", status="200")
    assert client.post("/classify", files=upload(encode(make_smear(seed=2).rgb, ".jpg"))).status_code == 200
    after = metric_value(client.get("/metrics").text, "bloodcells_http_requests_total", route="/classify", status="200")
    assert after == before + 1
