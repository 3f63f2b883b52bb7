"""White cells cut by the frame's edge, for training the crop model (augmentation ``+edge``).

A cell at the photo's border is cut by it, and the crop window, clamped to the image, shows the part
that is left against one of its sides. The data set's TRAIN has fewer such cells than its TEST (the
located cell touches the frame or the black fill of a rotated copy in 31% of TRAIN's eosinophil images
and 63% of TEST's). The cut variant of a TRAIN image is made by the service's own preprocessing: the
image is cut where a border would cross its cell, then ``app.preprocessing.preprocess`` finds the cell
again and cuts its window, as it would for a photo taken that way.

The variants are cached beside the data set's other preprocessed inputs, keyed like them.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app import preprocessing
from app.preprocessing import PixelBox, PreprocessingParams
from training import data

# Share of the cell's width (or height) that the border cuts away, uniform in this range, and the side at random.
EDGE_CUT = (0.15, 0.5)
# Share of training images shown cut in an epoch, each drawn afresh (training.train).
EDGE_SHARE = 0.5


def cut_at_edge(rgb: np.ndarray, box: PixelBox, params: PreprocessingParams,
                rng: np.random.Generator) -> np.ndarray:
    """``rgb`` without what lies beyond a border that crosses the cell in ``box``, on a random side of those
    that leave a whole crop window (a photo is larger than the window; a narrower strip would be stretched);
    ``rgb`` itself where no side does."""
    height, width = rgb.shape[:2]
    window = max(params.crop_min_side, params.crop_scale * max(box.width, box.height))
    share = float(rng.uniform(*EDGE_CUT))
    cut_x, cut_y = max(1, int(round(share * box.width))), max(1, int(round(share * box.height)))
    cuts = (  # (what is left's extent, the image with it cut away)
        (width - box.x - cut_x, lambda: rgb[:, box.x + cut_x:]),
        (box.x + box.width - cut_x, lambda: rgb[:, : box.x + box.width - cut_x]),
        (height - box.y - cut_y, lambda: rgb[box.y + cut_y:]),
        (box.y + box.height - cut_y, lambda: rgb[: box.y + box.height - cut_y]),
    )
    possible = [cut for left, cut in cuts if left >= window]
    return possible[int(rng.integers(len(possible)))]() if possible else rgb


def edge_crop(rgb: np.ndarray, input_size: tuple[int, int], params: PreprocessingParams,
              rng: np.random.Generator) -> np.ndarray:
    """The crop mode's model input for ``rgb`` with its cell cut by a border; the plain one where no cell is found."""
    wbc = preprocessing.locate_wbc(preprocessing.stain_mask(rgb, params), params)
    if wbc.box is not None:
        rgb = cut_at_edge(rgb, wbc.box, params, rng)
    return preprocessing.preprocess(rgb, "crop", input_size, params).model_image


def _rng(relative_path: str) -> np.random.Generator:
    # One fixed draw per file: the cache holds one cut variant of each image, the same on every machine.
    return np.random.default_rng(zlib.crc32(relative_path.encode()))


def _cache_file(cache_dir: Path, data_fingerprint: str, split: str, input_size: tuple[int, int],
                params: PreprocessingParams) -> Path:
    digest = hashlib.sha256(data_fingerprint.encode())
    for module in (preprocessing.__file__, __file__):
        digest.update(Path(module).read_bytes())
    digest.update(json.dumps([split, list(input_size), params.to_dict()], sort_keys=True).encode())
    return cache_dir / f"{split}-crop-edge-{digest.hexdigest()[:16]}.npz"


def load_split(data_dir: str | None, split: str, input_size: tuple[int, int], params: PreprocessingParams,
               cache_dir: Path | None = None, limit_per_class: int | None = None,
               progress: bool = True) -> np.ndarray:
    """The cut variant of every image of ``split``, in ``training.data.load_split``'s order (uint8)."""
    images_dir = data.resolve_data_dir(data_dir)
    samples = data.list_samples(images_dir, split)
    if limit_per_class:
        samples = data.subset(samples, limit_per_class)
    cache_dir = cache_dir or data.default_cache_dir()
    path = _cache_file(cache_dir, data.fingerprint(images_dir), split, input_size, params)
    if not limit_per_class and path.exists():
        with np.load(path) as cached:
            return cached["images"]

    def one(sample: data.Sample) -> np.ndarray:
        relative = sample.path.relative_to(images_dir).as_posix()
        rgb = preprocessing.decode_image(sample.path.read_bytes())
        return edge_crop(rgb, input_size, params, _rng(relative))

    with ThreadPoolExecutor() as pool:  # OpenCV releases the GIL
        images = np.stack(list(tqdm(pool.map(one, samples), total=len(samples), unit="img",
                                    desc=f"cutting {split}'s cells at an edge", disable=not progress)))
    if not limit_per_class:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, images=images)
        tmp.replace(path)
    return images
