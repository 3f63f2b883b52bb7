"""White cells cut by the frame's edge, for training the crop model (augmentation ``+edge``).

A cell at the photo's border is cut by it, and the crop window, clamped to the image, shows the part
that is left against one of its sides. The data set's TRAIN has fewer such cells than its TEST (the
located cell touches the frame or the black fill of a rotated copy in 31% of TRAIN's eosinophil images
and 61% of TEST's: ``python -m training.edges``). The cut variant of a TRAIN image is made by the
service's own preprocessing: the image is cut where a border would cross its cell, then
``app.preprocessing.preprocess`` finds the cell again and cuts its window, as it would for a photo
taken that way.

The variants are cached beside the data set's other preprocessed inputs, keyed like them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app import preprocessing
from app.labels import CLASSES
from app.preprocessing import PixelBox, PreprocessingParams
from training import data
from training.photos import BLACK, sources_of

# Share of the cell's width (or height) that the border cuts away, uniform in this range, and the side at random.
EDGE_CUT = (0.15, 0.5)
# Share of training images shown cut in an epoch, each drawn afresh (training.train).
EDGE_SHARE = 0.5


def cut_at_edge(rgb: np.ndarray, box: PixelBox, params: PreprocessingParams, aspect: float,
                rng: np.random.Generator) -> np.ndarray:
    """``rgb`` without what lies beyond a border that crosses the cell in ``box``, on a random side of those
    that leave a whole crop window (``aspect``: the model input's width / height, as ``crop_window`` sizes it;
    a photo is larger than the window, and a narrower strip would be stretched); ``rgb`` itself where no side
    does."""
    height, width = rgb.shape[:2]
    side = max(params.crop_min_side, params.crop_scale * max(box.width, box.height))
    window_w, window_h = side * max(aspect, 1.0), side / min(aspect, 1.0)
    share = float(rng.uniform(*EDGE_CUT))
    cut_x, cut_y = max(1, int(round(share * box.width))), max(1, int(round(share * box.height)))
    cuts = (  # (what is left's extent, the window's along it, the image with the rest cut away)
        (width - box.x - cut_x, window_w, lambda: rgb[:, box.x + cut_x:]),
        (box.x + box.width - cut_x, window_w, lambda: rgb[:, : box.x + box.width - cut_x]),
        (height - box.y - cut_y, window_h, lambda: rgb[box.y + cut_y:]),
        (box.y + box.height - cut_y, window_h, lambda: rgb[: box.y + box.height - cut_y]),
    )
    possible = [cut for left, window, cut in cuts if left >= window]
    return possible[int(rng.integers(len(possible)))]() if possible else rgb


def edge_crop(rgb: np.ndarray, input_size: tuple[int, int], params: PreprocessingParams,
              rng: np.random.Generator) -> np.ndarray:
    """The crop mode's model input for ``rgb`` with its cell cut by a border; the plain one where no cell is found."""
    wbc = preprocessing.locate_wbc(preprocessing.stain_mask(rgb, params), params)
    if wbc.box is not None:
        rgb = cut_at_edge(rgb, wbc.box, params, input_size[1] / input_size[0], rng)
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
               progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The cut variant of every image of ``split`` (uint8), in ``training.data.load_split``'s order, and the
    images' paths relative to the images folder, as ``Arrays.paths`` gives them."""
    images_dir = data.resolve_data_dir(data_dir)
    samples = data.list_samples(images_dir, split)
    if limit_per_class:
        samples = data.subset(samples, limit_per_class)
    cache_dir = cache_dir or data.default_cache_dir()
    path = _cache_file(cache_dir, data.fingerprint(images_dir), split, input_size, params)
    if not limit_per_class and path.exists():
        with np.load(path) as cached:
            return cached["images"], cached["paths"]
    paths = np.array([sample.path.relative_to(images_dir).as_posix() for sample in samples])

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
        np.savez(tmp, images=images, paths=paths)
        tmp.replace(path)
    return images, paths


_NEAR = 3  # pixels: how close to the frame, or to the fill, a cell counts as cut by it


def touches_edge(rgb: np.ndarray, box: PixelBox) -> bool:
    """Whether the cell in ``box`` reaches the frame's edge or the black fill of a rotated copy."""
    height, width = rgb.shape[:2]
    if box.x <= _NEAR or box.y <= _NEAR or box.x + box.width >= width - _NEAR or box.y + box.height >= height - _NEAR:
        return True
    around = rgb[max(box.y - _NEAR, 0): box.y + box.height + _NEAR, max(box.x - _NEAR, 0): box.x + box.width + _NEAR]
    return bool((around.sum(axis=2, dtype=np.int32) <= BLACK).mean() > 0.02)


