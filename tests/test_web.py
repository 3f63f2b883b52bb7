"""The web page in a real browser: Debian's headless Chromium driven by Playwright, against a real server."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest

from app.labels import CLASSES
from tests.live_server import LiveServer, live_server, multipart, request

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REQUIRE_BROWSER = os.environ.get("BLOODCELLS_REQUIRE_BROWSER", "") not in ("", "0", "false")


def browser_missing(reason: str) -> None:
    message = f"{reason}; install it to run the browser tests (see .ci/run)"
    if REQUIRE_BROWSER:
        pytest.fail(message + " (BLOODCELLS_REQUIRE_BROWSER=1 makes them mandatory)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        browser_missing("the Python package playwright is not installed")
    if not CHROMIUM.exists():
        browser_missing(f"{CHROMIUM} is absent (Debian package chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("web"), "--workers", "1", "--model-dir", str(model_dir)) as running:
        yield running


@pytest.fixture
def page(browser, server: LiveServer):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(server.url + "/")
    page.wait_for_selector("#model-select option", state="attached")
    yield page
    context.close()


def api_classify(server: LiveServer, path: Path, model: str) -> dict:
    body, content_type = multipart([("file", path.name, path.read_bytes())])
    status, _, payload = request(server.connection(), "POST", f"/classify?model={model}", body,
                                 {"Content-Type": content_type})
    assert status == 200
    return json.loads(payload)


def test_uploading_an_image_shows_label_probability_bars_and_previews(page, server: LiveServer,
                                                                      test_images: dict[str, Path]) -> None:
    image = test_images["eosinophil"]
    model = page.locator("#model-select").input_value()
    assert model and "default" in page.locator("#model-select option:checked").inner_text()

    page.locator("#file-input").set_input_files(str(image))
    page.wait_for_selector("#result:not([hidden])")

    expected = api_classify(server, image, model)
    assert page.locator("#label").inner_text() == expected["label"]
    bars = page.get_by_role("progressbar")
    assert bars.count() == len(CLASSES)
    for name in CLASSES:
        bar = page.get_by_role("progressbar", name=name)
        assert float(bar.get_attribute("aria-valuenow")) == pytest.approx(expected["probabilities"][name], abs=1e-9)
        row = page.locator(f'.bar-row[data-class="{name}"]')
        assert row.locator(".bar-value").inner_text() == f"{expected['probabilities'][name] * 100:.1f}%"
    assert page.locator(f'.bar-row.best[data-class="{expected["label"]}"]').count() == 1
    natural_width = "img => img.complete ? img.naturalWidth : 0"
    assert page.locator("#preview-overlay").evaluate(natural_width) == 320  # the uploaded image's width
    # The second preview is what the chosen model sees: the cut-out window in crop mode, else the image.
    seen = page.locator("#preview-extracted").evaluate(natural_width)
    mode = expected["mode"]
    assert (0 < seen < 320) if mode == "crop" else seen == 320
    assert mode in page.locator("#preview-extracted-caption").inner_text() or mode == "original"
    assert page.locator("#error").is_hidden()


def test_choosing_another_model_classifies_again_with_that_model(page, server: LiveServer,
                                                            test_images: dict[str, Path]) -> None:
    options = page.locator("#model-select option").evaluate_all("options => options.map(o => o.value)")
    if len(options) < 2:
        pytest.skip("one model loaded")
    image = test_images["monocyte"]
    page.locator("#file-input").set_input_files(str(image))
    page.wait_for_selector("#result:not([hidden])")
    other = next(name for name in options if name != page.locator("#model-select").input_value())
    page.locator("#model-select").select_option(other)
    page.wait_for_function("name => document.querySelector('#model-info').textContent.startsWith(`model ${name} `)",
                           arg=other)
    expected = api_classify(server, image, other)
    bar = page.get_by_role("progressbar", name="monocyte")
    assert float(bar.get_attribute("aria-valuenow")) == pytest.approx(expected["probabilities"]["monocyte"])


def test_an_image_that_is_no_smear_shows_a_warning_instead_of_a_label(page, server: LiveServer,
                                                                      tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 235, np.uint8))
    page.locator("#file-input").set_input_files(str(blank))
    page.wait_for_selector("#result:not([hidden])")
    expected = api_classify(server, blank, page.locator("#model-select").input_value())
    assert expected["looks_like_smear"] is False
    assert page.locator("#label").inner_text() == "this does not look like a stained blood smear"
    assert "not to be trusted" in page.locator("#confidence").inner_text()
    assert page.locator("#result.not-smear").count() == 1
    assert "does not look like a stained blood smear" in page.locator("#warnings").inner_text()


def test_a_screenshot_of_this_page_showing_a_result_is_no_smear(page, server: LiveServer, tmp_path: Path,
                                                                 test_images: dict[str, Path]) -> None:
    page.locator("#file-input").set_input_files(str(test_images["eosinophil"]))
    page.wait_for_selector("#result:not([hidden])")
    screenshot = tmp_path / "screenshot.png"
    page.screenshot(path=str(screenshot), full_page=True)
    answer = api_classify(server, screenshot, page.locator("#model-select").input_value())
    assert answer["looks_like_smear"] is False and answer["smear_score"] < 0.5
    assert "should not be trusted" in answer["warnings"][0]


def test_a_file_that_is_not_an_image_shows_the_apis_message(page, tmp_path: Path) -> None:
    notes = tmp_path / "notes.jpg"
    notes.write_text("meeting notes, not a smear")
    page.locator("#file-input").set_input_files(str(notes))
    alert = page.get_by_role("alert")
    alert.wait_for(state="visible")
    assert "not a readable image" in alert.inner_text() and "not_an_image" in alert.inner_text()
    assert page.locator("#result").is_hidden()


def test_dropping_an_image_on_the_drop_zone_classifies_it(page, test_images: dict[str, Path]) -> None:
    data = list(test_images["neutrophil"].read_bytes())
    page.evaluate("""bytes => {
        const file = new File([new Uint8Array(bytes)], "dropped.jpeg", {type: "image/jpeg"});
        const transfer = new DataTransfer();
        transfer.items.add(file);
        const drop = new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true});
        document.querySelector("#drop-zone").dispatchEvent(drop);
    }""", data)
    page.wait_for_selector("#result:not([hidden])")
    assert page.locator("#label").inner_text() in CLASSES
    assert "dropped.jpeg" in page.locator("#status").inner_text()


# The three requests of one classification: /classify and the two /preprocess previews.
CLASSIFICATION_REQUESTS = re.compile(r"/(classify|preprocess)\?")
REQUESTS_PER_CLASSIFICATION = 3


class HeldBack:
    """Holds back the requests of the next classification the page starts (a slow answer, as for a
    large photo) until ``release``; every later request goes through at once."""

    def __init__(self, page) -> None:
        self.page = page
        self.routes: list = []
        self.settled: set = set()
        page.on("requestfinished", self._settle)
        page.on("requestfailed", self._settle)
        page.route(CLASSIFICATION_REQUESTS, self._route)

    def _settle(self, request) -> None:
        self.settled.add(request)

    def _route(self, route) -> None:
        if len(self.routes) < REQUESTS_PER_CLASSIFICATION:
            self.routes.append(route)
        else:
            route.continue_()

    def wait_until_held(self) -> None:
        deadline = time.monotonic() + 20
        while len(self.routes) < REQUESTS_PER_CLASSIFICATION:
            assert time.monotonic() < deadline, f"only {len(self.routes)} requests started"
            self.page.wait_for_timeout(20)  # lets Playwright dispatch the route events

    def release(self) -> None:
        """Lets the held requests answer, and waits until each has (or was aborted by the page), then
        a little longer, for a page that would still render the late answers."""
        from playwright.sync_api import Error

        for route in self.routes:
            try:
                route.continue_()
            except Error:
                pass  # the page aborted it: nothing is left to answer
        deadline = time.monotonic() + 20
        while not all(route.request in self.settled for route in self.routes):
            assert time.monotonic() < deadline, "the held requests never finished"
            self.page.wait_for_timeout(20)
        self.page.wait_for_timeout(500)


def resized_copy(source: Path, target: Path, scale: float) -> Path:
    image = cv2.imread(str(source))
    assert image is not None, f"cannot read {source}"
    cv2.imwrite(str(target), cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC))
    return target


def natural_width(page, selector: str) -> int:
    return page.locator(selector).evaluate("img => img.complete ? img.naturalWidth : 0")


def assert_page_shows(page, expected: dict, width: int, file_name: str) -> None:
    assert page.locator("#result").is_visible()
    assert page.locator("#label").inner_text() == expected["label"]
    info = page.locator("#model-info").inner_text()
    assert info.startswith(f"model {expected['model']['name']} ") and f"({expected['mode']} mode)" in info
    for name in CLASSES:
        bar = page.get_by_role("progressbar", name=name)
        assert float(bar.get_attribute("aria-valuenow")) == pytest.approx(expected["probabilities"][name], abs=1e-9)
    assert page.locator("#status").inner_text() == f"classified {file_name}"
    page.wait_for_function("() => document.querySelector('#preview-overlay').complete")
    assert natural_width(page, "#preview-overlay") == width  # the preview of this file, not another's
    assert page.locator("#error").is_hidden()


def test_a_newer_file_wins_over_a_slow_answer_for_the_file_before(page, server: LiveServer, tmp_path: Path,
                                                                 test_images: dict[str, Path]) -> None:
    large = resized_copy(test_images["eosinophil"], tmp_path / "large-photo.jpeg", 2.0)  # 640 px wide
    small = resized_copy(test_images["lymphocyte"], tmp_path / "small-image.jpeg", 1.0)  # 320 px wide
    model = page.locator("#model-select").input_value()
    held = HeldBack(page)
    page.locator("#file-input").set_input_files(str(large))
    held.wait_until_held()
    page.locator("#file-input").set_input_files(str(small))
    page.wait_for_selector("#result:not([hidden])")
    held.release()  # the large photo's answers arrive last
    assert_page_shows(page, api_classify(server, small, model), 320, small.name)


def test_a_newer_model_choice_wins_over_a_slow_answer_for_the_model_before(page, server: LiveServer,
                                                                          test_images: dict[str, Path]) -> None:
    options = page.locator("#model-select option").evaluate_all("options => options.map(o => o.value)")
    if len(options) < 2:
        pytest.skip("one model loaded")
    image = test_images["monocyte"]
    other = next(name for name in options if name != page.locator("#model-select").input_value())
    held = HeldBack(page)
    page.locator("#file-input").set_input_files(str(image))
    held.wait_until_held()
    page.locator("#model-select").select_option(other)
    page.wait_for_selector("#result:not([hidden])")
    held.release()
    assert_page_shows(page, api_classify(server, image, other), 320, image.name)


def test_the_answer_for_the_file_before_goes_away_while_the_next_one_runs(page, server: LiveServer, tmp_path: Path,
                                                                         test_images: dict[str, Path]) -> None:
    first = test_images["neutrophil"]
    page.locator("#file-input").set_input_files(str(first))
    page.wait_for_selector("#result:not([hidden])")
    second = resized_copy(test_images["eosinophil"], tmp_path / "second.jpeg", 1.5)  # 480 px wide
    held = HeldBack(page)
    page.locator("#file-input").set_input_files(str(second))
    held.wait_until_held()
    assert page.locator("#result").is_hidden()
    assert page.locator("#label").inner_text() == "" and page.get_by_role("progressbar").count() == 0
    assert page.locator("#preview-overlay").get_attribute("src") is None
    assert page.locator("#status").inner_text() == f"classifying {second.name}…"
    held.release()
    page.wait_for_selector("#result:not([hidden])")
    assert_page_shows(page, api_classify(server, second, page.locator("#model-select").input_value()), 480,
                      second.name)


@pytest.fixture
def offline_page(browser, server: LiveServer):
    """A page that can reach the service only: any request to another host is refused and recorded,
    as are Content-Security-Policy violations and console errors."""
    context = browser.new_context()
    elsewhere: list[str] = []
    origin = urlsplit(server.url).netloc

    def only_the_service(route) -> None:
        if urlsplit(route.request.url).netloc == origin or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_service)
    context.add_init_script("""window.__violations = [];
        document.addEventListener("securitypolicyviolation",
            (event) => window.__violations.push(`${event.violatedDirective} ${event.blockedURI}`));""")
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page, elsewhere, errors
    context.close()


def test_swagger_ui_works_offline_and_tries_a_request(offline_page, server: LiveServer) -> None:
    page, elsewhere, errors = offline_page
    page.goto(server.url + "/docs")
    operation = page.locator(".opblock:has(.opblock-summary-path[data-path='/healthz'])")
    operation.locator(".opblock-summary").click()
    page.get_by_role("button", name="Try it out").click()
    page.get_by_role("button", name="Execute").click()
    status = operation.locator(".live-responses-table .response .response-col_status").first
    status.wait_for()
    assert status.inner_text().strip() == "200"
    assert page.locator(".opblock").count() >= 6  # every endpoint, from /openapi.json
    assert elsewhere == [] and errors == []
    assert page.evaluate("window.__violations") == []


def test_redoc_works_offline(offline_page, server: LiveServer) -> None:
    page, elsewhere, errors = offline_page
    page.goto(server.url + "/redoc")
    page.get_by_role("heading", name=re.compile("Blood cell classifier")).wait_for()
    page.get_by_text("/classify/batch", exact=True).first.wait_for()  # the operations, from /openapi.json
    page.wait_for_load_state("networkidle")  # its search worker and logo too
    assert elsewhere == [] and errors == []
    assert page.evaluate("window.__violations") == []
