"""Is this a stained blood smear at all? Evidence from the image, not from the classifier's confidence.

A smear seen through the microscope at this data set's magnification has a light background (plasma and
red cells), a faint pink-to-purple cast (eosin, no green), the fine texture of packed red cells, and a
purple-stained region of a white cell's size. A screenshot, a document, a chart, a blank or noise image,
another stain, or a purple shape on a plain ground fails at least one of these.

Each feature is scored 1 inside the range real smears span and falls to 0 over a margin outside it; the
smear score is the smallest of the scores. The ranges were read from the TRAIN images (their 0.1th to
99.9th percentiles, widened), and `python -m training.smear_check` measures the flag rates on TRAIN, on
TEST and on a set of non-smear images it draws (`training/non_smears.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from app.preprocessing import Preprocessed

# The features are measured on the image reduced to this size (width, height). A 320x240 image, the data set's
# frame and the usual upload, is halved twice: OpenCV averages 2x2 blocks on a fast path and a reduction by 4
# on its general one, several times slower; each pixel comes within one level of the one reduction. Other sizes
# are reduced at once (halving first is slower for them, and would enlarge a narrow image along one side).
THUMBNAIL = (80, 60)
HALVED_TWICE = (4 * THUMBNAIL[0], 4 * THUMBNAIL[1])
THRESHOLD = 0.5


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    margin: float

    def score(self, value: float) -> float:
        inside = min(value - self.low, self.high - value)
        return min(1.0, max(0.0, 1.0 + inside / self.margin))


# Measured on TRAIN (9,957 images of 277 photos); see the module docstring.
RANGES: dict[str, Range] = {
    "lightness": Range(165.0, 222.0, 8.0),  # median L* (0-255 scale): not dark, not a white page
    "texture": Range(11.0, 25.0, 3.0),  # mean |Laplacian| of the grey thumbnail: packed red cells
    "red_green": Range(-2.0, 7.0, 2.0),  # median a* - 128: a pink cast, never green
    "blue_yellow": Range(-2.0, 6.0, 2.0),  # median b* - 128
    "greenest": Range(-8.0, 12.0, 2.0),  # 10th percentile of a* - 128: hardly a green pixel
    "stain": Range(0.004, 0.15, 0.003),  # share of the image stained purple (the stain mask)
}


@dataclass(frozen=True)
class SmearCheck:
    score: float  # 0-1; the smallest of the feature scores
    looks_like_smear: bool
    failed: tuple[str, ...]  # the features outside their range, weakest first

    def warning(self) -> str | None:
        if self.looks_like_smear:
            return None
        return (f"this does not look like a stained blood smear (smear score {self.score:.2f}; "
                f"{', '.join(self.failed)} unlike a smear's): its label should not be trusted")


def _cumulative(image: np.ndarray, channel: int) -> np.ndarray:
    """Cumulative pixel counts of one uint8 channel's values 0-255: one histogram serves every quantile of
    the channel (np.percentile sorts, several times slower on the request path)."""
    return np.cumsum(cv2.calcHist([image], [channel], None, [256], [0, 256]).ravel().astype(np.int64))


def _quantile(cumulative: np.ndarray, q: float) -> float:
    """The lowest value with ``q`` of the pixels at or below it."""
    return float(np.searchsorted(cumulative, q * cumulative[-1]))


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    height, width = rgb.shape[:2]
    if (width, height) == HALVED_TWICE:
        rgb = cv2.resize(rgb, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
    return cv2.resize(rgb, THUMBNAIL, interpolation=cv2.INTER_AREA)


def features(rgb: np.ndarray, stain_fraction: float) -> dict[str, float]:
    small = thumbnail(rgb)
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB)
    lightness, red_green, blue_yellow = (_cumulative(lab, channel) for channel in range(3))
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    return {
        "lightness": _quantile(lightness, 0.5),
        "texture": float(cv2.mean(np.abs(cv2.Laplacian(grey, cv2.CV_32F)))[0]),
        "red_green": _quantile(red_green, 0.5) - 128.0,
        "blue_yellow": _quantile(blue_yellow, 0.5) - 128.0,
        "greenest": _quantile(red_green, 0.1) - 128.0,
        "stain": stain_fraction,
    }


def check_features(values: dict[str, float]) -> SmearCheck:
    scores = {name: RANGES[name].score(value) for name, value in values.items()}
    score = min(scores.values())
    failed = tuple(name for name, s in sorted(scores.items(), key=lambda item: item[1]) if s < THRESHOLD)
    return SmearCheck(score=round(score, 4), looks_like_smear=score >= THRESHOLD, failed=failed)


def check(prepared: Preprocessed) -> SmearCheck:
    stain_fraction = cv2.countNonZero(prepared.mask) / prepared.mask.size
    return check_features(features(prepared.rgb, stain_fraction))
