"""GET /: the web page (plain HTML, JS and CSS from app/static, no build step), and GET /favicon.ico."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

router = APIRouter(include_in_schema=False)


# Starlette answers a Range it cannot serve (malformed, past the end) in plain text, not in the service's
# JSON error shape; the static files are small enough that ranges buy nothing, so they are always whole.
def _without_range(scope: Scope) -> Scope:
    return {**scope, "headers": [(name, value) for name, value in scope["headers"] if name != b"range"]}


class WholeFileResponse(FileResponse):
    """A static file, always whole: ``Accept-Ranges: none``, and any Range ignored."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.headers["accept-ranges"] = "none"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(_without_range(scope), receive, send)


class StaticAssets(StaticFiles):
    """``StaticFiles`` whose files are always whole, as ``WholeFileResponse``."""

    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope,
                      status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["accept-ranges"] = "none"
        if str(full_path).endswith(".html"):  # the page itself, as /static/index.html: as framed as GET /
            response.headers.update(PAGE_HEADERS)
        return response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(_without_range(scope), receive, send)


# The page loads only its own script and stylesheet and shows previews as blob: URLs; nothing may frame it.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}


@cache
def index_html() -> str:
    return (STATIC_DIR / "index.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse)
async def index() -> HTMLResponse:
    return HTMLResponse(index_html(), headers=PAGE_HEADERS)


# Browsers and tools ask for /favicon.ico whatever the page says; the page itself links the SVG.
@router.get("/favicon.ico")
async def favicon() -> WholeFileResponse:
    return WholeFileResponse(STATIC_DIR / "favicon.ico", media_type="image/x-icon")
