"""GET /docs (Swagger UI) and /redoc (ReDoc), with their scripts and styles served by the service.

FastAPI's default pages load Swagger UI and ReDoc from a CDN and stay blank on a machine without
internet. These are FastAPI's self-hosting recipe (``docs_url=None, redoc_url=None`` in
``app.main``, then ``get_swagger_ui_html`` / ``get_redoc_html`` with local URLs); the files come
from the ``fastapi-standalone-docs`` package, which bundles Swagger UI's and ReDoc's builds with
their licences (its ``StandaloneDocs`` helper, which patches FastAPI's functions, is not used).
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse

from app import error_codes
from app.errors import ApiError
from app.routes.web import WholeFileResponse

SWAGGER_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = SWAGGER_URL + "/oauth2-redirect"
FAVICON_URL = "/static/favicon.svg"

_BUNDLE = Path(str(files("fastapi_standalone_docs") / "static"))
# Served by name only, from this list: a path parameter never reaches the file system.
SWAGGER_ASSETS = {"swagger-ui-bundle.js": _BUNDLE / "swagger" / "swagger-ui-bundle.js",
                  "swagger-ui.css": _BUNDLE / "swagger" / "swagger-ui.css"}
# logo-mini.svg: the package's ReDoc build asks for it beside the page instead of from ReDoc's CDN.
REDOC_ASSETS = {"redoc.standalone.js": _BUNDLE / "redoc" / "redoc.standalone.js",
                "logo-mini.svg": _BUNDLE / "redoc" / "logo-mini.svg"}

# Only this service may be reached. Swagger UI and ReDoc inject styles and ReDoc starts its search
# worker from a blob:, so those are allowed; an inline script runs only if its hash is listed.
_POLICY = ("default-src 'self'; script-src {scripts}; style-src 'self' 'unsafe-inline'; "
           "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
           "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)

router = APIRouter(include_in_schema=False)


def inline_script_hashes(html: str) -> list[str]:
    """The CSP source of each inline script of a page (those without ``src``)."""
    return ["'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
            for body in _INLINE_SCRIPT.findall(html)]


def with_policy(page: HTMLResponse) -> HTMLResponse:
    """The page with a Content-Security-Policy that lets its own inline scripts run and nothing else."""
    html = bytes(page.body).decode()
    page.headers["Content-Security-Policy"] = _POLICY.format(scripts=" ".join(["'self'", *inline_script_hashes(html)]))
    page.headers["X-Frame-Options"] = "DENY"
    return page


def root_of(request: Request) -> str:
    # Behind a proxy that mounts the service under a prefix, every URL of the page carries it.
    return str(request.scope.get("root_path", "")).rstrip("/")


def asset(assets: dict[str, Path], name: str) -> WholeFileResponse:
    if name not in assets:
        raise ApiError.of(error_codes.NOT_FOUND, f"no documentation file {name!r}; open {SWAGGER_URL} or {REDOC_URL}")
    return WholeFileResponse(assets[name])


@router.get(SWAGGER_URL)
async def swagger_ui(request: Request) -> HTMLResponse:
    root = root_of(request)
    return with_policy(get_swagger_ui_html(
        openapi_url=root + str(request.app.openapi_url), title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{SWAGGER_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{SWAGGER_URL}/swagger-ui.css", swagger_favicon_url=root + FAVICON_URL,
        oauth2_redirect_url=root + OAUTH2_REDIRECT_URL, swagger_ui_parameters=request.app.swagger_ui_parameters))


@router.get(OAUTH2_REDIRECT_URL)
async def swagger_ui_oauth2_redirect() -> HTMLResponse:
    return with_policy(get_swagger_ui_oauth2_redirect_html())


@router.get(SWAGGER_URL + "/{name}")
async def swagger_ui_asset(name: str) -> WholeFileResponse:
    return asset(SWAGGER_ASSETS, name)


@router.get(REDOC_URL)
async def redoc(request: Request) -> HTMLResponse:
    root = root_of(request)
    return with_policy(get_redoc_html(
        openapi_url=root + str(request.app.openapi_url), title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{REDOC_URL}/redoc.standalone.js", redoc_favicon_url=root + FAVICON_URL,
        with_google_fonts=False))


@router.get(REDOC_URL + "/{name}")
async def redoc_asset(name: str) -> WholeFileResponse:
    return asset(REDOC_ASSETS, name)
