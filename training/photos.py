"""Which images of the data set are copies of one source photo, found from the images themselves.

The data set's file names ``_N_M`` do not say it. Each class has as many distinct ``N`` as it has source
photos, but the copies of one photo are spread over every ``N`` of its class: on TRAIN the ``N`` explains
at most 7% of the variance of the white cell's size or colour between images, where copies of one photo
differ by a fraction of a pixel and a unit of colour (``python -m training.photos`` prints both). A split
"by source photo" that trusts the names puts copies of one photo on both sides.

The augmented copies are rotations, flips and shifts of their photo, without zoom, so what they share is
what those leave alone: the white cell's stained area, its mean colour and the mean colour of the
background (CIE Lab, on the pixels of the frame, not the black corners a rotation adds). Two images of one
class whose features all differ by less than ``TOLERANCE`` belong together (and so do chains of them);
then, while a class has more groups than it has distinct ``N``, its smallest group joins the group with
its nearest member on the colours alone (a copy whose cell a shift cut at the frame's edge has a smaller
area). Where the names do not follow the ``_N_M`` pattern, nothing is merged.

The groups are cached beside the preprocessed images (``data.default_cache_dir()``), keyed by the data
set's fingerprint and this module's and the preprocessing's source.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from app import preprocessing
from app.labels import CLASSES
from app.preprocessing import PreprocessingParams

if TYPE_CHECKING:
    from training.data import Sample

# Features: sqrt(cell stain pixels), the cell's mean L*, a*, b*, the background's mean L*, a*, b*.
FEATURES = ("cell_side", "cell_L", "cell_a", "cell_b", "background_L", "background_a", "background_b")
# Copies of one TEST monocyte photo (155 images) spread 0.2 in cell side, 0.1-0.3 in the cell's colour
# and 0.1-0.8 in the background's; different photos of a class differ by several units.
TOLERANCE = np.array([1.0, 1.5, 1.0, 1.0, 3.0, 0.7, 0.7])
SHARED = ((0, "cell_side"), (1, "cell_L"), (4, "background_L"))  # what the summary says the groups explain
NAME_RE = re.compile(r"^_(\d+)_\d+$")  # the data set's file names, _N_M (training.data reads N too)
BLACK = 60  # R+G+B at or below: the black fill of a rotated or shifted copy, not the photo


def features(rgb: np.ndarray, params: PreprocessingParams | None = None) -> np.ndarray:
    """The seven ``FEATURES`` of one decoded RGB image, with the service's stain mask and cell finder."""
    params = params or PreprocessingParams()
    mask = preprocessing.stain_mask(rgb, params)
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    frame = rgb.sum(axis=2, dtype=np.int32) > BLACK
    background = frame & (mask == 0)
    background_mean = lab[background].mean(axis=0) if background.any() else np.zeros(3, np.float32)
    wbc = preprocessing.locate_wbc(mask, params)
    if not wbc.found or wbc.box is None:
        return np.concatenate([[0.0, 0.0, 0.0, 0.0], background_mean]).astype(np.float64)
    box = wbc.box
    cell = mask[box.y:box.y + box.height, box.x:box.x + box.width] > 0
    cell_mean = lab[box.y:box.y + box.height, box.x:box.x + box.width][cell].mean(axis=0)
    return np.concatenate([[np.sqrt(cell.sum())], cell_mean, background_mean]).astype(np.float64)


def _components(values: np.ndarray) -> np.ndarray:
    """Group index of each row: rows within TOLERANCE of each other, and chains of them, share one."""
    parent = np.arange(len(values))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = int(parent[index])
        return index

    scaled = values / TOLERANCE
    for index in range(len(values) - 1):
        near = np.flatnonzero(np.abs(scaled[index + 1:] - scaled[index]).max(axis=1) <= 1.0) + index + 1
        for other in near:
            a, b = root(index), root(int(other))
            if a != b:
                parent[a] = b
    return np.array([root(index) for index in range(len(values))])


def _merge_to(values: np.ndarray, groups: np.ndarray, count: int) -> np.ndarray:
    """Join the smallest group to the one with the nearest member (colours only) until ``count`` remain."""
    groups = groups.copy()
    colours = values[:, 1:] / TOLERANCE[1:]
    while len(np.unique(groups)) > count:
        labels, sizes = np.unique(groups, return_counts=True)
        smallest = labels[np.argmin(sizes)]
        inside = colours[groups == smallest]
        outside = np.flatnonzero(groups != smallest)
        distance = np.abs(colours[outside][:, None, :] - inside[None]).max(axis=2).min(axis=1)
        groups[groups == smallest] = groups[outside[np.argmin(distance)]]
    return groups


