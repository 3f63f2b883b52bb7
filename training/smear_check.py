"""How often the smear check (app/smear.py) flags real smears, and how often it flags images that are not.

    python -m training.smear_check --data-dir DIR [--out models/smear_check.json]

Real smears: every TRAIN and TEST image (the check's ranges were read from TRAIN; TEST is the held-out
figure). Non-smears: ``--per-kind`` images of each kind that ``training/non_smears.py`` draws, and as many
"other stain" images re-coloured from TEST smears. The targets: at most 2% of real smears flagged, at least
90% of non-smears flagged. The JSON written is what the model card reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from app import preprocessing, smear
from app.preprocessing import PreprocessingParams
from training import data, non_smears

MAX_REAL_FLAGGED = 0.02
MIN_NON_SMEARS_FLAGGED = 0.90


def prepare(rgb: np.ndarray, params: PreprocessingParams) -> preprocessing.Preprocessed:
    # The mask, the cells and the reduced image are the same in every mode: crop mode's preprocessing is run.
    return preprocessing.preprocess(rgb, "crop", (64, 64), params)


def check_image(rgb: np.ndarray, params: PreprocessingParams) -> smear.SmearCheck:
    return smear.check(prepare(rgb, params))


def flag_rate(images: Iterable[np.ndarray], params: PreprocessingParams) -> dict:
    """How many images are flagged as no smear, the weakest feature of each, and how many hold more than
    one white cell (the "several white cells" warning)."""
    flagged, total, several = 0, 0, 0
    reasons: Counter[str] = Counter()
    for rgb in images:
        prepared = prepare(rgb, params)
        result = smear.check(prepared)
        total += 1
        several += len(prepared.wbc.cells) > 1
        if not result.looks_like_smear:
            flagged += 1
            reasons.update(result.failed[:1])
    return {"images": total, "flagged": flagged, "rate": flagged / total, "why": dict(reasons),
            "several_white_cells": several}


def measure(data_dir: str | None, per_kind: int = 50, seed: int = 0) -> dict:
    images_dir = data.resolve_data_dir(data_dir)
    params = PreprocessingParams()
    result: dict = {"threshold": smear.THRESHOLD, "ranges": {k: vars(v) for k, v in smear.RANGES.items()}, "real": {},
                    "non_smears": {}}
    for split in data.SPLITS:
        samples = data.list_samples(images_dir, split)
        result["real"][split] = flag_rate((preprocessing.decode_image(s.path.read_bytes()) for s in samples), params)
    test = data.list_samples(images_dir, "TEST")
    picks = np.random.default_rng(seed).choice(len(test), per_kind, replace=False)
    smears = [preprocessing.decode_image(test[int(i)].path.read_bytes()) for i in picks]
    by_kind: dict[str, list[np.ndarray]] = {}
    for kind, image in non_smears.draw_all(per_kind, smears, seed=seed):
        by_kind.setdefault(kind, []).append(image)
    for kind, images in by_kind.items():
        result["non_smears"][kind] = flag_rate(images, params)
    flagged = sum(r["flagged"] for r in result["non_smears"].values())
    total = sum(r["images"] for r in result["non_smears"].values())
    result["non_smears_all"] = {"images": total, "flagged": flagged, "rate": flagged / total}
    result["targets"] = {"real_flagged_at_most": MAX_REAL_FLAGGED, "non_smears_flagged_at_least": MIN_NON_SMEARS_FLAGGED}
    result["met"] = (all(r["rate"] <= MAX_REAL_FLAGGED for r in result["real"].values())
                     and result["non_smears_all"]["rate"] >= MIN_NON_SMEARS_FLAGGED)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.smear_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="dataset2-master; default: $BLOODCELLS_DATA_DIR")
    parser.add_argument("--per-kind", type=int, default=50, help="non-smear images of each kind (default 50)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    try:
        result = measure(args.data_dir, args.per_kind)
    except data.DataSetError as exc:
        print(f"smear_check: error: {exc}", file=sys.stderr)
        return 2
    for split, r in result["real"].items():
        print(f"real {split}: {r['flagged']} of {r['images']} flagged ({r['rate']:.2%}) {r['why']}; "
              f"{r['several_white_cells']} with more than one white cell found")
    for kind, r in result["non_smears"].items():
        print(f"non-smear {kind}: {r['flagged']} of {r['images']} flagged ({r['rate']:.0%})")
    print(f"non-smears in all: {result['non_smears_all']['rate']:.1%} flagged; targets met: {result['met']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
