"""``bloodcells classify IMAGE...``: the service's classification without a server, as a table or JSON lines."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import TextIO

from app.classification import Limits, classify_many
from app.config import Settings
from app.labels import CLASSES
from app.model import Classifier
from app.preprocessing import ImageDecodeError
from app.registry import ModelRegistry, UnknownModeError, UnknownModelError
from app.schemas import Prediction

Outcome = Prediction | ImageDecodeError | OSError


def classify_paths(model: Classifier, paths: list[Path], limits: Limits,
                   cell_model: Classifier | None = None) -> list[Outcome]:
    """One outcome per path, in order; an unreadable file is an error for that file alone."""
    payloads: list[bytes | OSError] = []
    for path in paths:
        try:
            payloads.append(Path(path).read_bytes())
        except OSError as exc:
            payloads.append(exc)
    readable = [p for p in payloads if isinstance(p, bytes)]
    results = iter(classify_many(model, readable, limits, cell_model))
    return [next(results) if isinstance(p, bytes) else p for p in payloads]


def error_text(outcome: ImageDecodeError | OSError) -> tuple[str, str]:
    if isinstance(outcome, ImageDecodeError):
        return outcome.reason, outcome.message
    return "unreadable", f"{outcome.strerror or outcome}; check the path"


def json_line(path: Path, outcome: Outcome) -> str:
    if isinstance(outcome, Prediction):
        return json.dumps({"image": str(path), **outcome.model_dump(mode="json")})
    code, message = error_text(outcome)
    return json.dumps({"image": str(path), "error": {"code": code, "message": message}})


def table(paths: list[Path], outcomes: list[Outcome], model: Classifier) -> str:
    width = max(len("IMAGE"), *(len(str(p)) for p in paths))
    lines = [f"model {model.name} {model.version} ({model.mode} mode)",
             f"{'IMAGE':<{width}}  {'LABEL':<10}  " + "  ".join(f"{c[:10].upper():>10}" for c in CLASSES) + "  NOTES"]
    for path, outcome in zip(paths, outcomes):
        if isinstance(outcome, Prediction):
            values = outcome.probabilities.model_dump()
            notes = f"{len(outcome.warnings)} warning(s): " + " | ".join(outcome.warnings) if outcome.warnings else ""
            if len(outcome.cells) > 1:
                notes = "cells: " + ", ".join(f"{c.label} {c.confidence:.2f} at ({c.box.x},{c.box.y})"
                                              for c in outcome.cells) + (f"; {notes}" if notes else "")
            lines.append(f"{str(path):<{width}}  {outcome.label:<10}  "
                         + "  ".join(f"{values[c]:>10.3f}" for c in CLASSES) + f"  {notes}".rstrip())
        else:
            code, message = error_text(outcome)
            lines.append(f"{str(path):<{width}}  error: {code}: {message}")
    return "\n".join(lines)


def classify_files(images: list[Path], mode: str | None = None, model_dir: Path | None = None,
                   as_json: bool = False, out: TextIO | None = None, name: str | None = None) -> int:
    """Print one result per image; exit code 0 when every image was classified, 1 when some were not,
    2 when the models, the mode or the model name are unusable."""
    out = out or sys.stdout
    settings = Settings(model_dir=model_dir) if model_dir else Settings()
    registry = ModelRegistry.load(settings.model_dir, threads=settings.threads, default_mode=settings.default_mode)
    try:
        model = registry.get(mode, name)
    except (UnknownModeError, UnknownModelError) as exc:
        print(f"bloodcells classify: error: {exc.message}", file=sys.stderr)
        return 2
    # A command line's files are not one request: the per-request pixel budget does not apply.
    limits = dataclasses.replace(Limits.from_settings(settings), max_request_pixels=sys.maxsize)
    outcomes = classify_paths(model, images, limits, registry.cell_model)
    if as_json:
        print("\n".join(json_line(path, outcome) for path, outcome in zip(images, outcomes)), file=out)
    else:
        print(table(images, outcomes, model), file=out)
    return 0 if all(isinstance(o, Prediction) for o in outcomes) else 1
