"""The Kaggle "Blood Cell Images" data set: discovery, source-photo split and a preprocessing cache.

Layout (as downloaded): ``<data-dir>/images/{TRAIN,TEST}/<CLASS>/_N_M.jpeg``. ``N`` was read as the
source photo of its class and ``M`` as the augmented copy; ``N`` does not identify the photo
(``training.photos`` finds the photos from the images). Images go through ``app.preprocessing``,
the same code the service runs, and the uint8 model inputs are cached on disk: the cache key covers
the files, the preprocessing parameters and the preprocessing source code, so a change to any of
them rebuilds the cache instead of training on stale inputs.

This module needs no TensorFlow: the ONNX evaluation uses it too.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app import preprocessing
from app.labels import CLASSES
from app.preprocessing import Mode, PreprocessingParams
from training.config import PHOTOS
from training.photos import NAME_RE, sources_of

SPLITS = ("TRAIN", "TEST")
DATA_DIR_ENV = "BLOODCELLS_DATA_DIR"


class DataSetError(RuntimeError):
    """The data set is missing or not in the Kaggle layout; the message says what to do."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    source: str  # "<class>/<N>", from the file name (not the photo: load_split(photos="appearance") finds it)


@dataclass(frozen=True)
class Arrays:
    """One split preprocessed for one mode."""

    images: np.ndarray  # N x H x W x 3 uint8 (RGB), input of preprocessing.to_tensor
    labels: np.ndarray  # N int64, index into CLASSES
    sources: np.ndarray  # N str, see Sample.source
    paths: np.ndarray  # N str, relative to the images directory


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The ``images`` directory of the data set, from an option or ``BLOODCELLS_DATA_DIR``."""
    raw = data_dir or os.environ.get(DATA_DIR_ENV)
    if not raw:
        raise DataSetError(
            f"no data set given: pass --data-dir or set {DATA_DIR_ENV} to the 'dataset2-master' folder "
            "of the Kaggle 'Blood Cell Images' download (it holds images/TRAIN and images/TEST)"
        )
    root = Path(raw).expanduser()
    if not root.is_dir():
        raise DataSetError(f"data set folder {root} does not exist; point --data-dir or {DATA_DIR_ENV} at 'dataset2-master'")
    for candidate in (root / "images", root, root / "dataset2-master" / "images"):
        if all((candidate / split).is_dir() for split in SPLITS):
            missing = [
                f"{split}/{name.upper()}" for split in SPLITS for name in CLASSES
                if not (candidate / split / name.upper()).is_dir()
            ]
            if missing:
                raise DataSetError(f"{candidate} lacks the class folders {', '.join(missing)}: not the Kaggle layout")
            return candidate
    raise DataSetError(
        f"{root} is not in the Kaggle layout: expected images/TRAIN/<CLASS>/*.jpeg and images/TEST/<CLASS>/*.jpeg "
        f"with CLASS in {', '.join(c.upper() for c in CLASSES)}"
    )


def list_samples(images_dir: Path, split: str) -> list[Sample]:
    if split not in SPLITS:
        raise DataSetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    samples = []
    for label, name in enumerate(CLASSES):
        for path in sorted((images_dir / split / name.upper()).glob("*.jpeg")):
            match = NAME_RE.match(path.stem)
            # A file outside the _N_M naming is its own source photo: never split from a sibling.
            photo = match.group(1) if match else path.stem
            samples.append(Sample(path=path, label=label, source=f"{name}/{photo}"))
    if not samples:
        raise DataSetError(f"no .jpeg files under {images_dir / split}")
    return samples


def fingerprint(images_dir: Path) -> str:
    """sha256 over every file's relative path and size: identifies the data set cheaply."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for sample in list_samples(images_dir, split):
            rel = sample.path.relative_to(images_dir).as_posix()
            digest.update(f"{rel}\0{sample.path.stat().st_size}\n".encode())
    return digest.hexdigest()


def _cache_file(cache_dir: Path, data_fingerprint: str, split: str, mode: Mode,
                input_size: tuple[int, int], params: PreprocessingParams) -> Path:
    digest = hashlib.sha256()
    digest.update(data_fingerprint.encode())
    digest.update(Path(preprocessing.__file__).read_bytes())
    digest.update(json.dumps([split, mode, list(input_size), params.to_dict()], sort_keys=True).encode())
    return cache_dir / f"{split}-{mode}-{digest.hexdigest()[:16]}.npz"


def default_cache_dir() -> Path:
    return Path(os.environ.get("BLOODCELLS_CACHE_DIR", Path.home() / ".cache" / "bloodcells"))


def _preprocess_file(path: Path, modes: tuple[Mode, ...], input_size: tuple[int, int],
                     params: PreprocessingParams) -> list[np.ndarray]:
    rgb = preprocessing.decode_image(path.read_bytes())
    return [preprocessing.preprocess(rgb, mode, input_size, params).model_image for mode in modes]


