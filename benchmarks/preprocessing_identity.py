"""Proof that the faster preprocessing is bit-identical to the reference the models were trained on.

    python -m benchmarks.preprocessing_identity            # every TRAIN and TEST image, ~3 minutes
    python -m benchmarks.preprocessing_identity --limit 500 --frames 50

For each real image: the decode (``app.preprocessing.decode_image`` against the reference BGR decode),
then ``preprocess`` in every mode and input size against ``tests.reference_preprocessing`` (model
input, stain mask, white-cell location with every cell in order, window); the same on 640x480
full-field frames built from TEST images. Exits 1 at the first difference, naming the image.
"""

from __future__ import annotations

import argparse
import sys
import time

import cv2

from app import preprocessing
from benchmarks.common import CLASS_FOLDERS, BenchmarkError, find_data_dir, full_field_frames, sample_images
from tests import reference_preprocessing as reference

INPUT_SIZES = ((60, 80), (80, 80))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.preprocessing_identity",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, help="at most this many images per split (default: all)")
    parser.add_argument("--frames", type=int, default=200, help="640x480 full-field frames (default 200)")
    parser.add_argument("--threads", type=int, default=1, help="cv2.setNumThreads (default 1, as the service)")
    args = parser.parse_args(argv)
    cv2.setNumThreads(args.threads)
    try:
        data_dir = find_data_dir()
    except BenchmarkError as exc:
        print(exc, file=sys.stderr)
        return 2
    params = preprocessing.PreprocessingParams()
    files = []
    for split in ("TEST", "TRAIN"):
        found = sorted(path for name in CLASS_FOLDERS for path in (data_dir / "images" / split / name).glob("*.jpeg"))
        files.extend(found[:args.limit] if args.limit else found)
    start = time.perf_counter()
    checked = 0

    def check(name: str, data: bytes) -> bool:
        nonlocal checked
        fast_rgb, reference_rgb = preprocessing.decode_image(data), reference.decode_image(data)
        if fast_rgb.shape != reference_rgb.shape or not (fast_rgb == reference_rgb).all():
            print(f"DIFFERENT decode: {name}", file=sys.stderr)
            return False
        for mode in preprocessing.MODES:
            for size in INPUT_SIZES:
                found = reference.differences(preprocessing.preprocess(fast_rgb, mode, size, params),
                                              reference.reference_preprocess(reference_rgb, mode, size, params))
                if found:
                    print(f"DIFFERENT {', '.join(found)}: {name} ({mode}, {size[0]}x{size[1]})", file=sys.stderr)
                    return False
        checked += 1
        return True

    for index, path in enumerate(files):
        if not check(str(path.relative_to(data_dir)), path.read_bytes()):
            return 1
        if index % 1000 == 999:
            print(f"{index + 1}/{len(files)} images identical", file=sys.stderr, flush=True)
    frames = full_field_frames(data_dir, sample_images(data_dir, args.frames), seed=2) if args.frames else []
    for index, frame in enumerate(frames):
        if not check(f"full-field frame {index}", frame):
            return 1
    print(f"bit-identical: {len(files)} real images and {len(frames)} 640x480 frames, decode + "
          f"{len(preprocessing.MODES)} modes x {len(INPUT_SIZES)} input sizes each "
          f"({checked * len(preprocessing.MODES) * len(INPUT_SIZES)} preprocessings), cv2 threads "
          f"{args.threads}, {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
