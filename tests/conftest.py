"""Shared fixtures: a synthetic data set in the Kaggle layout, and the real one where it is present."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import pytest

from app.labels import CLASSES
from tests.synthetic import make_smear

REPO = Path(__file__).resolve().parents[1]
FLIPS = (lambda rgb: rgb, lambda rgb: rgb[:, ::-1], lambda rgb: rgb[::-1], lambda rgb: rgb[::-1, ::-1])
REQUIRE_DATA = os.environ.get("BLOODCELLS_REQUIRE_DATA", "") not in ("", "0", "false")


def real_data_dir() -> Path | None:
    raw = os.environ.get("BLOODCELLS_DATA_DIR")
    candidates = [Path(raw)] if raw else [REPO.parent / "shared" / "data" / "blood-cells" / "dataset2-master"]
    for candidate in candidates:
        if (candidate / "images" / "TEST").is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data set: skipped where absent, a failure where BLOODCELLS_REQUIRE_DATA=1 (CI)."""
    found = real_data_dir()
    if found is None:
        message = ("the real data set is absent: set BLOODCELLS_DATA_DIR to the Kaggle 'dataset2-master' "
                   "folder to run this test")
        if REQUIRE_DATA:
            pytest.fail(message + " (BLOODCELLS_REQUIRE_DATA=1 makes it mandatory)")
        pytest.skip(message)
    return found


def write_synthetic_dataset(root: Path, per_class_sources: int = 3, copies: int = 2) -> Path:
    """A tiny data set in the Kaggle layout: class k has a white cell of radius 18 + 6k (+ 2 per photo), so it
    is learnable; the copies of a photo are its flips, as the data set's are its rotations and flips."""
    images = root / "dataset2-master" / "images"
    for split, offset in (("TRAIN", 0), ("TEST", 100)):
        for label, name in enumerate(CLASSES):
            folder = images / split / name.upper()
            folder.mkdir(parents=True)
            for source in range(per_class_sources):
                seed = offset + 1000 * label + 10 * source
                smear = make_smear(wbcs=((150, 110 + 5 * source, 18 + 6 * label + 2 * source),), seed=seed)
                for copy in range(copies):
                    view = FLIPS[copy % len(FLIPS)](smear.rgb)
                    cv2.imwrite(str(folder / f"_{source}_{copy}.jpeg"), cv2.cvtColor(view, cv2.COLOR_RGB2BGR))
    return root / "dataset2-master"


@pytest.fixture
def synthetic_dataset(tmp_path: Path) -> Path:
    return write_synthetic_dataset(tmp_path)


MODELS_DIR = REPO / "models"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The repository's exported models: the service tests run the real ones, never a mock."""
    if not any(MODELS_DIR.glob("*.onnx")):
        pytest.fail(f"{MODELS_DIR} holds no .onnx model: the service tests need the exported models "
                    "(models/<mode>.onnx + .json, written by `bloodcells export`)")
    return MODELS_DIR


@pytest.fixture(scope="session")
def client(model_dir: Path):
    """The app with the real models, its lifespan run (models loaded and warm)."""
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.main import create_app

    with TestClient(create_app(Settings(model_dir=model_dir))) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def test_images(data_dir: Path) -> dict[str, Path]:
    """The first TEST image of each class folder, by class name: read in place, never copied."""
    images = {}
    for name in CLASSES:
        files = sorted((data_dir / "images" / "TEST" / name.upper()).glob("*.jpeg"))
        assert files, f"no TEST images for {name} in {data_dir}"
        images[name] = files[0]
    return images
