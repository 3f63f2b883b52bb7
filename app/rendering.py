"""Preview pictures of the preprocessing, as PNG: what the models see and where the cell was found."""

from __future__ import annotations

from typing import Literal, get_args

import cv2
import numpy as np

from app import preprocessing
from app.model import Classifier
from app.preprocessing import PixelBox, Preprocessed

View = Literal["extracted", "mask", "overlay", "crop"]
Size = Literal["model", "original"]
VIEWS: tuple[str, ...] = get_args(View)
SIZES: tuple[str, ...] = get_args(Size)

# Overlay colours (RGB): stain outline, white-cell box, crop-mode window.
OUTLINE = (0, 200, 0)
CELL_BOX = (255, 200, 0)
CROP_BOX = (0, 170, 255)
# The crop view is square: what a crop-mode model with a square input would see.
CROP_ASPECT = 1.0


def square_window(model: Classifier, prepared: Preprocessed) -> PixelBox:
    """The square window the crop view cuts around the cell (``preprocessing.crop_window`` with aspect 1)."""
    height, width = prepared.mask.shape[:2]
    return preprocessing.crop_window(prepared.wbc.box, height, width, model.params, aspect=CROP_ASPECT)


def _line_width(image: np.ndarray) -> int:
    return max(1, round(min(image.shape[:2]) / 160))


def _rectangle(image: np.ndarray, box: PixelBox, colour: tuple[int, int, int], width: int) -> None:
    cv2.rectangle(image, (box.x, box.y), (box.x + box.width - 1, box.y + box.height - 1), colour, width)


def overlay(rgb: np.ndarray, model: Classifier, prepared: Preprocessed) -> np.ndarray:
    """The uploaded image with the stain mask outlined, the white cell boxed and the crop window drawn."""
    picture = rgb.copy()
    width = _line_width(picture)
    contours, _ = cv2.findContours(prepared.mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(picture, contours, -1, OUTLINE, width)
    if prepared.wbc.found and prepared.wbc.box is not None:
        _rectangle(picture, square_window(model, prepared), CROP_BOX, width)
        _rectangle(picture, prepared.wbc.box, CELL_BOX, width)
    return picture


def render(rgb: np.ndarray, model: Classifier, view: View, size: Size) -> np.ndarray:
    """The requested view; at the model's input size, or at the uploaded image's (the crop's for crop)."""
    prepared = model.prepare(rgb)
    height, width = model.input_size
    if view == "extracted":
        picture = preprocessing.color_extract(rgb, prepared.mask, model.params)
    elif view == "mask":
        picture = prepared.mask
    elif view == "overlay":
        picture = overlay(rgb, model, prepared)
    else:
        box = square_window(model, prepared)
        picture = rgb[box.y:box.y + box.height, box.x:box.x + box.width]
        height = width = max(model.input_size)
    if size == "original":
        return picture
    return preprocessing.resize_to(picture, height, width)


def to_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB or grayscale uint8 image; light compression, since previews are sent once."""
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, encoded = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {image.shape} {image.dtype} image as PNG")
    return encoded.tobytes()