def load_split(data_dir: str | os.PathLike | None, split: str, modes: tuple[Mode, ...],
               input_size: tuple[int, int], params: PreprocessingParams | None = None,
               cache_dir: Path | None = None, limit_per_class: int | None = None,
               progress: bool = True, photos: str = "names") -> dict[Mode, Arrays]:
    """Preprocess a split for several modes, decoding each file once; cached unless ``limit_per_class``.

    ``photos``: how ``Arrays.sources`` names each image's source photo: "names", the file name's ``_N_``
    (cheap, but not the photo: see ``training.photos``), or "appearance" (``training.photos``)."""
    if photos not in PHOTOS:
        raise DataSetError(f"unknown way to find source photos {photos!r}; choose one of {', '.join(PHOTOS)}")
    images_dir = resolve_data_dir(data_dir)
    samples = list_samples(images_dir, split)
    if limit_per_class:
        samples = subset(samples, limit_per_class)
    cache_dir = cache_dir or default_cache_dir()
    data_fingerprint = fingerprint(images_dir)
    arrays = _load_split(images_dir, samples, data_fingerprint, split, modes, input_size, params or PreprocessingParams(),
                         cache_dir, limit_per_class, progress)
    if photos == "names":
        return arrays
    found = sources_of(samples, None if limit_per_class else data_fingerprint, split, cache_dir)
    return {mode: replace(loaded, sources=found) for mode, loaded in arrays.items()}


def _load_split(images_dir: Path, samples: list[Sample], data_fingerprint: str, split: str, modes: tuple[Mode, ...],
                input_size: tuple[int, int], params: PreprocessingParams, cache_dir: Path,
                limit_per_class: int | None, progress: bool) -> dict[Mode, Arrays]:
    result: dict[Mode, Arrays] = {}
    todo: list[Mode] = []
    for mode in modes:
        path = _cache_file(cache_dir, data_fingerprint, split, mode, input_size, params)
        if not limit_per_class and path.exists():
            with np.load(path) as cached:
                result[mode] = Arrays(**{name: cached[name] for name in Arrays.__dataclass_fields__})
        else:
            todo.append(mode)
    if not todo:
        return result
    labels = np.array([s.label for s in samples], dtype=np.int64)
    sources = np.array([s.source for s in samples])
    paths = np.array([s.path.relative_to(images_dir).as_posix() for s in samples])
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # OpenCV releases the GIL
        jobs = pool.map(lambda s: _preprocess_file(s.path, tuple(todo), input_size, params), samples)
        outputs = list(tqdm(jobs, total=len(samples), desc=f"preprocessing {split} ({', '.join(todo)})",
                            disable=not progress, unit="img"))
    for index, mode in enumerate(todo):
        arrays = Arrays(images=np.stack([out[index] for out in outputs]), labels=labels, sources=sources, paths=paths)
        result[mode] = arrays
        if not limit_per_class:
            cache_dir.mkdir(parents=True, exist_ok=True)
            path = _cache_file(cache_dir, data_fingerprint, split, mode, input_size, params)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, images=arrays.images, labels=labels, sources=sources, paths=paths)
            tmp.replace(path)
    return result


def subset(samples: list[Sample], per_class: int) -> list[Sample]:
    """A small stratified subset spread over as many source photos as possible (for smoke runs)."""
    chosen = []
    for label in range(len(CLASSES)):
        of_class = [s for s in samples if s.label == label]
        by_source: dict[str, list[Sample]] = {}
        for sample in of_class:
            by_source.setdefault(sample.source, []).append(sample)
        groups = list(by_source.values())
        picked: list[Sample] = []
        depth = 0
        while len(picked) < per_class and depth < max(len(g) for g in groups):
            picked += [g[depth] for g in groups if depth < len(g)][: per_class - len(picked)]
            depth += 1
        chosen += picked
    return chosen


def kfold_by_source(labels: np.ndarray, sources: np.ndarray, folds: int,
                    seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` train / validation splits in which every source photo is validated exactly once, stratified
    by class: each class's photos are shuffled (seeded) and dealt to the folds in turn."""
    if folds < 2:
        raise DataSetError(f"k-fold needs at least 2 folds, not {folds}")
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    for label in np.unique(labels):
        class_sources = np.unique(sources[labels == label])
        if len(class_sources) < folds:
            raise DataSetError(f"class {CLASSES[label]} has only {len(class_sources)} source photos: too few "
                               f"for {folds} folds")
        rng.shuffle(class_sources)
        fold_of.update({source: index % folds for index, source in enumerate(class_sources.tolist())})
    assigned = np.array([fold_of[source] for source in sources.tolist()])
    return [(np.flatnonzero(assigned != fold), np.flatnonzero(assigned == fold)) for fold in range(folds)]


def split_by_source(labels: np.ndarray, sources: np.ndarray, val_fraction: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train / validation indices with every source photo on one side only, stratified by class.

    The data set holds ~36 augmented copies of each photo; a random split would put copies of one
    cell on both sides and make validation read high.
    """
    rng = np.random.default_rng(seed)
    val_sources: set[str] = set()
    for label in np.unique(labels):
        class_sources = np.unique(sources[labels == label])
        rng.shuffle(class_sources)
        count = max(1, int(round(val_fraction * len(class_sources))))
        if count >= len(class_sources):
            raise DataSetError(f"class {CLASSES[label]} has only {len(class_sources)} source photos: too few to split")
        val_sources.update(class_sources[:count].tolist())
    is_val = np.isin(sources, list(val_sources))
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
