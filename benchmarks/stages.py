"""What each in-process step of one classification costs, and how a change of the code moved it.

    python -m benchmarks.stages [--rounds 4] [--calls 400] [--against REV] [--image blobs] [--json PATH]

Times, on the benchmark's image (the guard's: the reference 320x240 TEST image, else a synthetic smear; or
with ``--image blobs`` a crafted 2000x2000 PNG of 1,089 stained blobs, each a white cell's size) and
the default model, each step the service takes for one /classify: the header, the decode, the stain mask,
the white-cell search, the crop and resize to the model's input, the smear check, onnxruntime, and the
whole ``classify()``. One thread, the worker's malloc settings, as in a worker.

``--against REV`` measures the same steps with the code of a git revision too (its files, from ``git
archive``, in a temporary folder), in rounds that take turns with this tree's, so that both sides meet the
same moments of a noisy machine; each figure is the median over rounds of each round's median. A round is a
fresh process that imports ``app`` and ``models/`` from its tree and nothing of ``benchmarks``: this file
times it, on the same image bytes for both trees. It calls what every revision since bfc5d8a has:
``preprocessing.read_header``, ``decode_image``, ``stain_mask``, ``locate_wbc``, ``crop_window``,
``resize_to``, ``smear.check``, ``app.malloc.bound_heap``, ``ModelRegistry.load``/``warm_up``/``get``/
``cell_model``, ``Classifier.prepare``/``predict`` and ``classification.classify``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STEPS = ("header", "decode", "stain mask", "white-cell search", "crop and resize", "smear check", "onnxruntime",
         "classify()")
WARMUP_CALLS = 20


def median_ms(step: Callable[[], object], calls: int) -> float:
    for _ in range(WARMUP_CALLS):
        step()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        step()
        samples.append(time.perf_counter() - start)
    return round(statistics.median(samples) * 1000.0, 4)


def measure(tree: Path, data: bytes, calls: int) -> dict[str, float]:
    """In this process, whose ``app`` is ``tree``'s: the median milliseconds of each step over ``calls`` calls."""
    import cv2

    from app import classification, preprocessing, smear
    from app.malloc import bound_heap
    from app.registry import ModelRegistry

    cv2.setNumThreads(1)
    bound_heap()
    registry = ModelRegistry.load(tree / "models", threads=1)
    registry.warm_up()
    model = registry.get(None, None)
    limits = classification.Limits()
    rgb = preprocessing.decode_image(data)
    mask = preprocessing.stain_mask(rgb, model.params)
    wbc = preprocessing.locate_wbc(mask, model.params)
    prepared = model.prepare(rgb)
    height, width = model.input_size

    def crop() -> object:
        window = preprocessing.crop_window(wbc.box, rgb.shape[0], rgb.shape[1], model.params, aspect=width / height)
        return preprocessing.resize_to(rgb[window.y:window.y + window.height, window.x:window.x + window.width],
                                       height, width)

    steps: dict[str, Callable[[], object]] = {
        "header": lambda: preprocessing.read_header(data, limits.max_image_pixels),
        "decode": lambda: preprocessing.decode_image(data),
        "stain mask": lambda: preprocessing.stain_mask(rgb, model.params),
        "white-cell search": lambda: preprocessing.locate_wbc(mask, model.params),
        "crop and resize": crop,
        "smear check": lambda: smear.check(prepared),
        "onnxruntime": lambda: model.predict(prepared.model_image[None]),
        "classify()": lambda: classification.classify(model, data, limits, registry.cell_model),
    }
    return {name: median_ms(steps[name], calls) for name in STEPS}


def run_round(tree: Path, image: Path, calls: int) -> dict[str, float]:
    """One round in a fresh process that imports ``app`` from ``tree`` alone (-P: not this file's folder)."""
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-P", str(Path(__file__).resolve()), "--round", str(tree), "--image-file", str(image),
               "--calls", str(calls)]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=tree, env=environment)
    if completed.returncode != 0:
        raise SystemExit(f"a round in {tree} failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


IMAGES = ("reference", "blobs")


def image_bytes(which: str) -> tuple[bytes, str]:
    from benchmarks.guard import test_image
    from tests.hostile import blobs_png

    if which == "blobs":
        data, count = blobs_png(2000, 2000)
        return data, f"a 2000x2000 PNG of {count} stained blobs (tests.hostile.blobs_png)"
    return test_image()


def compare(rounds: int, calls: int, against: str | None, which: str = "reference") -> dict[str, Any]:
    from benchmarks.common import revision_tree

    data, source = image_bytes(which)
    with tempfile.TemporaryDirectory(prefix="stages-") as scratch, \
            revision_tree(against) if against else nullcontext(REPO) as other:
        image = Path(scratch) / "image"
        image.write_bytes(data)
        trees = {"this tree": REPO} | ({against: other} if against else {})
        measured: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for _ in range(rounds):
            for name, tree in trees.items():
                measured[name].append(run_round(tree, image, calls))
    medians = {name: {step: round(statistics.median(r[step] for r in runs), 4) for step in STEPS}
               for name, runs in measured.items()}
    return {"image": source, "rounds": rounds, "calls": calls, "median_ms": medians, "per_round_ms": measured}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stages", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", type=int, default=400, help="calls of each step per round (default 400)")
    parser.add_argument("--against", metavar="REV", help="also measure this git revision's code, taking turns")
    parser.add_argument("--image", dest="which", choices=IMAGES, default="reference",
                        help="the benchmark's image (default), or the crafted image of many blobs")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--round", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--image-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.round:
        print(json.dumps(measure(args.round, args.image_file.read_bytes(), args.calls)))
        return 0
    result = compare(args.rounds, args.calls, args.against, args.which)
    names = list(result["median_ms"])
    print(f"{result['image']}, medians of {args.rounds} rounds, taking turns")
    print(f"{'step':<20}" + "".join(f"{name:>14}" for name in names) + (f"{'ratio':>8}" if len(names) == 2 else ""))
    for step in STEPS:
        values = [result["median_ms"][name][step] for name in names]
        ratio = f"{values[0] / values[1]:>8.2f}" if len(values) == 2 and values[1] else ""
        print(f"{step:<20}" + "".join(f"{v:>12.4f}ms" for v in values) + ratio)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
