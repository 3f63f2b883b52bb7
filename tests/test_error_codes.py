"""The error catalogue (app/error_codes.py) against every place a code is written or documented: the
code, the README's table, nginx's own answers, preprocessing's Literal, and the OpenAPI schema."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import get_args

import pytest

from app import error_codes
from app.config import Settings
from app.error_codes import BY_CODE, CATALOGUE
from app.main import create_app
from app.preprocessing import DecodeErrorReason
from tests.conftest import MODELS_DIR

ROOT = Path(__file__).resolve().parent.parent

# Every code and its status, as the service answers them: a change here is a change of the API.
PINNED = {
    "empty": 400, "not_an_image": 400, "corrupt": 400, "zero_size": 400, "too_many_scans": 400, "too_much_metadata": 400,
    "bad_request": 400,
    "not_found": 404, "method_not_allowed": 405, "request_timeout": 408,
    "upload_too_large": 413, "too_many_pixels": 413, "request_too_many_pixels": 413,
    "uri_too_long": 414, "unsupported_media_type": 415, "unsupported_format": 415,
    "missing_field": 422, "duplicate_field": 422, "validation_error": 422, "unknown_mode": 422,
    "unknown_model": 422,
    "too_many_files": 422, "too_many_requests": 429, "headers_too_large": 431, "internal_error": 500,
    "not_ready": 503, "shutting_down": 503, "overloaded": 503,
}


def test_the_catalogue_holds_every_code_with_its_status_once() -> None:
    assert len(BY_CODE) == len(CATALOGUE)
    assert {error.code: error.status for error in CATALOGUE} == PINNED
    defaults = [error.status for error in CATALOGUE if error.default]
    assert len(defaults) == len(set(defaults)), "one default code per status"
    assert all(error.description and error.origins for error in CATALOGUE)


def test_decode_error_reason_is_the_catalogues_decode_codes() -> None:
    assert set(get_args(DecodeErrorReason)) == error_codes.DECODE_CODES
    assert error_codes.DECODE_ERROR_STATUS == {code: PINNED[code] for code in error_codes.DECODE_CODES}


# --- every code written in app/ ----------------------------------------------------------------

# The calls that take a code, and where: (position of the status, position of the code, keyword of the code).
# metrics.REJECTED.labels(reason=...): the rejected-inputs counter, labelled by code.
CODE_TAKERS = {"ApiError": (0, 1, "code"), "ProtocolError": (1, 2, "reason"), "error_response": (1, 2, "code"),
               "error_bytes": (0, 1, "code"), "ErrorDetail": (None, None, "code"), "labels": (None, None, "reason")}


def _literal_codes() -> list[tuple[str, int, int | None, str]]:
    """(file, line, status or None, code) of each string literal passed as a code in app/."""
    found = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        if path.name == "error_codes.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name not in CODE_TAKERS:
                continue
            if name == "labels" and getattr(getattr(node.func, "value", None), "attr", None) != "REJECTED":
                continue  # another counter's labels (connections closed: idle_timeout, evicted_idle, ...)
            status_at, code_at, keyword = CODE_TAKERS[name]
            code = next((k.value for k in node.keywords if k.arg == keyword), None)
            if code is None and code_at is not None and len(node.args) > code_at:
                code = node.args[code_at]
            status = node.args[status_at] if status_at is not None and len(node.args) > status_at else None
            status_value = status.value if isinstance(status, ast.Constant) and isinstance(status.value, int) else None
            if isinstance(code, ast.Constant) and isinstance(code.value, str):
                found.append((str(path.relative_to(ROOT)), node.lineno, status_value, code.value))
    return found


def test_every_code_written_in_the_app_is_in_the_catalogue_with_its_status() -> None:
    wrong = [f"{where}:{line}: {code!r}" + ("" if code in BY_CODE else " is not in the catalogue")
             + ("" if status is None or code not in BY_CODE or BY_CODE[code].status == status
                else f" answered {status}, the catalogue says {BY_CODE[code].status}")
             for where, line, status, code in _literal_codes()
             if code not in BY_CODE or (status is not None and BY_CODE[code].status != status)]
    assert not wrong, "\n".join(wrong)


def test_the_scan_finds_codes_written_as_strings() -> None:
    # The guard of the scan itself: a literal in a known shape is found (app/routes/ops.py still writes one).
    tree = ast.parse('raise ApiError(503, "nope", "m")\nProtocolError("m", 404, reason="gone")')
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert len(calls) == 2 and all(n.func.id in CODE_TAKERS for n in calls)  # type: ignore[attr-defined]


# --- the README's table ------------------------------------------------------------------------

def readme_error_table() -> dict[int, set[str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("Errors are JSON"):]
    table: dict[int, set[str]] = {}
    for line in section.splitlines():
        if table and not line.startswith("|"):
            break
        match = re.match(r"\|\s*(\d{3})\s*\|(.*)\|\s*$", line)
        if match:
            # Only the codes: what is in parentheses explains them (and may quote `file` or `Retry-After`).
            codes = re.sub(r"\([^)]*\)", "", match.group(2))
            table.setdefault(int(match.group(1)), set()).update(re.findall(r"`([^`]+)`", codes))
    return table


# Codes the README's table may leave out (none now).
README_LACKS: set[str] = set()


def test_the_readme_error_table_lists_exactly_the_catalogue() -> None:
    documented = readme_error_table()
    assert documented, "no error table after 'Errors are JSON' in README.md"
    documented_codes = set().union(*documented.values())
    assert not README_LACKS & documented_codes, "README.md lists them now: empty README_LACKS"
    problems = []
    for error in CATALOGUE:
        if error.code in README_LACKS:
            continue
        if error.code not in documented.get(error.status, set()):
            elsewhere = [status for status, codes in documented.items() if error.code in codes]
            problems.append(f"`{error.code}` is missing from the {error.status} row"
                            + (f" (it is under {elsewhere})" if elsewhere else ""))
    for status, codes in documented.items():
        problems += [f"`{code}` under {status} is not in the catalogue under that status"
                     for code in sorted(codes) if code not in BY_CODE or BY_CODE[code].status != status]
    assert not problems, "README.md's error table: " + "; ".join(problems)


# --- nginx's own answers -----------------------------------------------------------------------

def test_nginx_answers_only_catalogue_codes_with_their_status() -> None:
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    answers = re.findall(r"return\s+(\d{3})\s+'(\{.*?\})\\n';", conf)
    assert answers, "no JSON error bodies found in deploy/nginx.conf"
    for status, body in answers:
        code = re.search(r'"code":"([^"]+)"', body).group(1)  # type: ignore[union-attr]
        assert code in BY_CODE, f"nginx answers {code!r}, not in the catalogue"
        assert BY_CODE[code].status == int(status), f"nginx answers {code!r} with {status}"
        assert error_codes.Origin.NGINX in BY_CODE[code].origins, f"{code!r}: add Origin.NGINX to its origins"
    nginx_codes = {re.search(r'"code":"([^"]+)"', body).group(1) for _, body in answers}  # type: ignore[union-attr]
    assert nginx_codes == {error.code for error in CATALOGUE if error_codes.Origin.NGINX in error.origins}


# --- the OpenAPI schema ------------------------------------------------------------------------

E = error_codes
IMAGE_UPLOAD = {*E.UPLOAD_ERRORS, *E.IMAGE_ERRORS, E.DUPLICATE_FIELD}
# What each route can answer besides what any request can get before routing (the HTTP protocol's
# 400/408/414/431, 404/405 for another path or method, 500): written from the route's dependencies.
SERVICE_ROUTES: dict[tuple[str, str], set[error_codes.ErrorCode]] = {
    ("POST", "/classify"): IMAGE_UPLOAD,
    ("POST", "/classify/batch"): {*E.UPLOAD_ERRORS, E.REQUEST_TOO_MANY_PIXELS, E.TOO_MANY_FILES},
    ("POST", "/preprocess"): IMAGE_UPLOAD,
    ("GET", "/healthz"): set(),
    ("GET", "/metrics"): set(),
    ("GET", "/readyz"): {E.NOT_READY, E.SHUTTING_DOWN},
    ("GET", "/models"): {E.NOT_READY},
}
# Under /v2 the protocol's statuses (a validation error is 400 there; decode errors are all 400).
V2_ROUTES: dict[tuple[str, str], set[int]] = {
    ("POST", "/v2/models/{model_name}/infer"): {400, 404, 413, 503},
    ("POST", "/v2/models/{model_name}/versions/{model_version}/infer"): {400, 404, 413, 503},
    ("GET", "/v2/health/live"): set(),
    ("GET", "/v2/health/ready"): {503},
    ("GET", "/v2"): set(),
    **{("GET", path): {404, 503} for path in ("/v2/models/{model_name}", "/v2/models/{model_name}/ready",
                                              "/v2/models/{model_name}/versions/{model_version}",
                                              "/v2/models/{model_name}/versions/{model_version}/ready")},
}
# The routes of app/routes/ops.py document a bare status, described by all its catalogue codes.
BARE_STATUS_ROUTES = {("GET", "/readyz"), ("GET", "/models")}


@pytest.fixture(scope="module")
def operations() -> dict[tuple[str, str], dict]:
    schema = create_app(Settings(model_dir=MODELS_DIR)).openapi()
    return {(method.upper(), path): operation for path, methods in schema["paths"].items()
            for method, operation in methods.items()}


def error_statuses(operation: dict) -> set[int]:
    return {int(status) for status in operation["responses"] if int(status) >= 400}


def test_every_route_is_listed_here(operations: dict[tuple[str, str], dict]) -> None:
    assert set(operations) == set(SERVICE_ROUTES) | set(V2_ROUTES)


@pytest.mark.parametrize("route", list(SERVICE_ROUTES), ids=" ".join)
def test_a_routes_documented_errors_are_what_it_can_answer(operations: dict[tuple[str, str], dict],
                                                          route: tuple[str, str]) -> None:
    expected = SERVICE_ROUTES[route]
    responses = operations[route]["responses"]
    assert error_statuses(operations[route]) == {error.status for error in expected}
    for status in {error.status for error in expected}:
        described = set(re.findall(r"`([a-z_]+)`", responses[str(status)]["description"]))
        codes = {error.code for error in expected if error.status == status}
        if route in BARE_STATUS_ROUTES:
            assert codes <= described
        else:
            assert described == codes, f"{route} {status}: described {sorted(described)}, can answer {sorted(codes)}"


@pytest.mark.parametrize("route", list(V2_ROUTES), ids=" ".join)
def test_a_v2_routes_documented_errors_are_what_it_can_answer(operations: dict[tuple[str, str], dict],
                                                             route: tuple[str, str]) -> None:
    assert error_statuses(operations[route]) == V2_ROUTES[route]


def test_no_v2_route_documents_422(operations: dict[tuple[str, str], dict]) -> None:
    assert not [route for route in V2_ROUTES if 422 in error_statuses(operations[route])]
