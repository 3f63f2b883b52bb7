"""What a worker's first request costs: ``classify()`` in a fresh process, with and without the start-up warm-up.

    python -m benchmarks.first_request [--json]

Each case runs in a process of its own, set up as a worker sets itself up (one thread, the worker's malloc
settings, every model loaded), and times its first three ``classify()`` calls of the benchmark's image in the
default mode. ``cold`` loads the models and classifies at once; ``warmed`` runs ``ModelRegistry.warm_up()``
first, as every worker does. ``lab`` times OpenCV's first and second RGB-to-Lab conversion of one pixel, which
the smear check makes: OpenCV builds its tables on the first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import REPO
from benchmarks.guard import test_image

CASES = ("cold", "warmed", "lab")
CALLS = 3


def measure(case: str) -> dict[str, Any]:
    """In this process, which must be fresh: the first CALLS calls of the case, in ms each."""
    import cv2
    import numpy as np

    cv2.setNumThreads(1)
    if case == "lab":
        pixel = np.zeros((1, 1, 3), np.uint8)
        return {"case": case, "calls_ms": [_ms(cv2.cvtColor, pixel, cv2.COLOR_RGB2LAB) for _ in range(CALLS)]}
    from app import classification
    from app.malloc import bound_heap
    from app.registry import ModelRegistry

    bound_heap()
    registry = ModelRegistry.load(REPO / "models")
    if case == "warmed":
        registry.warm_up()
    model = registry.get(None, None)
    image, source = test_image()
    calls = [_ms(classification.classify, model, image, classification.Limits(), registry.cell_model)
             for _ in range(CALLS)]
    return {"case": case, "what": f"classify(), {model.mode} mode, {source}", "calls_ms": calls}


def _ms(func: Any, *args: Any) -> float:
    start = time.perf_counter()
    func(*args)
    return round((time.perf_counter() - start) * 1000.0, 3)


def run_case(case: str) -> dict[str, Any]:
    completed = subprocess.run([sys.executable, "-m", "benchmarks.first_request", "--case", case, "--json"],
                               capture_output=True, text=True, cwd=REPO, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.first_request", description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=CASES, help="measure this case in this process (it must be fresh)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args(argv)
    results: Any = measure(args.case) if args.case else [run_case(case) for case in CASES]
    if args.json:
        print(json.dumps(results))
        return 0
    for result in results if isinstance(results, list) else [results]:
        what = result.get("what", "cv2.cvtColor(1 pixel, RGB2LAB)")
        print(f"{result['case']:7s} {what}: calls 1-{CALLS} {result['calls_ms']} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
