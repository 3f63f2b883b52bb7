"""Operational endpoints, request ids, access logs and the web page's files."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.logs import ACCESS_LOGGER, JsonFormatter
from app.main import create_app
from app.model import sha256_file
from tests.api import all_model_metadata, assert_error, best_mode, metric_value, model_metadata, smear_png, upload


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_lists_the_loaded_modes(client: TestClient, model_dir: Path) -> None:
    body = client.get("/readyz").json()
    expected = model_metadata(model_dir)
    assert body["status"] == "ready" and sorted(body["modes"]) == sorted(expected)


def test_not_ready_without_the_lifespan(model_dir: Path) -> None:
    unstarted = TestClient(create_app(Settings(model_dir=model_dir)))  # no `with`: no lifespan, no models
    assert_error(unstarted.get("/readyz"), 503, "not_ready")
    assert unstarted.get("/healthz").status_code == 200


def test_models_gives_each_models_metadata_and_the_most_accurate_is_default(client: TestClient,
                                                                            model_dir: Path) -> None:
    body = client.get("/models").json()
    expected = all_model_metadata(model_dir)
    assert {model["name"] for model in body["models"]} == set(expected)
    assert {model["mode"] for model in body["models"]} == set(model_metadata(model_dir))
    best = best_mode(model_dir)
    assert body["default_mode"] == best
    for model in body["models"]:
        meta = expected[model["name"]]
        assert "versions" in meta and "versions" not in model["metadata"]
        assert model["metadata"] == {k: v for k, v in meta.items() if k != "versions"}
        assert model["sha256"] == sha256_file(model_dir / f"{model['name']}.onnx")
        assert model["default"] == (model["name"] == model_metadata(model_dir)[best]["name"])
        assert model["test_accuracy"] == meta["test"]["accuracy"]
        assert model["fullfield_accuracy"] == meta.get("fullfield", {}).get("accuracy")


def test_metrics_count_requests_latency_predictions_and_rejections(client: TestClient) -> None:
    before = client.get("/metrics").text
    label = client.post("/classify", files=upload(smear_png(seed=9))).json()["label"]
    mode = client.get("/models").json()["default_mode"]
    client.post("/classify", files=upload(b"not an image"))
    response = client.get("/metrics")
    after = response.text
    assert response.headers["content-type"].startswith("text/plain")

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("bloodcells_http_requests_total", method="POST", route="/classify", status="200") == 1
    assert delta("bloodcells_http_requests_total", method="POST", route="/classify", status="400") == 1
    assert delta("bloodcells_http_request_duration_seconds_count", method="POST", route="/classify",
                 status="200") == 1
    assert delta("bloodcells_predictions_total", mode=mode, label=label) == 1
    assert delta("bloodcells_inference_seconds_count", mode=mode) == 1
    assert delta("bloodcells_preprocess_seconds_count", mode=mode) == 1
    assert delta("bloodcells_rejected_inputs_total", reason="not_an_image") == 1


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "trace-42.a:b"}).headers["x-request-id"] == "trace-42.a:b"
    generated = {client.get("/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(generated) == 3
    for unsafe in (b"x" * 200, b"has space", b"<script>", "caf\u00e9".encode()):
        echoed = client.get("/healthz", headers=[(b"X-Request-ID", unsafe)])
        assert echoed.headers["x-request-id"].encode() != unsafe and len(echoed.headers["x-request-id"]) == 32


def test_access_log_is_one_json_line_with_the_request_id(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        client.post("/classify", params={"mode": "bogus"}, files=upload(b"x"), headers={"X-Request-ID": "abc-123"})
    records = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert len(records) == 1
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["request_id"] == "abc-123" and line["method"] == "POST" and line["path"] == "/classify"
    assert line["status"] == 422 and line["duration_ms"] > 0 and line["level"] == "info"


def test_docs_and_openapi_are_served(client: TestClient) -> None:
    assert "swagger" in client.get("/docs").text.lower()
    schema = client.get("/openapi.json").json()
    assert {"/classify", "/classify/batch", "/preprocess", "/healthz", "/readyz", "/models", "/metrics"} <= set(
        schema["paths"])
    error_schema = schema["paths"]["/classify"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert error_schema == {"$ref": "#/components/schemas/ErrorResponse"}


def test_web_page_and_its_files_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text
        assert client.get(asset).status_code == 200
    assert "http://" not in page.text and "https://" not in page.text  # nothing from outside: the machine is offline


@pytest.mark.parametrize("path", ["/static/app.js", "/favicon.ico", "/docs/swagger-ui.css", "/redoc/logo-mini.svg"])
def test_static_files_are_always_whole_so_no_range_gets_a_plain_text_error(client: TestClient, path: str) -> None:
    # Starlette answered these Ranges itself, in plain text: 400 "range must be requested", and an empty 416.
    whole = client.get(path)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "none"
    for bad in ("bytes=abc", "bytes=999999999-", "pages=1-2", "bytes=0-1"):
        answer = client.get(path, headers={"Range": bad})
        assert answer.status_code == 200 and answer.content == whole.content, (bad, answer.status_code)


def test_cors_is_off_by_default_and_allows_the_configured_origins(model_dir: Path) -> None:
    preflight = {"Origin": "http://lab.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(Settings(model_dir=model_dir))) as plain:
        assert "access-control-allow-origin" not in plain.options("/classify", headers=preflight).headers
    with TestClient(create_app(Settings(model_dir=model_dir, cors_origins=["http://lab.example"]))) as cors:
        response = cors.options("/classify", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "http://lab.example"
        other = cors.options("/classify", headers={**preflight, "Origin": "http://elsewhere.example"})
        assert other.headers.get("access-control-allow-origin") != "http://elsewhere.example"
        # Refused in the JSON shape of every other error (Starlette answers plain text), the protocol's under /v2.
        assert_error(other, 400, "bad_request")
        assert "Disallowed CORS origin" in other.json()["error"]["message"]
        method = cors.options("/classify", headers={**preflight, "Access-Control-Request-Method": "DELETE"})
        assert_error(method, 400, "bad_request")
        v2 = cors.options("/v2/models/crop/infer", headers={**preflight, "Origin": "http://elsewhere.example"})
        assert v2.status_code == 400 and isinstance(v2.json()["error"], str)


def test_a_trailing_slash_is_a_json_404_not_a_redirect_to_the_clients_host(client: TestClient) -> None:
    for path in ("/healthz/", "/models/", "/static"):
        answer = client.get(path, headers={"Host": "evil.example"}, follow_redirects=False)
        assert_error(answer, 404, "not_found")
        assert "location" not in answer.headers


def test_importing_the_app_loads_no_model_and_no_tensorflow(tmp_path: Path) -> None:
    """uvicorn imports app.main:app in every worker; the models load in the lifespan, not at import."""
    script = ("import sys; import app.main as m; print(type(m.app).__name__, "
              "sorted(k for k in sys.modules if k.split('.')[0] in ('tensorflow', 'keras')))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "BLOODCELLS_MODEL_DIR": str(tmp_path / "no-models-here")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["FastAPI", "[]"]


def test_models_shows_the_library_versions_only_when_the_setting_says_so(model_dir: Path) -> None:
    with TestClient(create_app(Settings(model_dir=model_dir, expose_versions=True))) as exposing:
        for model in exposing.get("/models").json()["models"]:
            assert model["metadata"]["versions"] == model_metadata(model_dir)[model["mode"]]["versions"]


def test_every_get_route_answers_head_without_a_body(client: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/models", "/metrics", "/", "/docs", "/openapi.json", "/static/app.js"):
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"], path
    # So a 405 says so: Allow lists HEAD beside GET.
    for path in ("/models", "/healthz"):
        refused = client.put(path)
        assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD", path


def test_security_headers_on_every_answer_and_the_page(client: TestClient) -> None:
    for response in (client.get("/healthz"), client.post("/classify")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    for page in (client.get("/"), client.get("/static/index.html")):  # the page under its file's own name too
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"


def test_the_metrics_method_label_is_bounded(client: TestClient) -> None:
    for method in ("BREW", "PROPFIND", "FOO"):
        assert client.request(method, "/healthz").status_code == 405
    exposition = client.get("/metrics").text
    assert 'method="other"' in exposition
    assert not any(f'method="{m}"' in exposition for m in ("BREW", "PROPFIND", "FOO"))
