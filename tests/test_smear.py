"""The smear check: evidence that an image is a stained blood smear, from the image itself."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from app import smear
from app.preprocessing import PreprocessingParams
from tests.synthetic import make_smear
from training import non_smears, smear_check

PARAMS = PreprocessingParams()
REPO = Path(__file__).resolve().parents[1]


def check(rgb: np.ndarray) -> smear.SmearCheck:
    return smear_check.check_image(rgb, PARAMS)


def test_a_range_scores_one_inside_and_falls_to_zero_over_its_margin() -> None:
    scale = smear.Range(10.0, 20.0, 2.0)
    assert scale.score(15) == 1.0 and scale.score(10) == 1.0 and scale.score(20) == 1.0
    assert scale.score(9) == pytest.approx(0.5) and scale.score(21) == pytest.approx(0.5)
    assert scale.score(7) == 0.0 and scale.score(100) == 0.0


def test_the_score_is_the_weakest_feature_and_the_failures_are_named() -> None:
    values = {"lightness": 195.0, "texture": 17.0, "red_green": 1.0, "blue_yellow": 1.0, "greenest": -2.0, "stain": 0.05}
    assert smear.check_features(values) == smear.SmearCheck(1.0, True, ())
    dark = smear.check_features({**values, "lightness": 40.0, "texture": 1.0})
    assert dark.score == 0.0 and not dark.looks_like_smear and set(dark.failed) == {"lightness", "texture"}
    assert "should not be trusted" in (dark.warning() or "") and "lightness" in (dark.warning() or "")


@pytest.mark.parametrize("seed", range(6))
def test_synthetic_smears_look_like_smears(seed: int) -> None:
    result = check(make_smear(n_rbc=14 + seed, seed=seed).rgb)
    assert result.looks_like_smear, result


@pytest.mark.parametrize("kind", list(non_smears.KINDS))
def test_every_kind_of_non_smear_is_flagged(kind: str) -> None:
    rng = np.random.default_rng(7)
    flagged = [not check(non_smears.KINDS[kind](rng)).looks_like_smear for _ in range(10)]
    assert sum(flagged) >= 9, f"{kind}: {sum(flagged)} of 10 flagged"


def test_the_issues_examples_are_flagged() -> None:
    grey = np.full((240, 320, 3), 180, np.uint8)
    assert not check(grey).looks_like_smear  # a blank image
    ellipse = non_smears.ellipse_on_grey(np.random.default_rng(1))
    assert not check(ellipse).looks_like_smear and not check(ellipse).score  # a purple ellipse on grey
    recoloured = non_smears.other_stain(make_smear(seed=2).rgb, np.random.default_rng(0))
    assert not check(recoloured).looks_like_smear


@pytest.mark.data
@pytest.mark.slow
def test_real_smears_pass_and_non_smears_are_flagged_at_the_targets(data_dir: Path) -> None:
    result = smear_check.measure(str(data_dir), per_kind=20)
    for split, figures in result["real"].items():
        assert figures["rate"] <= smear_check.MAX_REAL_FLAGGED, (split, figures)
    assert result["non_smears_all"]["rate"] >= smear_check.MIN_NON_SMEARS_FLAGGED, result["non_smears"]
    assert result["non_smears"]["other stain"]["rate"] >= 0.9  # real smears, re-coloured


def test_the_committed_figures_are_the_checks_own() -> None:
    committed = json.loads((REPO / "models" / "smear_check.json").read_text())
    assert committed["ranges"] == {name: vars(scale) for name, scale in smear.RANGES.items()}
    assert committed["threshold"] == smear.THRESHOLD and committed["met"]


def test_a_quantile_is_the_lowest_value_with_that_share_of_pixels_at_or_below_it() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(90, 200, (60, 80, 3), dtype=np.uint8)
    for channel in range(3):
        values = image[..., channel].ravel()
        cumulative = smear._cumulative(image, channel)
        for q in (0.0, 0.1, 0.5, 0.9, 1.0):
            expected = min(v for v in range(256) if np.count_nonzero(values <= v) >= q * values.size)
            assert smear._quantile(cumulative, q) == expected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_320x240_thumbnail_by_halvings_is_within_one_level_of_one_reduction(seed: int) -> None:
    rgb = make_smear(seed=seed).rgb
    assert rgb.shape[:2] == (240, 320)
    direct = cv2.resize(rgb, smear.THUMBNAIL, interpolation=cv2.INTER_AREA).astype(int)
    halved = smear.thumbnail(rgb)
    assert halved.shape == (smear.THUMBNAIL[1], smear.THUMBNAIL[0], 3)
    assert np.abs(halved.astype(int) - direct).max() <= 1


@pytest.mark.parametrize("size", [(640, 480), (500, 60), (1, 500), (100, 100), (321, 240)])
def test_other_sizes_are_reduced_at_once(size: tuple[int, int]) -> None:
    width, height = size
    rgb = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    assert np.array_equal(smear.thumbnail(rgb), cv2.resize(rgb, smear.THUMBNAIL, interpolation=cv2.INTER_AREA))
