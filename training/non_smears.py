"""A varied set of images that are not stained blood smears, drawn with known content, for the smear check.

Kinds (each drawn at several sizes and seeds): blank images (white, grey, black, any colour), noise,
gradients, documents (lines of text), charts (bars, lines, axes), screenshots (a web page's bars, buttons,
text and a photo-like panel), a purple ellipse on grey (a "cell" with no smear around it), smooth photo-like
scenes (sky, ground, blurred objects), other stains (a smear re-coloured: green, blue, brown, greyscale), and
line drawings. ``draw(kind, seed)`` returns one RGB uint8 image; ``KINDS`` names them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import cv2
import numpy as np

Image = np.ndarray
SIZES = ((240, 320), (480, 640), (600, 800), (300, 300))


def _size(rng: np.random.Generator) -> tuple[int, int]:
    return SIZES[int(rng.integers(len(SIZES)))]


def blank(rng: np.random.Generator) -> Image:
    h, w = _size(rng)
    colour = rng.choice([[255, 255, 255], [128, 128, 128], [0, 0, 0], list(rng.integers(0, 256, 3))])
    return np.full((h, w, 3), colour, np.uint8)


def noise(rng: np.random.Generator) -> Image:
    h, w = _size(rng)
    if rng.random() < 0.5:
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    grey = rng.normal(128, 40, (h, w, 1)).clip(0, 255).astype(np.uint8)
    return np.repeat(grey, 3, axis=2)


def gradient(rng: np.random.Generator) -> Image:
    h, w = _size(rng)
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, w)[None, :, None]
    return np.repeat((a * (1 - t) + b * t).astype(np.uint8), h, axis=0)


def _text_lines(image: Image, rng: np.random.Generator, top: int, left: int, width: int, lines: int,
                colour: tuple[int, int, int] = (20, 20, 20)) -> None:
    words = ["blood", "cell", "result", "label", "model", "service", "the", "of", "and", "eosinophil", "report", "page"]
    for i in range(lines):
        text = " ".join(rng.choice(words, int(rng.integers(3, 9))))
        cv2.putText(image, text[: max(4, width // 9)], (left, top + 22 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1,
                    cv2.LINE_AA)


def document(rng: np.random.Generator) -> Image:
    h, w = _size(rng)
    page = np.full((h, w, 3), int(rng.integers(235, 256)), np.uint8)
    _text_lines(page, rng, 30, 20, w - 40, (h - 40) // 22)
    return page


def chart(rng: np.random.Generator) -> Image:
    h, w = _size(rng)
    image = np.full((h, w, 3), 255, np.uint8)
    cv2.line(image, (40, h - 30), (w - 10, h - 30), (0, 0, 0), 2)
    cv2.line(image, (40, 10), (40, h - 30), (0, 0, 0), 2)
    bars = int(rng.integers(3, 9))
    for i in range(bars):
        x = 50 + i * (w - 70) // bars
        top = int(rng.integers(20, h - 40))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            cv2.rectangle(image, (x, top), (x + (w - 70) // bars - 8, h - 31), colour, -1)
        else:
            cv2.circle(image, (x, top), 4, colour, -1)
    return image


def screenshot(rng: np.random.Generator) -> Image:
    h, w = _size(rng)
    image = np.full((h, w, 3), 248, np.uint8)
    cv2.rectangle(image, (0, 0), (w, 40), (60, 40, 110), -1)  # a purple title bar
    _text_lines(image, rng, 26, 10, w // 2, 1, (255, 255, 255))
    cv2.rectangle(image, (20, 60), (w // 2, h - 20), (225, 225, 230), -1)
    _text_lines(image, rng, 80, 30, w // 2 - 30, (h - 100) // 22)
    for i in range(4):  # probability bars
        cv2.rectangle(image, (w // 2 + 20, 70 + 30 * i), (w // 2 + 20 + int(rng.integers(10, w // 2 - 40)), 85 + 30 * i),
                      (150, 60, 160), -1)
    cv2.rectangle(image, (w // 2 + 20, 200), (w - 20, 230), (40, 110, 200), -1)  # a button
    return image


def ellipse_on_grey(rng: np.random.Generator) -> Image:
    h, w = _size(rng)
    image = np.full((h, w, 3), int(rng.integers(90, 230)), np.uint8)
    axes = (int(rng.integers(15, w // 6)), int(rng.integers(15, h // 6)))
    cv2.ellipse(image, (w // 2, h // 2), axes, float(rng.integers(0, 180)), 0, 360, (120, 50, 160), -1)
    return image


def scene(rng: np.random.Generator) -> Image:
    """Photo-like: a sky over ground, a few blurred objects, sensor noise."""
    h, w = _size(rng)
    horizon = int(rng.integers(h // 4, 3 * h // 4))
    image = np.zeros((h, w, 3), np.uint8)
    image[:horizon] = rng.integers(120, 230, 3)
    image[horizon:] = rng.integers(20, 160, 3)
    for _ in range(int(rng.integers(3, 10))):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(image, centre, int(rng.integers(5, max(6, w // 5))), tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
    blurred = cv2.GaussianBlur(image, (0, 0), 3).astype(np.float64)
    return (blurred + rng.normal(0, 6, blurred.shape)).clip(0, 255).astype(np.uint8)


def drawing(rng: np.random.Generator) -> Image:
    h, w = _size(rng)
    image = np.full((h, w, 3), 255, np.uint8)
    for _ in range(int(rng.integers(5, 30))):
        p, q = (int(rng.integers(0, w)), int(rng.integers(0, h))), (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(image, p, q, tuple(int(c) for c in rng.integers(0, 200, 3)), int(rng.integers(1, 4)))
    return image


def other_stain(smear: Image, rng: np.random.Generator) -> Image:
    """A real or synthetic smear re-coloured as no Wright-Giemsa smear looks: hue turned, or grey, or brown."""
    choice = int(rng.integers(3))
    if choice == 0:
        hsv = cv2.cvtColor(smear, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(rng.integers(40, 100))) % 180
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if choice == 1:
        return np.repeat(cv2.cvtColor(smear, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    brown = np.array([0.85, 0.6, 0.35])  # a DAB-like brown cast
    return (smear.astype(np.float32) * brown).clip(0, 255).astype(np.uint8)


KINDS: dict[str, Callable[[np.random.Generator], Image]] = {
    "blank": blank, "noise": noise, "gradient": gradient, "document": document, "chart": chart,
    "screenshot": screenshot, "ellipse on grey": ellipse_on_grey, "photo-like scene": scene, "line drawing": drawing,
}


def draw_all(per_kind: int, smears: list[Image] | None = None, seed: int = 0) -> Iterator[tuple[str, Image]]:
    """``per_kind`` images of every kind; "other stain" re-colours ``smears`` (real ones where given)."""
    rng = np.random.default_rng(seed)
    for kind, make in KINDS.items():
        for _ in range(per_kind):
            yield kind, make(rng)
    for i in range(per_kind if smears else 0):
        assert smears is not None
        yield "other stain", other_stain(smears[i % len(smears)], rng)