def group(values: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Photo index (0, 1, ... in order of first appearance) of each image of one class."""
    groups = _components(values)
    ids = [NAME_RE.match(name) for name in names]
    if ids and all(ids):
        groups = _merge_to(values, groups, len({m.group(1) for m in ids if m}))
    first: dict[int, int] = {}
    return np.array([first.setdefault(int(g), len(first)) for g in groups])


def photo_sources(samples: Sequence[Sample], values: np.ndarray) -> np.ndarray:
    """``<class>/p<K>`` for each sample, K its photo within its class."""
    sources = np.empty(len(samples), dtype=object)
    for label, name in enumerate(CLASSES):
        index = np.array([i for i, s in enumerate(samples) if s.label == label], dtype=np.int64)
        if len(index):
            found = group(values[index], [samples[i].path.stem for i in index])
            sources[index] = [f"{name}/p{k}" for k in found]
    return sources.astype(str)


def _cache_path(cache_dir: Path, data_fingerprint: str, split: str) -> Path:
    digest = hashlib.sha256(data_fingerprint.encode())
    for module in (preprocessing.__file__, __file__):
        digest.update(Path(module).read_bytes())
    return cache_dir / f"photos-{split}-{digest.hexdigest()[:16]}.json"


def sources_of(samples: Sequence[Sample], data_fingerprint: str | None, split: str, cache_dir: Path) -> np.ndarray:
    """Each sample's source photo by appearance; cached by file when ``data_fingerprint`` is given (the
    whole split: a subset's photos are found afresh)."""
    path = _cache_path(cache_dir, data_fingerprint, split) if data_fingerprint else None
    if path is not None and path.is_file():
        cached = json.loads(path.read_text())
        if cached["paths"] == [s.path.name for s in samples]:
            return np.array(cached["sources"])
    values = np.stack([features(preprocessing.decode_image(s.path.read_bytes())) for s in samples])
    sources = photo_sources(samples, values)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"paths": [s.path.name for s in samples], "sources": sources.tolist()}))
    return sources


def _name_share(values: np.ndarray, names: np.ndarray) -> float:
    """Share of the variance of ``values`` between images that the names' ``N`` explains (R squared)."""
    total = float(((values - values.mean()) ** 2).sum())
    within = sum(float(((values[names == n] - values[names == n].mean()) ** 2).sum()) for n in np.unique(names))
    return 1.0 - within / total if total else 0.0


def summary(data_dir: str | None, split: str) -> dict:
    """Photos per class by name and by appearance, and how much the names explain of the cell's size and colour."""
    from training import data

    images_dir = data.resolve_data_dir(data_dir)
    samples = data.list_samples(images_dir, split)
    values = np.stack([features(preprocessing.decode_image(s.path.read_bytes())) for s in samples])
    by_appearance = photo_sources(samples, values)
    by_name = np.array([s.source for s in samples])
    classes = {}
    for label, name in enumerate(CLASSES):
        index = np.array([i for i, s in enumerate(samples) if s.label == label])
        found = values[index][:, 0] > 0
        sizes = np.unique(by_appearance[index], return_counts=True)[1]
        classes[name] = {
            "images": len(index), "photos_by_name": len(set(by_name[index])),
            "photos_by_appearance": len(sizes), "copies_per_photo": [int(sizes.min()), int(np.median(sizes)),
                                                                    int(sizes.max())],
            "name_explains": {feature: round(_name_share(values[index][found][:, k], by_name[index][found]), 3)
                              for k, feature in SHARED},
            "appearance_explains": {feature: round(_name_share(values[index][found][:, k],
                                                               by_appearance[index][found]), 3)
                                    for k, feature in SHARED},
        }
    return {"split": split, "classes": classes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.photos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="the dataset2-master folder (default: $BLOODCELLS_DATA_DIR)")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
    result = {split: summary(args.data_dir, split) for split in ("TRAIN", "TEST")}
    for split, found in result.items():
        print(f"{split}: class, images, photos by name / by appearance, copies per photo (min/median/max), share of "
              "the variance of the cell's side, its L* and the background's L* that the photo explains, by name | "
              "by appearance")
        for name, row in found["classes"].items():
            share = row["name_explains"]
            print(f"  {name:<11}{row['images']:>6}{row['photos_by_name']:>5} /{row['photos_by_appearance']:>4}   "
                  f"{'/'.join(map(str, row['copies_per_photo'])):<12}"
                  f"{share['cell_side']:>6.3f}{share['cell_L']:>7.3f}{share['background_L']:>7.3f}  |"
                  + "".join(f"{row['appearance_explains'][f]:>7.3f}" for _, f in SHARED))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
