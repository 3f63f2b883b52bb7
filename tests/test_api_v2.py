"""The Open Inference Protocol v2 API, spoken by a client nobody here wrote (Triton's tritonclient)
to a real `bloodcells serve`, and app/oip.py's wire format on its own.

Tensor models must answer as onnxruntime does on the ONNX file; image models as POST /classify does
on the same bytes. Errors must have the protocol's shape, {"error": message}, as the client and a
raw HTTP view both see them.
"""

from __future__ import annotations

import gzip
import json
import math
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from app import __version__, oip
from app.config import Settings
from app.labels import CLASSES
from app.main import create_app
from app.oip import InputTensor, OutputTensor, ProtocolError
from tests import hostile
from tests.api import assert_error, model_metadata, probabilities
from tests.live_server import LiveServer, live_server

MAX_BATCH = 5
TENSOR_TOLERANCE = 1e-5
PIPELINE_TOLERANCE = 1e-6
MAX_VALUES = 100  # parse_request's bound on a JSON request's values, above what these requests hold


# --- a live server and its clients ----------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("v2"), "--workers", "1", "--model-dir", str(model_dir),
                     env={"BLOODCELLS_MAX_BATCH_FILES": str(MAX_BATCH)}) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[triton.InferenceServerClient]:
    triton_client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    yield triton_client
    triton_client.close()


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as raw:
        yield raw


@pytest.fixture(scope="module")
def metadata(model_dir: Path) -> dict[str, dict]:
    return model_metadata(model_dir)


@pytest.fixture(scope="module")
def sessions(model_dir: Path) -> dict[str, ort.InferenceSession]:
    """Each ONNX file in a session of its own, as a client with the file would run it."""
    return {path.stem: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            for path in sorted(model_dir.glob("*.onnx"))}


MODES = sorted(model_metadata(Path(__file__).resolve().parents[1] / "models"))


