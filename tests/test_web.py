"""The web page in a real browser: Debian's headless Chromium driven by Playwright, against a real server."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

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
    page.wait_for_selector("#mode-select option", state="attached")
    yield page
    context.close()


def api_classify(server: LiveServer, path: Path, mode: str) -> dict:
    body, content_type = multipart([("file", path.name, path.read_bytes())])
    status, _, payload = request(server.connection(), "POST", f"/classify?mode={mode}", body,
                                 {"Content-Type": content_type})
    assert status == 200
    return json.loads(payload)


def test_uploading_an_image_shows_label_probability_bars_and_previews(page, server: LiveServer,
                                                                      test_images: dict[str, Path]) -> None:
    image = test_images["eosinophil"]
    mode = page.locator("#mode-select").input_value()
    assert mode and "default" in page.locator("#mode-select option:checked").inner_text()

    page.locator("#file-input").set_input_files(str(image))
    page.wait_for_selector("#result:not([hidden])")

    expected = api_classify(server, image, mode)
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


def test_changing_the_mode_classifies_again_with_that_model(page, server: LiveServer,
                                                            test_images: dict[str, Path]) -> None:
    options = page.locator("#mode-select option").evaluate_all("options => options.map(o => o.value)")
    if len(options) < 2:
        pytest.skip("one model loaded")
    image = test_images["monocyte"]
    page.locator("#file-input").set_input_files(str(image))
    page.wait_for_selector("#result:not([hidden])")
    other = next(mode for mode in options if mode != page.locator("#mode-select").input_value())
    page.locator("#mode-select").select_option(other)
    page.wait_for_function("mode => document.querySelector('#model-info').textContent.includes(`(${mode} mode)`)",
                           arg=other)
    expected = api_classify(server, image, other)
    bar = page.get_by_role("progressbar", name="monocyte")
    assert float(bar.get_attribute("aria-valuenow")) == pytest.approx(expected["probabilities"]["monocyte"])


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
