"""The straightforward preprocessing that the models were trained on, kept as the reference that the
faster functions of ``app.preprocessing`` must match bit for bit.

These are ``decode_image``, ``stain_mask`` and ``locate_wbc`` as they were before they were made
faster (commit 5bc269d): whole-image closing and labelling with 32-bit labels, a BGR decode then a
channel swap. ``reference_preprocess`` is ``app.preprocessing.preprocess`` built on them.
"""

from __future__ import annotations

import cv2
import numpy as np

from app.preprocessing import (
    MODES,
    ImageDecodeError,
    PixelBox,
    Preprocessed,
    PreprocessingParams,
    WbcLocation,
    _ensure_rgb_uint8,
    color_extract,
    crop_window,
    read_header,
    resize_to,
)


def decode_image(data: bytes, max_pixels: int = 40_000_000) -> np.ndarray:
    fmt, width, height = read_header(data, max_pixels)
    buffer = np.frombuffer(data, dtype=np.uint8)
    flags = cv2.IMREAD_COLOR if fmt == "JPEG" else cv2.IMREAD_UNCHANGED
    image = cv2.imdecode(buffer, flags)
    if image is None or image.size == 0:
        raise ImageDecodeError("corrupt", f"the {fmt} file is truncated or corrupt")
    return _ensure_rgb_uint8(image, decoded_as_bgr=True)


def _ellipse(size: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def stain_mask(rgb: np.ndarray, params: PreprocessingParams) -> np.ndarray:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    mask = cv2.inRange(hsv, (params.hue_min, params.sat_min, params.val_min), (params.hue_max, 255, 255))
    if params.open_kernel > 1:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _ellipse(params.open_kernel))
    if params.min_speck_area > 0:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        keep = np.where(stats[:, cv2.CC_STAT_AREA] >= params.min_speck_area, 255, 0).astype(np.uint8)
        keep[0] = 0
        mask = keep[labels]
    return mask


def locate_wbc(mask: np.ndarray, params: PreprocessingParams) -> WbcLocation:
    merged = mask
    if params.locate_close_kernel > 1:
        merged = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _ellipse(params.locate_close_kernel))
    count, _, stats, _ = cv2.connectedComponentsWithStats(merged, connectivity=8)
    total = float(mask.shape[0] * mask.shape[1])
    cells = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        if area >= params.min_cell_area:
            cells.append((PixelBox(x, y, w, h), area / total))
    cells.sort(key=lambda cell: cell[1], reverse=True)
    # Beside the largest, only regions of a white cell's size (platelet clumps are smaller).
    cells = cells[:1] + [cell for cell in cells[1:] if cell[1] * total >= 2.5 * params.min_cell_area]
    if not cells:
        return WbcLocation(found=False)
    box, fraction = cells[0]
    return WbcLocation(found=True, box=box, area_fraction=fraction, cells=tuple(cells))


def reference_preprocess(rgb: np.ndarray, mode: str, input_size: tuple[int, int],
                         params: PreprocessingParams) -> Preprocessed:
    assert mode in MODES
    height, width = input_size
    mask = stain_mask(rgb, params)
    wbc = locate_wbc(mask, params)
    image_h, image_w = rgb.shape[:2]
    window = PixelBox(0, 0, image_w, image_h)
    if mode == "original":
        picture = rgb
    elif mode == "color":
        picture = color_extract(rgb, mask, params)
    else:
        window = crop_window(wbc.box, image_h, image_w, params, aspect=width / height)
        picture = rgb[window.y:window.y + window.height, window.x:window.x + window.width]
    return Preprocessed(model_image=resize_to(picture, height, width), mask=mask, wbc=wbc, window=window, rgb=rgb,
                        params=params)


def differences(fast: Preprocessed, reference: Preprocessed) -> list[str]:
    """What differs between two preprocessing results (empty: bit-identical)."""
    found = []
    for name in ("model_image", "mask"):
        a, b = getattr(fast, name), getattr(reference, name)
        if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
            found.append(name)
    if fast.wbc != reference.wbc:
        found.append("wbc")
    if fast.window != reference.window:
        found.append("window")
    return found
