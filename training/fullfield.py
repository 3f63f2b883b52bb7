"""A full-field test set built honestly from TEST: each TEST image placed at a random position in a
larger frame of smear background.

Users upload whole microscope frames (640x480 or larger, the white cell small and anywhere), not the
data set's 320x240 crops centred on the cell. The frame's background is tiled from patches of TEST
images that hold no stained pixel (red cells and plasma only), so no TRAIN pixel and no other white
cell enters the set; the black wedges that the data set's own rotation augmentation left in an image
are filled with that background instead of pasted as black. Seeded: the same set every time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from app import preprocessing
from app.preprocessing import PreprocessingParams

FRAME = (480, 640)  # height, width
PATCH = 48


def background_patches(images: list[np.ndarray], params: PreprocessingParams, per_image: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Square patches without any stained pixel (nor black border), from the given RGB images."""
    patches = []
    for rgb in images:
        mask = preprocessing.stain_mask(rgb, params)
        height, width = rgb.shape[:2]
        found = 0
        for _ in range(per_image * 8):
            y, x = int(rng.integers(0, height - PATCH)), int(rng.integers(0, width - PATCH))
            patch = rgb[y:y + PATCH, x:x + PATCH]
            if mask[y:y + PATCH, x:x + PATCH].any() or (patch.max(axis=2) < 40).any():
                continue
            patches.append(patch)
            found += 1
            if found == per_image:
                break
    if not patches:
        raise ValueError("no stain-free background patch found: are these smear images?")
    return np.stack(patches)


def tile_background(patches: np.ndarray, rng: np.random.Generator, frame: tuple[int, int] = FRAME) -> np.ndarray:
    height, width = frame
    rows, cols = -(-height // PATCH), -(-width // PATCH)
    picks = rng.integers(0, len(patches), size=rows * cols)
    canvas = np.concatenate(
        [np.concatenate(list(patches[picks[r * cols:(r + 1) * cols]]), axis=1) for r in range(rows)], axis=0)
    return canvas[:height, :width].copy()


def place(image: np.ndarray, canvas: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    """Paste ``image`` at a random position of ``canvas``; its black (out-of-photo) pixels stay canvas."""
    height, width = image.shape[:2]
    y = int(rng.integers(0, canvas.shape[0] - height + 1))
    x = int(rng.integers(0, canvas.shape[1] - width + 1))
    inside = image.max(axis=2, keepdims=True) >= 40
    region = canvas[y:y + height, x:x + width]
    canvas[y:y + height, x:x + width] = np.where(inside, image, region)
    return canvas, (x, y)


def iter_fullfield(images: Iterable[np.ndarray], sample: list[np.ndarray], params: PreprocessingParams,
                   seed: int = 0, frame: tuple[int, int] = FRAME) -> Iterator[tuple[np.ndarray, tuple[int, int]]]:
    """One full-field frame (and where the image went in it) per input image, in order; the background
    comes from ``sample``. Seeded, and lazy: a 640x480 frame per TEST image would not fit in memory."""
    rng = np.random.default_rng(seed)
    patches = background_patches(sample, params, per_image=4, rng=rng)
    for image in images:
        yield place(image, tile_background(patches, rng, frame), rng)
