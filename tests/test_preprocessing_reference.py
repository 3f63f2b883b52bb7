"""The fast preprocessing is bit-identical to the straightforward one the models were trained on.

``benchmarks.preprocessing_identity`` checks every image of the data set (minutes); this is the quick
guard that runs with every test run: synthetic smears of several sizes, cells on the borders, images
without a cell, and a sample of real TEST images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app import preprocessing
from app.preprocessing import PreprocessingParams
from tests import reference_preprocessing as reference
from tests.synthetic import encode, make_smear

PARAMS = PreprocessingParams()
CASES: list[dict[str, Any]] = [
    dict(width=320, height=240, wbcs=((160, 120, 34),)),
    dict(width=320, height=240, wbcs=((10, 120, 30),)),  # cut by the left border
    dict(width=640, height=480, wbcs=((600, 460, 36), (100, 90, 22)), n_rbc=40),
    dict(width=321, height=239, wbcs=((300, 20, 25),)),  # odd sizes, top-right corner
    dict(width=320, height=240, wbcs=()),  # no cell
    dict(width=97, height=61, wbcs=((48, 30, 20),), n_rbc=1),  # tiny image
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("mode", preprocessing.MODES)
@pytest.mark.parametrize("size", [(60, 80), (64, 64), (96, 128)])
def test_synthetic_smears_match_the_reference(case: int, mode: preprocessing.Mode, size: tuple[int, int]) -> None:
    rgb = make_smear(**CASES[case], seed=case).rgb
    for ext in (".png", ".jpg"):
        data = encode(rgb, ext)
        decoded = preprocessing.decode_image(data)
        assert np.array_equal(decoded, reference.decode_image(data))
        fast = preprocessing.preprocess(decoded, mode, size, PARAMS)
        assert reference.differences(fast, reference.reference_preprocess(decoded, mode, size, PARAMS)) == []


@pytest.mark.data
def test_real_test_images_match_the_reference(data_dir: Path) -> None:
    files = sorted((data_dir / "images" / "TEST").glob("*/*.jpeg"))[::60]
    assert len(files) >= 40
    for path in files:
        data = path.read_bytes()
        decoded = preprocessing.decode_image(data)
        assert np.array_equal(decoded, reference.decode_image(data)), path.name
        for mode in preprocessing.MODES:
            size = (64, 64) if mode == "crop" else (96, 128)
            fast = preprocessing.preprocess(decoded, mode, size, PARAMS)
            assert reference.differences(fast, reference.reference_preprocess(decoded, mode, size, PARAMS)) == [], \
                f"{path.name} {mode}"
