"""/docs and /redoc work offline: every file they load is served by the service itself.

(In a real browser, with every other host blocked: tests/test_web.py.)"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.routes.docs import inline_script_hashes
from tests.api import assert_error

DOC_PAGES = ("/docs", "/redoc")
# Every URL a page names: src= and href= attributes, and the spec's url: in Swagger UI's script.
_REFERENCE = re.compile(r"""(?:\bsrc=|\bhref=|\burl:\s*|spec-url=)["']([^"']+)["']""")


def references(html: str) -> list[str]:
    return _REFERENCE.findall(html)


@pytest.mark.parametrize("path", DOC_PAGES)
def test_doc_pages_name_no_other_host(client: TestClient, path: str) -> None:
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    found = references(page.text)
    assert len(found) >= 3, found  # script, favicon, the OpenAPI document: else the check proves nothing
    assert all(url.startswith("/") and not url.startswith("//") for url in found), found
    assert "://" not in page.text  # no absolute URL anywhere, fonts included


@pytest.mark.parametrize("path", DOC_PAGES)
def test_every_file_a_doc_page_loads_is_served(client: TestClient, path: str) -> None:
    for url in references(client.get(path).text):
        got = client.get(url)
        assert got.status_code == 200, url
        assert got.content, url
        head = client.head(url)
        assert head.status_code == 200 and head.content == b"", url


def test_swagger_ui_and_redoc_get_their_scripts_and_styles_with_the_right_types(client: TestClient) -> None:
    expected = {"/docs/swagger-ui-bundle.js": "javascript", "/docs/swagger-ui.css": "text/css",
                "/redoc/redoc.standalone.js": "javascript", "/redoc/logo-mini.svg": "image/svg+xml"}
    for url, content_type in expected.items():
        response = client.get(url)
        assert response.status_code == 200 and content_type in response.headers["content-type"], url
    assert "SwaggerUIBundle" in client.get("/docs/swagger-ui-bundle.js").text
    assert "swagger-ui-bundle.js" in client.get("/docs").text
    assert "redoc.standalone.js" in client.get("/redoc").text


def test_the_doc_pages_head_answers_like_get(client: TestClient) -> None:
    for path in (*DOC_PAGES, "/docs/oauth2-redirect"):
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"], path


def test_only_the_listed_doc_files_are_served(client: TestClient) -> None:
    for url in ("/docs/LICENSE", "/docs/..%2F..%2Fpyproject.toml", "/redoc/swagger-ui.css", "/docs/nothing.js"):
        assert_error(client.get(url), 404, "not_found")


def test_the_doc_pages_policy_allows_their_own_inline_scripts_and_no_other_host(client: TestClient) -> None:
    for path in (*DOC_PAGES, "/docs/oauth2-redirect"):
        page = client.get(path)
        policy = page.headers["content-security-policy"]
        assert "connect-src 'self'" in policy and "default-src 'self'" in policy, path
        assert "frame-ancestors 'none'" in policy and page.headers["x-frame-options"] == "DENY", path
        script_sources = policy.split("script-src ")[1].split(";")[0]
        assert "'unsafe-inline'" not in script_sources and "http" not in script_sources, path
        for source in inline_script_hashes(page.text):
            assert source in script_sources, path
    assert len(inline_script_hashes(client.get("/docs").text)) == 1  # Swagger UI's start-up script


def test_inline_script_hashes_are_the_csp_sha256_of_each_inline_script() -> None:
    html = '<script src="/a.js"></script><script>alert(1)</script><script>\nlet x;\n</script>'
    # printf 'alert(1)' | openssl dgst -sha256 -binary | base64; the same for the second script
    assert inline_script_hashes(html) == ["'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='",
                                          "'sha256-0YMNZmNVWFGB7XulCiz2BCIFZoPOE0gljXmcn+1NzSQ='"]


def test_the_favicon_is_served_and_the_page_names_it(client: TestClient) -> None:
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert icon.content[:4] == b"\x00\x00\x01\x00"  # the ICO header
    page = client.get("/").text
    assert 'rel="icon" href="/static/favicon.svg"' in page
    svg = client.get("/static/favicon.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert client.head("/favicon.ico").status_code == 200