def assert_protocol_error(response: httpx.Response, status: int, *fragments: str) -> str:
    """The raw view: the status, JSON, and nothing but {"error": message}."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    for fragment in fragments:
        assert fragment in body["error"], body["error"]
    return body["error"]


def assert_client_error(raised: pytest.ExceptionInfo[InferenceServerException], status: int, *fragments: str) -> None:
    """The client's view: tritonclient read the status and the message out of the protocol's shape."""
    assert raised.value.status() == str(status)
    for fragment in fragments:
        assert fragment in raised.value.message(), raised.value.message()


def image_input(payloads: list[bytes], shape: list[int] | None = None) -> triton.InferInput:
    tensor = triton.InferInput("image", shape or [len(payloads)], "BYTES")
    tensor.set_data_from_numpy(np.array(payloads, dtype=np.object_).reshape(shape or [len(payloads)]),
                               binary_data=True)
    return tensor


def tensor_input(name: str, array: np.ndarray, binary: bool, datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def classify(http: httpx.Client, data: bytes, mode: str) -> dict:
    response = http.post("/classify", params={"mode": mode}, files={"file": ("cell.jpeg", data, "image/jpeg")})
    assert response.status_code == 200, response.text
    return response.json()


def pixels(session: ort.InferenceSession, batch: int, seed: int) -> np.ndarray:
    _, height, width, channels = session.get_inputs()[0].shape
    return np.random.default_rng(seed).random((batch, height, width, channels), dtype=np.float32)


# --- server and model metadata ------------------------------------------------------------------

def test_the_server_is_live_ready_and_describes_itself(client: triton.InferenceServerClient,
                                                       http: httpx.Client) -> None:
    assert client.is_server_live() and client.is_server_ready()
    described = client.get_server_metadata()
    assert described["name"] == "bloodcells" and described["version"] == __version__
    assert "binary_tensor_data" in described["extensions"]
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}


@pytest.mark.parametrize("mode", MODES)
def test_a_tensor_model_is_described_as_its_onnx_file(client: triton.InferenceServerClient, metadata: dict,
                                                      sessions: dict, mode: str) -> None:
    name, version = metadata[mode]["name"], metadata[mode]["version"]
    session = sessions[name]
    described = client.get_model_metadata(name)
    assert described["name"] == name and described["versions"] == [version]
    assert described["platform"] == "onnx_onnxv1"  # the protocol's name for ONNX Runtime's format
    assert described["inputs"] == [{"name": arg.name, "datatype": "FP32", "shape": [-1, *arg.shape[1:]]}
                                   for arg in session.get_inputs()]
    assert described["outputs"] == [{"name": arg.name, "datatype": "FP32", "shape": [-1, len(CLASSES)]}
                                    for arg in session.get_outputs()]
    assert client.get_model_metadata(name, model_version=version) == described
    assert client.is_model_ready(name) and client.is_model_ready(name, model_version=version)


@pytest.mark.parametrize("mode", MODES)
def test_an_image_model_takes_encoded_files(client: triton.InferenceServerClient, metadata: dict,
                                            mode: str) -> None:
    name = metadata[mode]["name"] + "-image"
    described = client.get_model_metadata(name)
    assert described["name"] == name and described["versions"] == [metadata[mode]["version"]]
    assert described["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert described["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(CLASSES)]},
                                    {"name": "labels", "datatype": "BYTES", "shape": [-1]},
                                    {"name": "looks_like_smear", "datatype": "BOOL", "shape": [-1]},
                                    {"name": "smear_score", "datatype": "FP32", "shape": [-1]}]
    assert described["platform"] == ""  # the service's own pipeline: none of the protocol's platforms
    assert client.is_model_ready(name)


def test_server_metadata_is_also_at_the_trailing_slash_the_protocols_openapi_file_names(http: httpx.Client) -> None:
    assert http.get("/v2/").json() == http.get("/v2").json()


# --- inference ----------------------------------------------------------------------------------

@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("mode", MODES)
def test_tensor_inference_is_onnxruntime_on_the_file(client: triton.InferenceServerClient, metadata: dict,
                                                     sessions: dict, mode: str, binary: bool) -> None:
    session = sessions[metadata[mode]["name"]]
    batch = pixels(session, 3, seed=len(mode))
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    expected = session.run(None, {input_name: batch})[0]
    result = client.infer(metadata[mode]["name"], [tensor_input(input_name, batch, binary)],
                          outputs=[triton.InferRequestedOutput(output_name, binary_data=binary)], request_id="req-7")
    np.testing.assert_allclose(result.as_numpy(output_name), expected, atol=TENSOR_TOLERANCE)
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_version"] == metadata[mode]["version"]
    assert ("parameters" in response["outputs"][0]) is binary


def test_nested_json_data_and_binary_output_as_the_raw_protocol(http: httpx.Client, metadata: dict,
                                                                sessions: dict) -> None:
    mode = MODES[0]
    session = sessions[metadata[mode]["name"]]
    batch = pixels(session, 2, seed=11)
    request = {"inputs": [{"name": session.get_inputs()[0].name, "shape": list(batch.shape), "datatype": "FP32",
                           "data": batch.tolist()}],
               "parameters": {"binary_data_output": True}}
    response = http.post(f"/v2/models/{metadata[mode]['name']}/infer", json=request)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    header_length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:header_length])
    assert "id" not in header  # none was given
    (output,) = header["outputs"]
    assert output["shape"] == [2, len(CLASSES)] and output["parameters"]["binary_data_size"] == 2 * 4 * 4
    values = np.frombuffer(response.content[header_length:], "<f4").reshape(2, len(CLASSES))
    np.testing.assert_allclose(values, session.run(None, {session.get_inputs()[0].name: batch})[0],
                               atol=TENSOR_TOLERANCE)


@pytest.mark.parametrize("binary_outputs", [True, False], ids=["binary-out", "json-out"])
@pytest.mark.parametrize("mode", MODES)
def test_image_inference_answers_as_post_classify(client: triton.InferenceServerClient, http: httpx.Client,
                                                  metadata: dict, test_images: dict[str, Path], mode: str,
                                                  binary_outputs: bool) -> None:
    payloads = [test_images[name].read_bytes() for name in CLASSES]
    names = ("probabilities", "labels", "looks_like_smear", "smear_score")
    outputs = [triton.InferRequestedOutput(name, binary_data=binary_outputs) for name in names]
    result = client.infer(metadata[mode]["name"] + "-image", [image_input(payloads)], outputs=outputs)
    labels = [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("labels")]
    smears, scores = result.as_numpy("looks_like_smear"), result.as_numpy("smear_score")
    for index, (data, label, values) in enumerate(zip(payloads, labels, result.as_numpy("probabilities"))):
        answer = classify(http, data, mode)
        assert label == answer["label"]
        np.testing.assert_allclose(values, probabilities(answer), atol=PIPELINE_TOLERANCE)
        assert bool(smears[index]) == answer["looks_like_smear"]
        assert scores[index] == pytest.approx(answer["smear_score"], abs=1e-6)


def test_images_may_come_as_a_column_and_outputs_follow_the_order_asked(client: triton.InferenceServerClient,
                                                                         metadata: dict,
                                                                         test_images: dict[str, Path]) -> None:
    payloads = [test_images["lymphocyte"].read_bytes(), test_images["neutrophil"].read_bytes()]
    outputs = [triton.InferRequestedOutput("labels"), triton.InferRequestedOutput("probabilities")]
    result = client.infer(metadata[MODES[0]]["name"] + "-image", [image_input(payloads, [2, 1])], outputs=outputs)
    assert [output["name"] for output in result.get_response()["outputs"]] == ["labels", "probabilities"]
    assert result.as_numpy("probabilities").shape == (2, len(CLASSES))
    assert len(result.as_numpy("labels")) == 2


# --- errors -------------------------------------------------------------------------------------

def test_an_unknown_model_or_version_is_a_404(client: triton.InferenceServerClient, http: httpx.Client,
                                             metadata: dict) -> None:
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_metadata("resnet50")
    assert_client_error(raised, 404, "unknown model 'resnet50'")
    with pytest.raises(InferenceServerException) as raised:
        client.infer("resnet50", [tensor_input("image", np.zeros((1, 2), np.float32), True)])
    assert_client_error(raised, 404, "unknown model")
    assert not client.is_model_ready("resnet50")
    assert_protocol_error(http.get("/v2/models/resnet50"), 404, "unknown model", metadata[MODES[0]]["name"])
    name = metadata[MODES[0]]["name"]
    assert_protocol_error(http.get(f"/v2/models/{name}/versions/0/ready"), 404, "no version '0'",
                          metadata[MODES[0]]["version"])
    with pytest.raises(InferenceServerException) as raised:
        client.infer(name, [tensor_input("image", np.zeros((1, 2), np.float32), True)], model_version="0")
    assert_client_error(raised, 404, "no version")


def test_a_tensor_of_the_wrong_shape_or_datatype_is_a_400(client: triton.InferenceServerClient, http: httpx.Client,
                                                         metadata: dict, sessions: dict) -> None:
    mode = MODES[0]
    name = metadata[mode]["name"]
    session = sessions[name]
    input_name = session.get_inputs()[0].name
    wrong_size = np.zeros((1, 32, 32, 3), np.float32)
    with pytest.raises(InferenceServerException) as raised:
        client.infer(name, [tensor_input(input_name, wrong_size, True)])
    assert_client_error(raised, 400, "shape", "[1, 32, 32, 3]")
    batch = pixels(session, 1, seed=3)
    with pytest.raises(InferenceServerException) as raised:
        client.infer(name, [tensor_input(input_name, batch.astype(np.float64), True, "FP64")])
    assert_client_error(raised, 400, "FP32", "FP64")
    request = {"inputs": [{"name": input_name, "shape": list(batch.shape), "datatype": "FP32",
                           "data": batch.reshape(-1)[:-1].tolist()}]}
    assert_protocol_error(http.post(f"/v2/models/{name}/infer", json=request), 400, "elements")
    request["inputs"][0]["data"] = ["0.5"] * batch.size
    assert_protocol_error(http.post(f"/v2/models/{name}/infer", json=request), 400, "numbers")
    request["inputs"][0]["name"] = "pixels"
    assert_protocol_error(http.post(f"/v2/models/{name}/infer", json=request), 400, "'pixels'", input_name)


def test_finite_inputs_that_overflow_the_model_are_a_400_not_nan_probabilities(http: httpx.Client, metadata: dict,
                                                                             sessions: dict) -> None:
    name = metadata[MODES[0]]["name"]
    session = sessions[name]
    shape = [1, *session.get_inputs()[0].shape[1:]]
    for value in (3e38, -3e38):
        request = {"inputs": [{"name": session.get_inputs()[0].name, "shape": shape, "datatype": "FP32",
                               "data": [value] * math.prod(shape)}]}
        assert_protocol_error(http.post(f"/v2/models/{name}/infer", json=request), 400, "NaN", "[0, 1]")


def test_a_bad_image_names_its_element_and_the_reason(client: triton.InferenceServerClient, http: httpx.Client,
                                                      metadata: dict, test_images: dict[str, Path]) -> None:
    name = metadata[MODES[0]]["name"] + "-image"
    payloads = [test_images["monocyte"].read_bytes(), b"Dear lab, the smear is attached.", b""]
    with pytest.raises(InferenceServerException) as raised:
        client.infer(name, [image_input(payloads)])
    assert_client_error(raised, 400, "element 1", "not_an_image", "element 2", "empty")
    body = oip.pack_bytes(payloads[1:2])
    header = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(body)}}]}).encode()
    response = http.post(f"/v2/models/{name}/infer", content=header + body,
                         headers={oip.HEADER_LENGTH: str(len(header))})
    assert_protocol_error(response, 400, "element 0", "not_an_image")


def test_an_image_sent_as_a_json_string_says_to_send_binary_data(http: httpx.Client, metadata: dict) -> None:
    request = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["/9j/4AAQSkZJRg=="]}]}
    response = http.post(f"/v2/models/{metadata[MODES[0]]['name']}-image/infer", json=request)
    assert_protocol_error(response, 400, "element 0", "binary_data")


def test_more_images_than_the_batch_limit_is_a_400(client: triton.InferenceServerClient, metadata: dict,
                                                   test_images: dict[str, Path]) -> None:
    payloads = [test_images["eosinophil"].read_bytes()] * (MAX_BATCH + 1)
    with pytest.raises(InferenceServerException) as raised:
        client.infer(metadata[MODES[0]]["name"] + "-image", [image_input(payloads)])
    assert_client_error(raised, 400, f"batch of {MAX_BATCH + 1}", f"1 to {MAX_BATCH}")


def test_a_malformed_body_is_a_400_in_the_protocol_shape(http: httpx.Client, metadata: dict) -> None:
    url = f"/v2/models/{metadata[MODES[0]]['name']}/infer"
    assert_protocol_error(http.post(url, content=b"{not json"), 400, "invalid inference request")
    header = b'{"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}'
    truncated = http.post(url, content=header + b"\0\0", headers={oip.HEADER_LENGTH: str(len(header) + 10)})
    assert_protocol_error(truncated, 400, "truncated")
    short = http.post(url, content=header + b"\0\0", headers={oip.HEADER_LENGTH: str(len(header))})
    assert_protocol_error(short, 400, "declares 4 bytes")
    assert_protocol_error(http.post(url, content=header, headers={oip.HEADER_LENGTH: "-1"}), 400, "negative")
    extra = {"inputs": [{"name": "image", "shape": [1, 64, 64, 3], "datatype": "FP32", "data": [0.0]}],
             "outputs": [{"name": "logits"}]}
    assert_protocol_error(http.post(url, json=extra), 400, "unknown output 'logits'")


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_a_compressed_request_is_inflated_as_triton_does(client: triton.InferenceServerClient, metadata: dict,
                                                         sessions: dict, algorithm: str) -> None:
    session = sessions[metadata[MODES[0]]["name"]]
    batch = pixels(session, 2, seed=5)
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    result = client.infer(metadata[MODES[0]]["name"], [tensor_input(input_name, batch, True)],
                          request_compression_algorithm=algorithm)
    np.testing.assert_allclose(result.as_numpy(output_name), session.run(None, {input_name: batch})[0],
                               atol=TENSOR_TOLERANCE)


def test_a_compressed_body_is_bounded_by_what_it_inflates_to(http: httpx.Client, metadata: dict) -> None:
    url = f"/v2/models/{metadata[MODES[0]]['name']}/infer"
    limit = Settings.model_fields["max_upload_bytes"].default
    bomb = gzip.compress(b" " * (limit + 1))  # about 10 KB that inflates past the limit
    assert len(bomb) < 100_000
    assert_protocol_error(http.post(url, content=bomb, headers={"Content-Encoding": "gzip"}), 413, "inflates")
    cut = gzip.compress(b'{"inputs": []}')[:-6]
    assert_protocol_error(http.post(url, content=cut, headers={"Content-Encoding": "gzip"}), 400, "cut short")
    assert_protocol_error(http.post(url, content=b"not gzip", headers={"Content-Encoding": "gzip"}), 400, "inflated")
    other = http.post(url, content=b"{}", headers={"Content-Encoding": "br"})
    assert_protocol_error(other, 415, "br", "gzip or deflate")


def test_an_id_full_of_commas_is_not_counted_as_values(client: triton.InferenceServerClient, metadata: dict,
                                                       test_images: dict[str, Path]) -> None:
    result = client.infer(metadata[MODES[0]]["name"] + "-image", [image_input([test_images["monocyte"].read_bytes()])],
                          request_id="," * 5000)
    assert result.get_response()["id"] == "," * 5000


def test_refusals_of_the_http_server_under_v2_have_the_protocols_shape(server: LiveServer) -> None:
    """tritonclient read the service's {"error": {...}} of a 414 or a 431 as its message, and then failed in
    str() of its own exception."""
    refused = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        with pytest.raises(InferenceServerException) as too_long:
            refused.get_model_metadata("a" * 9000)
        assert_client_error(too_long, 414, "request line")
        assert "request line" in str(too_long.value)
    finally:
        refused.close()
    refused = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        with pytest.raises(InferenceServerException) as too_many:
            refused.get_server_metadata(headers={f"x-h{i}": "y" for i in range(120)})
        assert_client_error(too_many, 431, "headers")
    finally:
        refused.close()
    malformed = hostile.exchange(server.port, [b"GET /v2/models/crop HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"])
    assert malformed.status == 400 and set(malformed.json) == {"error"}, malformed.body
    assert isinstance(malformed.json["error"], str)


def test_an_oversized_streamed_body_is_refused_in_the_protocol_shape(http: httpx.Client, metadata: dict) -> None:
    url = f"/v2/models/{metadata[MODES[0]]['name']}/infer"
    # Chunked, so that only the streaming count can refuse it; the last byte is the one over the limit.
    limit = Settings.model_fields["max_upload_bytes"].default
    chunk = 1024 * 1024
    chunks = [b"x" * chunk] * (limit // chunk) + [b"x" * (limit % chunk + 1)]
    response = http.post(url, content=iter(chunks))
    assert_protocol_error(response, 413, "over the limit")
    assert response.headers["connection"] == "close"


def test_unknown_endpoints_and_methods_answer_in_the_protocol_shape(http: httpx.Client, metadata: dict) -> None:
    assert_protocol_error(http.get("/v2/repository/index"), 404, "no v2 endpoint")
    response = http.get(f"/v2/models/{metadata[MODES[0]]['name']}/infer")
    assert_protocol_error(response, 405, "use POST")
    assert response.headers["allow"] == "POST"
    response = http.put(f"/v2/models/{metadata[MODES[0]]['name']}")
    assert_protocol_error(response, 405, "use GET, HEAD")
    assert response.headers["allow"] == "GET, HEAD"  # HEAD is answered wherever GET is
    for other in ("/v2foo", "/v2x/models"):  # no path of the protocol: the service's shape
        assert_error(http.get(other), 404, "not_found")


def test_not_ready_is_a_503_in_the_protocol_shape(model_dir: Path) -> None:
    # Without its lifespan the app has no models: what a request meets before they are loaded.
    unready = TestClient(create_app(Settings(model_dir=model_dir)))
    assert unready.get("/v2/health/live").json() == {"live": True}
    for path in ("/v2/health/ready", "/v2/models/crop/ready"):
        response = unready.get(path)
        assert response.status_code == 503 and set(response.json()) == {"error"}, response.text
        assert "not loaded" in response.json()["error"]


# --- the wire format, without a server ----------------------------------------------------------

def binary_request(inputs: list[dict], payload: bytes) -> bytes:
    return json.dumps({"inputs": inputs}).encode() + payload


def fp32_input(size: int, shape: list[int]) -> dict:
    return {"name": "x", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": size}}


def test_a_header_length_past_the_body_is_refused() -> None:
    header = json.dumps({"inputs": [fp32_input(8, [2])]}).encode()
    with pytest.raises(ProtocolError, match="truncated"):
        oip.parse_request(header + b"\0" * 8, str(len(header) + 9), MAX_VALUES)


@pytest.mark.parametrize("value, message", [("-1", "negative"), ("-0012", "negative"), ("abc", "byte count"),
                                            ("1e3", "byte count"), ("", "byte count"), ("+5", "byte count"),
                                            ("\u0663", "byte count"), ("9" * 5000, "5000 digits")])
def test_a_header_length_must_be_a_plain_byte_count(value: str, message: str) -> None:
    assert oip.parse_header_length(" 12 ", 14) == 12 and oip.parse_header_length(None, 14) is None
    assert oip.parse_header_length("0" * 5000 + "5", 14) == 5
    with pytest.raises(ProtocolError, match=message):
        oip.parse_header_length(value, 14)


def test_binary_sizes_must_add_up_to_the_binary_section_exactly() -> None:
    inputs = [fp32_input(8, [2]), {**fp32_input(4, [1]), "name": "y"}]
    header = json.dumps({"inputs": inputs}).encode()
    request, tensors = oip.parse_request(header + struct.pack("<3f", 1, 2, 3), str(len(header)), MAX_VALUES)
    assert [t.as_array().tolist() for t in tensors] == [[1.0, 2.0], [3.0]]
    with pytest.raises(ProtocolError, match="holds 16 bytes, but the inputs' binary_data_size add up to 12"):
        oip.parse_request(header + b"\0" * 16, str(len(header)), MAX_VALUES)
    with pytest.raises(ProtocolError, match="'y' declares 4 bytes of binary data at offset 8"):
        oip.parse_request(header + b"\0" * 10, str(len(header)), MAX_VALUES)
    json_only = json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}).encode()
    with pytest.raises(ProtocolError, match="holds 4 bytes, but the inputs' binary_data_size add up to 0"):
        oip.parse_request(json_only + b"\0" * 4, str(len(json_only)), MAX_VALUES)


@pytest.mark.parametrize("size", [-4, "8", True, 1.5])
def test_binary_data_size_must_be_a_byte_count(size: object) -> None:
    header = json.dumps({"inputs": [fp32_input(0, [2]) | {"parameters": {"binary_data_size": size}}]}).encode()
    with pytest.raises(ProtocolError, match="binary_data_size must be a byte count"):
        oip.parse_request(header + b"\0" * 8, str(len(header)), MAX_VALUES)


def test_a_binary_tensor_must_match_its_shape_in_bytes() -> None:
    header = json.dumps({"inputs": [fp32_input(12, [2, 2])]}).encode()
    _, (tensor,) = oip.parse_request(header + b"\0" * 12, str(len(header)), MAX_VALUES)
    with pytest.raises(ProtocolError, match="takes 16 bytes, but its binary_data_size is 12"):
        tensor.as_array()


def test_bytes_elements_are_length_prefixed_as_tritonclient_writes_them() -> None:
    elements = [b"\xff\xd8jpeg", b"", b"png" * 100]
    packed = oip.pack_bytes(elements)
    assert packed == serialize_byte_tensor(np.array(elements, dtype=np.object_)).item()
    assert oip.unpack_bytes(packed, limit=3) == elements
    with pytest.raises(ProtocolError, match="length prefix is cut off"):
        oip.unpack_bytes(packed + b"\1\0", limit=4)
    with pytest.raises(ProtocolError, match="declares 300 bytes, but only 299 remain"):
        oip.unpack_bytes(packed[:-1], limit=3)
    with pytest.raises(ProtocolError, match="more than the 2 elements"):
        oip.unpack_bytes(packed, limit=2)
    tensor = InputTensor("image", "BYTES", (2,), raw=memoryview(packed))
    with pytest.raises(ProtocolError, match="more than the 2 elements"):
        tensor.as_bytes()


@pytest.mark.parametrize("data, message", [([[1.0, 2.0], [3.0]], "regular nested list"),
                                           ([1.0, "2"], "numbers"), ([True, False], "numbers"),
                                           ([1.0, 2.0, 3.0], "holds 4 elements, but data holds 3"),
                                           ([{"a": 1}] * 4, "numbers")])
def test_json_data_must_be_a_regular_array_of_numbers(data: list, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        InputTensor("x", "FP32", (2, 2), data=data).as_array()


@pytest.mark.parametrize("raw", [False, True])
def test_float_data_must_be_finite(raw: bool) -> None:
    for value in (float("nan"), float("inf"), -float("inf")):
        values = [1.0, value]
        tensor = (InputTensor("x", "FP32", (2,), raw=memoryview(np.array(values, "<f4").tobytes())) if raw
                  else InputTensor("x", "FP32", (2,), data=values))
        with pytest.raises(ProtocolError, match="NaN or an infinity"):
            tensor.as_array()


def test_a_json_request_with_more_values_than_the_model_takes_is_refused_before_parsing() -> None:
    fits = json.dumps({"inputs": [{"name": "x", "shape": [1, 2000], "datatype": "FP32", "data": [0] * 2000}]})
    assert oip.parse_request(fits.encode(), None, 2000)[1][0].as_array().shape == (1, 2000)
    # Empty objects parse to Python dicts 25 times their bytes: refused on the count of commas and brackets.
    objects = b'{"inputs": [{"name": "x", "shape": [1, 100], "datatype": "FP32", "data": [' + b",".join([b"{}"] * 1200)
    with pytest.raises(ProtocolError, match="about 2,408 values .* more than the 100 of the largest request"):
        oip.parse_request(objects + b"]}]}", None, 100)
    # Lists nested around each number hold no commas: 80 times their bytes in memory.
    nested = b'{"inputs": [{"name": "x", "shape": [1, 2000], "datatype": "FP32", "data": ['
    with pytest.raises(ProtocolError, match="values"):
        oip.parse_request(nested + b",".join([b"[[[[[0]]]]]"] * 2000) + b"]}]}", None, oip.nested_values([1, 2000]))


def test_the_largest_request_as_nested_lists_fits_its_bound() -> None:
    shape = [3, 4, 5, 2]
    data = np.arange(math.prod(shape), dtype=np.float32).reshape(shape).tolist()
    header = json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]}).encode()
    assert oip.nested_values(shape) == 1 + 3 + 3 * 4 + 3 * 4 * 5 + math.prod(shape)
    _, (tensor,) = oip.parse_request(header, None, oip.nested_values(shape) - oip.STRUCTURE_VALUES + 20)
    assert tensor.as_array().shape == tuple(shape)


def test_commas_and_brackets_inside_strings_are_not_values() -> None:
    text = json.dumps({"id": ",[{" * 50 + '\\"' + ",", "a": [1, 2], "b": "x\\", "c": {"d": ","}}).encode()
    assert oip._values_outside_strings(text) == 7  # two objects, a list, its comma and the three between keys
    assert oip._values_outside_strings(b'"' + b"," * 1000) == 0  # an unterminated string: linear, no backtracking


def test_gzip_of_several_members_or_padded_with_zeros_is_inflated_whole() -> None:
    limit = Settings.model_fields["max_upload_bytes"].default
    assert oip.decompress(gzip.compress(b'{"a":') + gzip.compress(b"1}"), "gzip", limit) == b'{"a":1}'
    assert oip.decompress(gzip.compress(b"{}") + b"\0" * 16, "x-gzip", limit) == b"{}"
    with pytest.raises(ProtocolError, match="after its end"):
        oip.decompress(zlib.compress(b"{}") + b"x", "deflate", limit)
    with pytest.raises(ProtocolError, match="64 members"):
        oip.decompress(gzip.compress(b" ") * 65, "gzip", limit)


def test_data_nested_deeper_than_numpy_iterates_is_a_400() -> None:
    deep: Any = 0.5
    for _ in range(40):
        deep = [deep]
    with pytest.raises(ProtocolError):
        InputTensor("x", "FP32", (1, 2), data=deep).as_array()


def test_strings_in_numeric_data_are_refused_without_a_string_array() -> None:
    # numpy sized a string array by the longest string for every element: 80 GB here, a MemoryError and a 500.
    tensor = InputTensor("x", "FP32", (10_001,), data=["a" * 2_000_000] + [""] * 10_000)
    with pytest.raises(ProtocolError, match="must be numbers .* got strings"):
        tensor.as_array()
    with pytest.raises(ProtocolError, match="outside INT8's range"):
        InputTensor("x", "INT8", (2,), data=[300, 1]).as_array()


def test_a_shape_is_integers_not_booleans() -> None:
    header = json.dumps({"inputs": [{"name": "x", "shape": [True, 2], "datatype": "FP32", "data": [1, 2]}]})
    with pytest.raises(ProtocolError, match="shape"):
        oip.parse_request(header.encode(), None, MAX_VALUES)


def test_bytes_json_data_is_counted_against_its_shape_without_flattening_it_all() -> None:
    with pytest.raises(ProtocolError, match="holds 2 elements, but data holds more than 2"):
        InputTensor("image", "BYTES", (2,), data=[["a", "b"], ["c"] * 100_000]).as_bytes()


def test_json_data_may_be_flat_or_nested_row_major() -> None:
    flat = InputTensor("x", "FP32", (2, 2), data=[1, 2, 3, 4.5]).as_array()
    nested = InputTensor("x", "FP32", (2, 2), data=[[1, 2], [3, 4.5]]).as_array()
    assert flat.dtype == np.float32 and flat.tolist() == nested.tolist() == [[1, 2], [3, 4.5]]


def test_outputs_are_binary_as_asked_per_output_or_for_all() -> None:
    request = oip.InferenceRequest.model_validate({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                                                "data": [1]}],
                                                    "parameters": {"binary_data_output": True}})
    assert oip.requested_outputs(request, ["a", "b"]) == {"a": True, "b": True}
    request.outputs = [oip.RequestOutput(name="b", parameters={"binary_data": False}), oip.RequestOutput(name="a")]
    assert list(oip.requested_outputs(request, ["a", "b"]).items()) == [("b", False), ("a", True)]
    request.outputs = [oip.RequestOutput(name="c")]
    with pytest.raises(ProtocolError, match="unknown output 'c'"):
        oip.requested_outputs(request, ["a", "b"])
    request.outputs = [oip.RequestOutput(name="a", parameters={"binary_data": "yes"})]
    with pytest.raises(ProtocolError, match="true or false"):
        oip.requested_outputs(request, ["a", "b"])


def test_a_response_is_read_back_by_tritonclient() -> None:
    probabilities_ = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]], np.float32)
    outputs = [OutputTensor.of_array("probabilities", "FP32", probabilities_),
               OutputTensor("labels", "BYTES", [b"neutrophil", b"eosinophil"], (2,))]
    for binary in ({"probabilities": True, "labels": True}, {"probabilities": False, "labels": True},
                   {"probabilities": False, "labels": False}):
        body, header_length = oip.encode_response("crop-image", "1", "id-1", outputs, binary)
        assert (header_length is None) == (not any(binary.values()))
        result = triton.InferResult.from_response_body(body, header_length=header_length)
        np.testing.assert_array_equal(result.as_numpy("probabilities"), probabilities_)
        labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("labels")]
        assert labels == ["neutrophil", "eosinophil"]
        assert result.get_response()["id"] == "id-1" and result.get_response()["model_version"] == "1"


def test_refusals_before_any_route_have_the_protocol_shape(http: httpx.Client) -> None:
    """The upload limit declared by Content-Length is refused by the middleware, before routing."""
    response = http.post("/v2/models/crop-image/infer", content=b"x" * (10 * 1024 * 1024 + 1),
                         headers={"Inference-Header-Content-Length": "10"})
    assert_protocol_error(response, 413, "limit")
