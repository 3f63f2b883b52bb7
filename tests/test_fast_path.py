"""The fast path of POST /classify and /classify/batch: the routes' answers for the usual requests, the
routes themselves for the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app import fast_path
from app.config import Settings
from tests.api import assert_error, upload
from tests.synthetic import encode, make_smear

BOUNDARY = b"xyz"


def form(*parts: bytes) -> bytes:
    return b"".join(b"--" + BOUNDARY + b"\r\n" + part for part in parts) + b"--" + BOUNDARY + b"--\r\n"


def file_part(name: bytes = b"file", filename: bytes | None = b"cell.jpg", data: bytes = b"DATA") -> bytes:
    disposition = b'form-data; name="' + name + b'"' + (b'; filename="' + filename + b'"' if filename is not None else b"")
    return b"Content-Disposition: " + disposition + b"\r\nContent-Type: image/jpeg\r\n\r\n" + data + b"\r\n"


def test_only_a_form_of_file_parts_all_named_the_field_is_taken() -> None:
    data = b"\x00\r\n--x--\xff"
    assert fast_path._files(form(file_part(data=data)), BOUNDARY, "file", 1) == [("cell.jpg", data)]
    assert fast_path._files(form(file_part(data=b"")), BOUNDARY, "file", 1) == [("cell.jpg", b"")]
    two = form(file_part(name=b"files", data=b"a"), file_part(name=b"files", filename="é.png".encode(), data=b"b"))
    assert fast_path._files(two, BOUNDARY, "files", 2) == [("cell.jpg", b"a"), ("é.png", b"b")]
    assert fast_path._files(two, BOUNDARY, "files", 1) is None  # over the limit: the route says so
    assert fast_path._files(form(file_part(), file_part()), BOUNDARY, "file", 2) == [("cell.jpg", b"DATA")] * 2
    many_headers = form(b"".join(b"X-%d: 1\r\n" % i for i in range(fast_path.MAX_PART_HEADERS)) + file_part())
    for other in (form(file_part(name=b"files")), form(file_part(filename=None)), form(file_part(), file_part(b"x")),
                  b"", b"garbage", form(file_part())[:-10], many_headers):
        assert fast_path._files(other, BOUNDARY, "file", 2) is None, other
    assert fast_path._files(form(), BOUNDARY, "file", 1) in (None, [])


@pytest.mark.parametrize("charset", ["utf-16", "cp037", "latin-1", "punycode"])
def test_a_form_with_another_charset_gets_the_routes_answer(client: TestClient, test_images: dict[str, Path],
                                                            monkeypatch: pytest.MonkeyPatch, charset: str) -> None:
    # Starlette decodes part names and filenames by the charset, the fast path by UTF-8: utf-16 was a 200 here
    # and a 422 from the route, punycode a 200 and a 400.
    taken = spy_on_the_parser(monkeypatch)
    body = form(file_part(filename="é.jpg".encode(), data=test_images["neutrophil"].read_bytes()))
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY.decode()}; charset={charset}"}
    fast = client.post("/classify", content=body, headers=headers)
    routed = client.post("/classify", params={"via": "route"}, content=body, headers=headers)
    assert not taken
    assert fast.status_code == routed.status_code, (fast.text, routed.text)
    utf8 = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY.decode()}; charset=UTF-8"}
    assert client.post("/classify", content=body, headers=utf8).status_code == 200 and taken


def test_a_form_of_a_million_empty_parts_is_given_up_at_its_first_part(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every part was held before any was checked, on the event loop: +378 MB and seconds for this body.
    seen = []
    begin = fast_path.MultipartParser.__init__

    def counting(self: Any, boundary: bytes, callbacks: dict, *args: Any, **kwargs: Any) -> None:
        started = callbacks["on_part_begin"]

        def on_part_begin() -> None:
            seen.append(True)
            started()
        begin(self, boundary, {**callbacks, "on_part_begin": on_part_begin}, *args, **kwargs)

    monkeypatch.setattr(fast_path.MultipartParser, "__init__", counting)
    body = b"--B\r\n\r\n\r\n" * 1_000_000 + b"--B--\r\n"
    assert fast_path._files(body, b"B", "files", 32) is None
    assert len(seen) == 1


@pytest.mark.parametrize("query, expected", [
    (b"", {}), (b"mode=crop", {"mode": "crop"}), (b"model=original&mode=original", {"model": "original", "mode": "original"}),
    (b"mode=", None), (b"mode=crop&mode=color", None), (b"debug=1", None), (b"model", None),
])
def test_only_mode_and_model_once_each_and_not_empty_are_taken(query: bytes, expected: dict | None) -> None:
    assert fast_path._query({"query_string": query}) == expected


def test_the_fast_answer_is_the_routes(client: TestClient, test_images: dict[str, Path],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    taken = spy_on_the_parser(monkeypatch)
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


def spy_on_the_parser(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    taken: list[bool] = []
    parse = fast_path._files

    def spy(body: bytes, boundary: bytes, field: str, max_files: int) -> list[tuple[str, bytes]] | None:
        taken.append(True)
        return parse(body, boundary, field, max_files)

    monkeypatch.setattr(fast_path, "_files", spy)
    return taken


def test_the_fast_batch_answer_is_the_routes(client: TestClient, test_images: dict[str, Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    taken = spy_on_the_parser(monkeypatch)
    files = [("files", (path.name, path.read_bytes(), "image/jpeg")) for path in test_images.values()]
    files.append(("files", ("notes.jpg", b"not an image", "image/jpeg")))
    fast = client.post("/classify/batch", params={"mode": "color"}, files=files)
    assert taken
    routed = client.post("/classify/batch", params={"mode": "color", "via": "route"}, files=files)
    assert fast.status_code == routed.status_code == 200, (fast.text, routed.text)
    mine, theirs = fast.json(), routed.json()
    assert mine.pop("elapsed_ms") > 0 and theirs.pop("elapsed_ms") > 0
    for answer in (mine, theirs):
        answer["results"][-1]["error"].pop("request_id")
    assert mine == theirs
    assert mine["results"][-1]["error"]["code"] == "not_an_image"


def test_the_routes_errors_still_come_from_the_route(client: TestClient) -> None:
    image = encode(make_smear(seed=1).rgb, ".jpg")
    assert_error(client.post("/classify", files=upload(b"not an image")), 400, "not_an_image")
    assert_error(client.post("/classify", params={"model": "resnet50"}, files=upload(image)), 422, "unknown_model")
    assert_error(client.post("/classify", params={"mode": ""}, files=upload(image)), 422, "unknown_mode")
    assert_error(client.post("/classify", files=[("file", ("a.jpg", image, "image/jpeg"))] * 2), 422, "duplicate_field")
    assert_error(client.post("/classify", files={"other": ("a.jpg", image, "image/jpeg")}), 422, "missing_field")
    assert_error(client.post("/classify", content=image, headers={"content-type": "image/jpeg"}), 415,
                 "unsupported_media_type")
    many = [("files", (f"{i}.jpg", image, "image/jpeg")) for i in range(Settings().max_batch_files + 1)]
    assert_error(client.post("/classify/batch", files=many), 422, "too_many_files")
    # python-multipart refuses a boundary over 256 bytes when its parser is made, not while it parses.
    boundary = b"B" * 257
    long_form = b"--" + boundary + b"\r\n" + file_part(data=image) + b"--" + boundary + b"--\r\n"
    for path in ("/classify", "/classify/batch"):
        answer = client.post(path, content=long_form,
                             headers={"content-type": "multipart/form-data; boundary=" + boundary.decode()})
        assert_error(answer, 400, "bad_request")


def test_the_fast_path_counts_in_the_routes_metrics(client: TestClient) -> None:
    from tests.api import metric_value

    before = metric_value(client.get("/metrics").text, "bloodcells_http_requests_total", route="/classify", status="200")
    assert client.post("/classify", files=upload(encode(make_smear(seed=2).rgb, ".jpg"))).status_code == 200
    after = metric_value(client.get("/metrics").text, "bloodcells_http_requests_total", route="/classify", status="200")
    assert after == before + 1