def where_cells_are(data_dir: str | None, split: str, params: PreprocessingParams | None = None,
                    limit_per_class: int | None = None) -> tuple[list[data.Sample], list[str]]:
    """Each image of ``split`` (``training.data.load_split``'s subset with ``limit_per_class``) and where its
    located cell is: "inside", "at_edge" or "no_cell"."""
    params = params or PreprocessingParams()
    samples = data.list_samples(data.resolve_data_dir(data_dir), split)
    if limit_per_class:
        samples = data.subset(samples, limit_per_class)

    def one(sample: data.Sample) -> str:
        rgb = preprocessing.decode_image(sample.path.read_bytes())
        wbc = preprocessing.locate_wbc(preprocessing.stain_mask(rgb, params), params)
        return "no_cell" if wbc.box is None else "at_edge" if touches_edge(rgb, wbc.box) else "inside"

    with ThreadPoolExecutor() as pool:
        return samples, list(pool.map(one, samples))


def summary(samples: list[data.Sample], kinds: list[str]) -> dict[str, dict[str, int]]:
    """Per class: images, those whose located cell touches the edge, and those where no cell is found."""
    counts: dict[str, Counter] = {name: Counter() for name in CLASSES}
    for sample, kind in zip(samples, kinds):
        counts[CLASSES[sample.label]].update(("images", kind))
    return {name: {key: counter[key] for key in ("images", "at_edge", "no_cell")} for name, counter in counts.items()}


def photos_at_edge(sources: np.ndarray, kinds: list[str]) -> dict[str, int]:
    """The source photos none of whose copies shows its cell whole (at the edge, or not found): images each."""
    found: dict[str, Counter] = {}
    for source, kind in zip(sources.tolist(), kinds):
        found.setdefault(source, Counter())[kind] += 1
    return {source: sum(counter.values()) for source, counter in sorted(found.items()) if not counter["inside"]}


def held_out_by_cell(kfold_dir: Path, data_dir: str | None,
                     cache_dir: Path | None = None) -> dict[str, dict[str, float]]:
    """Accuracy with flips of a ``bloodcells kfold`` run's fold networks (``kfold_dir``: its kfold.json and
    fold-*/) on their held-out images, those with the cell cut by the edge (or not found) apart from those with it whole;
    every image is held out once, so each figure pools the folds. Needs TensorFlow."""
    import keras

    from training import tta
    from training.config import TrainConfig
    from training.train import predict

    kfold = json.loads((kfold_dir / "kfold.json").read_text())
    config = TrainConfig.from_dict(kfold["config"])
    # The folds as training.kfold dealt them: the same subset, photos and seed.
    full = data.load_split(data_dir, "TRAIN", (config.mode,), config.size, config.params, cache_dir=cache_dir,
                           limit_per_class=config.limit_per_class, progress=False, photos=config.photos)[config.mode]
    _, kinds = where_cells_are(data_dir, "TRAIN", config.params, config.limit_per_class)
    cut = np.array([where != "inside" for where in kinds])
    correct = np.zeros(len(cut), bool)
    for index, (_, held_out) in enumerate(data.kfold_by_source(full.labels, full.sources, kfold["folds"],
                                                               config.seed)):
        model = keras.models.load_model(kfold_dir / f"fold-{index}-of-{kfold['folds']}" / "model.keras")
        probabilities = tta.predict_numpy(lambda x: predict(model, x), full.images[held_out], "flips")  # noqa: B023
        correct[held_out] = probabilities.argmax(axis=1) == full.labels[held_out]
    return {name: {"accuracy": float(correct[chosen].mean()) if chosen.any() else float("nan"),
                   "images": int(chosen.sum())}
            for name, chosen in (("at_edge", cut), ("whole", ~cut))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.edges",
                                     description="How many images of each class have their white cell cut by the "
                                                 "frame's edge (or a rotated copy's black fill), by split, and which "
                                                 "source photos have it so in every copy.")
    parser.add_argument("--data-dir", help="data set folder (dataset2-master); default: $BLOODCELLS_DATA_DIR")
    parser.add_argument("--kfold", type=Path, nargs="+", metavar="DIR",
                        help="instead: the held-out accuracy (with flips) of each bloodcells kfold run's networks "
                             "(DIR holds its kfold.json), on images with the cell at the edge and on the others")
    args = parser.parse_args(argv)
    for kfold_dir in args.kfold or ():
        figures = held_out_by_cell(kfold_dir, args.data_dir)
        print(f"{kfold_dir}: held out, with flips: cell at the edge or not found {figures['at_edge']['accuracy']:.3f} "
              f"of {figures['at_edge']['images']} images; cell whole {figures['whole']['accuracy']:.3f} of "
              f"{figures['whole']['images']}")
    if args.kfold:
        return 0
    images_dir = data.resolve_data_dir(args.data_dir)
    for split in data.SPLITS:
        samples, kinds = where_cells_are(args.data_dir, split)
        for name, counts in summary(samples, kinds).items():
            share = counts["at_edge"] / max(counts["images"], 1)
            print(f"{split} {name}: {counts['at_edge']} of {counts['images']} images ({share:.0%}) have their "
                  f"cell at the edge; no cell found in {counts['no_cell']}")
        sources = sources_of(samples, data.fingerprint(images_dir), split, data.default_cache_dir())
        whole = photos_at_edge(sources, kinds)
        listed = ", ".join(f"{source} ({images})" for source, images in whole.items()) or "none"
        print(f"{split} photos with no copy showing the cell whole ({len(whole)} of {len(set(sources.tolist()))}): "
              f"{listed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
