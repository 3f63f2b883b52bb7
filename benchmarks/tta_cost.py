"""What test-time augmentation costs per image: the default mode's (or ``--model``'s) ``classify()`` with the shipped graph
(its views folded in, ``training/tta.py``) and with the same network exported without them, in one
process, on one thread, interleaved in rounds so that a noisy neighbour slows both alike.

    python -m benchmarks.tta_cost            # -> benchmarks/results/tta-cost.json (needs the train extra)

Issue 11's budget: at most twice the per-image CPU cost of the default mode without them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO
from benchmarks.guard import test_image

ROUNDS = 8
CALLS_PER_ROUND = 100
DEFAULT_OUT = REPO / "benchmarks" / "results" / "tta-cost.json"


def plain_copy(model_dir: Path, name: str, out_dir: Path):
    """The shipped network ``<name>.keras`` exported again with no views, with a metadata copy that says so."""
    import keras

    from app.model import Classifier, sha256_file
    from training.export import to_onnx

    onnx_path = out_dir / f"{name}.onnx"
    to_onnx(keras.models.load_model(model_dir / f"{name}.keras"), onnx_path, "none")
    metadata = json.loads((model_dir / f"{name}.json").read_text())
    metadata["onnx_sha256"] = sha256_file(onnx_path)
    metadata["export"] = {**metadata["export"], "test_time_augmentation": "none", "views": 1}
    (out_dir / f"{name}.json").write_text(json.dumps(metadata))
    return Classifier.load(onnx_path, threads=1)


def per_call_ms(run, calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        run()
    return (time.process_time() - start) * 1000.0 / calls


def measure(model_dir: Path, rounds: int = ROUNDS, calls: int = CALLS_PER_ROUND,
            name: str | None = None) -> dict[str, Any]:
    import cv2
    import numpy as np

    from app import classification
    from app.malloc import bound_heap
    from app.registry import ModelRegistry

    cv2.setNumThreads(1)
    heap = bound_heap()  # as a worker runs: its malloc settings decide what large activations cost
    image, source = test_image()
    registry = ModelRegistry.load(model_dir, threads=1)
    shipped, limits = registry.get(None, name), classification.Limits()
    with tempfile.TemporaryDirectory() as tmp:
        plain = plain_copy(model_dir, shipped.name, Path(tmp))
        # The cell model is the crop model: the plain run uses its plain copy too when it is the default's.
        same_cells = registry.cell_model is shipped
        variants = {"shipped": (shipped, registry.cell_model), "plain": (plain, plain if same_cells else
                                                                         registry.cell_model)}
        prepared = classification.prepare(shipped, image, limits)
        tensor = np.stack([prepared.model_image])
        samples: dict[str, list[float]] = {f"{kind} {part}": [] for kind in variants for part in ("classify", "onnx")}
        for model, cells in variants.values():  # warm-up
            per_call_ms(lambda m=model, c=cells: classification.classify(m, image, limits, c), 20)
        for _ in range(rounds):
            for kind, (model, cells) in variants.items():
                samples[f"{kind} classify"].append(
                    per_call_ms(lambda m=model, c=cells: classification.classify(m, image, limits, c), calls))
                samples[f"{kind} onnx"].append(per_call_ms(lambda m=model: m.predict(tensor), calls))
    medians = {key: round(statistics.median(values), 4) for key, values in samples.items()}
    return {
        "image": source, "model": shipped.name, "mode": shipped.mode,
        "test_time_augmentation": shipped.contract.test_time_augmentation,
        "malloc_settings": heap, "cpu_ms_per_image": medians, "rounds": rounds, "calls_per_round": calls,
        "classify_ratio": round(medians["shipped classify"] / medians["plain classify"], 3),
        "onnx_ratio": round(medians["shipped onnx"] / medians["plain onnx"], 3),
        "budget_ratio": 2.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--model", help="a model by name (default: the default mode's)")
    args = parser.parse_args(argv)
    result = measure(args.models, name=args.model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    ms = result["cpu_ms_per_image"]
    print(f"{result['model']} ({result['mode']}, {result['test_time_augmentation']}), {result['image']}, CPU ms per "
          f"image, median of {result['rounds']} rounds of {result['calls_per_round']}:\n"
          f"  classify(): shipped {ms['shipped classify']}, plain {ms['plain classify']}: "
          f"{result['classify_ratio']}x (budget {result['budget_ratio']:g}x)\n"
          f"  onnxruntime call: shipped {ms['shipped onnx']}, plain {ms['plain onnx']}: {result['onnx_ratio']}x\n"
          f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
