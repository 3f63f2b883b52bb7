"""The white-cell search's elliptic closing: OpenCV's morphologyEx against ``preprocessing.close_ellipse``.

    python -m benchmarks.closing [--repeats 2000]

On the stain mask of the benchmark's reference TEST image, cropped as ``locate_wbc`` crops it: the median
time of each, one OpenCV thread, and whether the two masks are identical.
"""

from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np

from app import preprocessing
from benchmarks.common import BenchmarkError, find_data_dir, reference_image
from benchmarks.stages import median_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.closing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args(argv)
    try:
        image = reference_image(find_data_dir())
    except BenchmarkError as exc:
        print(f"benchmarks.closing: {exc}", file=sys.stderr)
        return 2
    cv2.setNumThreads(1)
    params = preprocessing.PreprocessingParams()
    mask = preprocessing.stain_mask(preprocessing.decode_image(image.read_bytes()), params)
    x, y, w, h = cv2.boundingRect(mask)
    margin = 2 * params.locate_close_kernel
    region = np.ascontiguousarray(mask[max(0, y - margin):y + h + margin, max(0, x - margin):x + w + margin])
    size = params.locate_close_kernel
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    same = np.array_equal(cv2.morphologyEx(region, cv2.MORPH_CLOSE, kernel), preprocessing.close_ellipse(region, size))
    opencv = median_ms(lambda: cv2.morphologyEx(region, cv2.MORPH_CLOSE, kernel), args.repeats) * 1000.0
    rows = median_ms(lambda: preprocessing.close_ellipse(region, size), args.repeats) * 1000.0
    print(f"{image.name}, region {region.shape[1]}x{region.shape[0]}, {size}x{size} ellipse: OpenCV {opencv:.0f} us, "
          f"row by row {rows:.0f} us ({opencv / rows:.2f}x); identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
