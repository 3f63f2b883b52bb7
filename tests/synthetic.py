"""Synthetic smear images with known ground truth: a purple-stained white cell among pink red cells
on a light background. No data-set image is ever committed; tests draw these instead."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

BACKGROUND = (216, 204, 212)  # RGB, the pale background of a smear
RED_CELL = (208, 152, 164)  # pale pink, like the data set's erythrocytes
RED_CELL_CENTRE = (214, 174, 182)  # their paler central pallor
WHITE_CELL = (118, 82, 192)  # purple-stained nucleus


@dataclass
class Smear:
    rgb: np.ndarray
    wbc_mask: np.ndarray  # bool, the drawn white cell(s)
    rbc_masks: list[np.ndarray]  # bool, one per red cell
    wbc_boxes: list[tuple[int, int, int, int]]  # x, y, w, h of each drawn white cell, largest first


def _disc(shape: tuple[int, int], centre: tuple[int, int], radius: int) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, centre, radius, 255, -1)
    return mask > 0


def make_smear(width: int = 320, height: int = 240, wbcs: tuple[tuple[int, int, int], ...] = ((160, 120, 34),),
               n_rbc: int = 14, seed: int = 0, noise: float = 3.0) -> Smear:
    """``wbcs``: (x, y, radius) of each white cell; red cells are placed where they do not overlap one."""
    rng = np.random.default_rng(seed)
    rgb = np.empty((height, width, 3), np.float32)
    rgb[:] = BACKGROUND
    shape = (height, width)
    wbc_mask = np.zeros(shape, bool)
    for x, y, r in wbcs:
        wbc_mask |= _disc(shape, (x, y), r)
    rbc_masks: list[np.ndarray] = []
    attempts = 0
    while len(rbc_masks) < n_rbc and attempts < 500:
        attempts += 1
        r = int(rng.integers(16, 24))
        centre = (int(rng.integers(r, width - r)), int(rng.integers(r, height - r)))
        disc = _disc(shape, centre, r)
        grown = _disc(shape, centre, r + 4)
        if (grown & wbc_mask).any() or any((grown & other).any() for other in rbc_masks):
            continue
        rbc_masks.append(disc)
        rgb[disc] = RED_CELL
        rgb[_disc(shape, centre, r // 2)] = RED_CELL_CENTRE
    rgb[wbc_mask] = WHITE_CELL
    rgb += rng.normal(0.0, noise, rgb.shape)
    image = np.clip(rgb, 0, 255).astype(np.uint8)
    boxes = sorted(((x - r, y - r, 2 * r + 1, 2 * r + 1) for x, y, r in wbcs), key=lambda b: -b[2])
    return Smear(rgb=image, wbc_mask=wbc_mask, rbc_masks=rbc_masks, wbc_boxes=boxes)


def encode(rgb: np.ndarray, ext: str = ".png") -> bytes:
    ok, buffer = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buffer.tobytes()


def png_bytes(width: int, height: int, rows: int = 4) -> bytes:
    """A PNG declaring ``width`` x ``height`` RGB pixels whose data holds only ``rows`` compressed rows of
    zeros: a decompression bomb when the dimensions are huge (a few hundred bytes on disk)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    compressor = zlib.compressobj(9)
    data = b""
    for _ in range(max(0, rows)):
        data += compressor.compress(b"\x00" + b"\x00" * (3 * width))
    data += compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
