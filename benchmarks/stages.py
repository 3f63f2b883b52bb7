"""What each in-process step of one classification costs, and how a change of the code moved it.

    python -m benchmarks.stages [--rounds 4] [--calls 400] [--against REV] [--json PATH]

Times, on the benchmark's image (the guard's: the reference 320x240 TEST image, else a synthetic smear) and
the default model, each step the service takes for one /classify: the header, the decode, the stain mask,
the white-cell search, the crop and resize to the model's input, the smear check, onnxruntime, and the
whole ``classify()``. One thread, the worker's malloc settings, as in a worker.

``--against REV`` measures the same steps with the code of a git revision too (a worktree of it, removed
afterwards), in rounds that take turns with this tree's, so that both sides meet the same moments of a
noisy machine; each figure is the median over rounds of each round's median. The steps are timed through
functions every revision since the pinned workers has (``app.preprocessing``, ``app.smear.check``,
``Classifier.predict``, ``classification.classify``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from benchmarks.common import REPO

STEPS = ("header", "decode", "stain mask", "white-cell search", "crop and resize", "smear check", "onnxruntime",
         "classify()")


def measure(calls: int) -> dict[str, float]:
    """In this process: the median milliseconds of each step over ``calls`` calls."""
    import cv2

    from app import classification, preprocessing, smear
    from app.malloc import bound_heap
    from app.registry import ModelRegistry
    from benchmarks.floor import time_calls
    from benchmarks.guard import test_image

    cv2.setNumThreads(1)
    bound_heap()
    registry = ModelRegistry.load(REPO_UNDER_TEST / "models", threads=1)
    registry.warm_up()
    model = registry.get(None, None)
    data, _ = test_image()
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

    steps = {
        "header": lambda: preprocessing.read_header(data, limits.max_image_pixels),
        "decode": lambda: preprocessing.decode_image(data),
        "stain mask": lambda: preprocessing.stain_mask(rgb, model.params),
        "white-cell search": lambda: preprocessing.locate_wbc(mask, model.params),
        "crop and resize": crop,
        "smear check": lambda: smear.check(prepared),
        "onnxruntime": lambda: model.predict(prepared.model_image[None]),
        "classify()": lambda: classification.classify(model, data, limits, registry.cell_model),
    }
    result = {}
    for name in STEPS:
        samples = time_calls(lambda i, step=steps[name]: step(), calls, warmup=20)
        result[name] = round(statistics.median(samples.wall_s) * 1000.0, 4)
    return result


# The tree whose app/ and models/ are measured: this one, or the worktree a round runs in.
REPO_UNDER_TEST = Path(os.environ.get("BLOODCELLS_STAGES_TREE", REPO))


def run_round(tree: Path, calls: int) -> dict[str, float]:
    """One round in a fresh process whose ``app`` is ``tree``'s, timed by this file's code."""
    environment = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{REPO}", "BLOODCELLS_STAGES_TREE": str(tree)}
    completed = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--round", "--calls", str(calls)],
                               capture_output=True, text=True, cwd=tree, env=environment)
    if completed.returncode != 0:
        raise SystemExit(f"a round in {tree} failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def compare(rounds: int, calls: int, against: str | None) -> dict[str, Any]:
    # Here, not at the top: a round imports this file with the other revision's ``benchmarks`` first on its path.
    from benchmarks.common import worktree

    with worktree(against) if against else nullcontext(REPO) as other:
        trees = {"this tree": REPO} | ({against: other} if against else {})
        measured: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for _ in range(rounds):
            for name, tree in trees.items():
                measured[name].append(run_round(tree, calls))
    medians = {name: {step: round(statistics.median(r[step] for r in runs), 4) for step in STEPS}
               for name, runs in measured.items()}
    return {"rounds": rounds, "calls": calls, "median_ms": medians, "per_round_ms": measured}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stages", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", type=int, default=400, help="calls of each step per round (default 400)")
    parser.add_argument("--against", metavar="REV", help="also measure this git revision's code, taking turns")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--round", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.round:
        print(json.dumps(measure(args.calls)))
        return 0
    result = compare(args.rounds, args.calls, args.against)
    names = list(result["median_ms"])
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
