"""``bloodcells classify IMAGE...``: the service's classification without a server, as a table or JSON lines."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from app.classification import INFER_CHUNK, Limits, classify_many
from app.config import ENV_PREFIX, Settings
from app.labels import CLASSES
from app.model import Classifier
from app.preprocessing import ImageDecodeError
from app.registry import ModelRegistry, UnknownModeError, UnknownModelError
from app.schemas import Prediction


@dataclass(frozen=True)
class FileError:
    """A file that was not read: not a regular file, too large, or unreadable."""

    code: str
    message: str


Outcome = Prediction | ImageDecodeError | FileError


def read_image_file(path: Path, max_bytes: int) -> bytes | FileError:
    """The file's bytes, if it is a regular file of at most ``max_bytes``: a FIFO would block the command, a
    device such as /dev/zero would fill the memory."""
    try:
        status = os.stat(path)
        if not stat.S_ISREG(status.st_mode):
            return FileError("not_a_file", f"{path} is not a regular file (a directory, a FIFO or a device); "
                             "give image files")
        if status.st_size > max_bytes:
            return FileError("upload_too_large", f"{path} is {status.st_size:,} bytes, over the limit of "
                             f"{max_bytes:,} (BLOODCELLS_MAX_UPLOAD_BYTES); give a smaller image")
        with open(path, "rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as exc:
        return FileError("unreadable", f"{exc.strerror or exc}; check the path")
    if len(data) > max_bytes:
        return FileError("upload_too_large", f"{path} grew past {max_bytes:,} bytes while it was read")
    return data


def classify_paths(model: Classifier, paths: list[Path], limits: Limits, cell_model: Classifier | None = None,
                   max_bytes: int = Settings.model_fields["max_upload_bytes"].default) -> list[Outcome]:
    """One outcome per path, in order; a file that cannot be read is an error for that file alone. Files are
    read a few at a time (as many as one onnxruntime call takes), never all at once."""
    outcomes: list[Outcome] = []
    for start in range(0, len(paths), INFER_CHUNK):
        payloads = [read_image_file(path, max_bytes) for path in paths[start:start + INFER_CHUNK]]
        readable = [p for p in payloads if isinstance(p, bytes)]
        results = iter(classify_many(model, readable, limits, cell_model))
        outcomes.extend(next(results) if isinstance(p, bytes) else p for p in payloads)
    return outcomes


def error_text(outcome: ImageDecodeError | FileError) -> tuple[str, str]:
    if isinstance(outcome, ImageDecodeError):
        return outcome.reason, outcome.message
    return outcome.code, outcome.message


def printable(text: str) -> str:
    """Control characters escaped (as ``\\x1b``), as ``ls`` does: a file name must not drive the terminal."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def json_line(path: Path, outcome: Outcome) -> str:
    if isinstance(outcome, Prediction):
        return json.dumps({"image": str(path), **outcome.model_dump(mode="json")})
    code, message = error_text(outcome)
    return json.dumps({"image": str(path), "error": {"code": code, "message": message}})


def table(paths: list[Path], outcomes: list[Outcome], model: Classifier) -> str:
    names = [printable(str(p)) for p in paths]
    width = max(len("IMAGE"), *(len(name) for name in names))
    lines = [f"model {model.name} {model.version} ({model.mode} mode)",
             f"{'IMAGE':<{width}}  {'LABEL':<10}  " + "  ".join(f"{c[:10].upper():>10}" for c in CLASSES) + "  NOTES"]
    for name, outcome in zip(names, outcomes):
        if isinstance(outcome, Prediction):
            values = outcome.probabilities.model_dump()
            notes = f"{len(outcome.warnings)} warning(s): " + " | ".join(outcome.warnings) if outcome.warnings else ""
            if len(outcome.cells) > 1:
                notes = "cells: " + ", ".join(f"{c.label} {c.confidence:.2f} at ({c.box.x},{c.box.y})"
                                              for c in outcome.cells) + (f"; {notes}" if notes else "")
            lines.append(f"{name:<{width}}  {outcome.label:<10}  "
                         + "  ".join(f"{values[c]:>10.3f}" for c in CLASSES) + f"  {notes}".rstrip())
        else:
            code, message = error_text(outcome)
            lines.append(f"{name:<{width}}  error: {code}: {printable(message)}")
    return "\n".join(lines)


def classify_files(images: list[Path], mode: str | None = None, model_dir: Path | None = None,
                   as_json: bool = False, out: TextIO | None = None, name: str | None = None) -> int:
    """Print one result per image; exit code 0 when every image was classified, 1 when some were not,
    2 when the models, the mode or the model name are unusable."""
    out = out or sys.stdout
    try:
        settings = Settings(model_dir=model_dir) if model_dir else Settings()
    except ValidationError as exc:
        print(f"bloodcells classify: invalid settings ({ENV_PREFIX}* variables):\n{exc}", file=sys.stderr)
        return 2
    registry = ModelRegistry.load(settings.model_dir, threads=settings.threads, default_mode=settings.default_mode)
    try:
        model = registry.get(mode, name)
    except (UnknownModeError, UnknownModelError) as exc:
        print(f"bloodcells classify: error: {exc.message}", file=sys.stderr)
        return 2
    # A command line's files are not one request: the per-request pixel budget does not apply.
    limits = dataclasses.replace(Limits.from_settings(settings), max_request_pixels=sys.maxsize)
    outcomes = classify_paths(model, images, limits, registry.cell_model, settings.max_upload_bytes)
    if as_json:
        print("\n".join(json_line(path, outcome) for path, outcome in zip(images, outcomes)), file=out)
    else:
        print(table(images, outcomes, model), file=out)
    return 0 if all(isinstance(o, Prediction) for o in outcomes) else 1
