"""ONNX models with their metadata: loading with checks, preprocessing and batched onnxruntime calls.

A model is ``<name>.onnx`` beside ``<name>.json`` (its contract: ``app/model_metadata.py``). The JSON
says which input mode the model was trained on, its input size, channel order, scaling and
preprocessing parameters; loading refuses a file whose sha256 or input shape does not match what
its metadata claims, so the service can never run a model with another model's preprocessing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import onnxruntime as ort

from app import preprocessing
from app.labels import CLASSES
from app.model_metadata import ModelMetadata
from app.preprocessing import CellCrop, Preprocessed, PreprocessingParams


class ModelLoadError(RuntimeError):
    """A model file or its metadata is missing, corrupt or inconsistent; the message says what to do."""


def _short(exc: Exception, limit: int = 300) -> str:
    """One line of an error for a log: pydantic's list every problem over several lines."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# The pixels one onnxruntime call runs the network on (views included). A larger call's activations
# outgrow the worker's mmap threshold (app/malloc.py) and each call maps and faults them in afresh, while
# a four-view graph gains next to nothing from batching: the crop model took 0.22 ms per image one image
# a call and 0.93 at 8 (`benchmarks.run`'s floor, onnxruntime crop batch 1 and 8). 20,000 is one image
# of each four-view model, four of a one-view 64x64 model.
CALL_PIXELS = 20_000


@dataclass(frozen=True)
class Classifier:
    """One exported model: its metadata, its preprocessing and its onnxruntime session."""

    name: str
    mode: preprocessing.Mode
    version: str
    sha256: str
    classes: tuple[str, ...]
    input_size: tuple[int, int]  # height, width
    params: PreprocessingParams
    metadata: dict  # the file's JSON object, as exported (``/models`` answers it)
    contract: ModelMetadata  # the same, typed
    session: ort.InferenceSession
    input_name: str

    @classmethod
    def load(cls, onnx_path: str | Path, threads: int = 1) -> Classifier:
        onnx_path = Path(onnx_path)
        meta_path = onnx_path.with_suffix(".json")
        if not onnx_path.is_file():
            raise ModelLoadError(f"model file {onnx_path} not found; export one with `bloodcells export`")
        if not meta_path.is_file():
            raise ModelLoadError(f"metadata {meta_path} not found beside {onnx_path.name}; "
                                 "re-export the model with `bloodcells export`, which writes both")
        try:
            metadata = json.loads(meta_path.read_text())
            contract = ModelMetadata.model_validate(metadata)
        except OSError as exc:
            raise ModelLoadError(f"cannot read {meta_path} ({exc.strerror or exc}); let the service's user read "
                                 "the model directory") from exc
        except (ValueError, RecursionError) as exc:  # bad JSON (nested without end), or a broken contract
            raise ModelLoadError(f"metadata {meta_path} is malformed ({_short(exc)}); re-export the model "
                                 "with `bloodcells export`") from exc
        try:
            views, temperature = contract.views, contract.temperature
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"{meta_path.name} has a malformed export section ({_short(exc)}); re-export the "
                                 "model with `bloodcells export`") from exc
        if views < 1 or not temperature > 0:
            raise ModelLoadError(f"{meta_path.name} says the graph runs {views} views of each image at temperature "
                                 f"{temperature}; re-export the model with `bloodcells export`")
        mode, classes, expected_sha = contract.mode, tuple(contract.classes), contract.onnx_sha256
        (height, width), channels = contract.input.size, contract.input.channels
        actual_sha = sha256_file(onnx_path)
        if actual_sha != expected_sha:
            raise ModelLoadError(f"{onnx_path.name} has sha256 {actual_sha[:12]}... but {meta_path.name} describes "
                                 f"{expected_sha[:12]}...: the file and its metadata do not belong together; "
                                 "re-export or restore both")
        if mode not in preprocessing.MODES:
            raise ModelLoadError(f"{meta_path.name} names unknown mode {mode!r}")
        if classes != CLASSES:
            raise ModelLoadError(f"{meta_path.name} lists classes {classes}, expected {CLASSES}")
        if contract.input.channel_order != preprocessing.CHANNEL_ORDER:
            raise ModelLoadError(f"{meta_path.name} expects channel order {contract.input.channel_order}, "
                                 f"this service feeds {preprocessing.CHANNEL_ORDER}")
        # onnxruntime's usage telemetry: off (it also warns on a read-only root filesystem).
        ort.disable_telemetry_events()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # The arena keeps, for the life of the process, memory sized by the largest batch seen; for a
        # model this small plain allocations are as fast (measured) and the worker stays smaller.
        options.enable_cpu_mem_arena = False
        try:
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelLoadError(f"onnxruntime cannot load {onnx_path}: {exc}") from exc
        model_input = session.get_inputs()[0]
        if list(model_input.shape[1:]) != [height, width, channels] or channels != 3:
            raise ModelLoadError(f"{onnx_path.name} takes input {model_input.shape}, but {meta_path.name} says "
                                 f"[N, {height}, {width}, {channels}]: re-export the model")
        output_shape = session.get_outputs()[0].shape
        if output_shape[-1] != len(classes):
            raise ModelLoadError(f"{onnx_path.name} outputs {output_shape}, expected {len(classes)} class probabilities")
        return cls(name=contract.name, mode=cast(preprocessing.Mode, mode), version=contract.version, sha256=actual_sha,
                   classes=classes, input_size=(height, width), params=contract.params, metadata=contract.to_dict(),
                   contract=contract, session=session, input_name=model_input.name)

    def prepare(self, rgb: np.ndarray) -> Preprocessed:
        return preprocessing.preprocess(rgb, self.mode, self.input_size, self.params)

    @property
    def images_per_call(self) -> int:
        """The most images one onnxruntime call takes: CALL_PIXELS over the pixels the graph runs per image
        (its input, times the views of its test-time augmentation)."""
        height, width = self.input_size
        return max(1, CALL_PIXELS // (height * width * self.contract.views))

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N x classes) for uint8 model inputs (N x H x W x 3), in one onnxruntime call."""
        return self.session.run(None, {self.input_name: preprocessing.to_tensor(images)})[0]

    def predict_batched(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """``predict`` in onnxruntime calls of at most ``batch_size`` images and at most ``images_per_call``:
        the one way a batch is split."""
        size = min(batch_size or self.images_per_call, self.images_per_call)
        if len(images) <= size:
            return self.predict(images)
        return np.concatenate([self.predict(images[i:i + size]) for i in range(0, len(images), size)])

    def cell_crops(self, prepared: Preprocessed, start: int = 0, stop: int | None = None) -> list[CellCrop]:
        """This model's inputs for the white cells of an image another model prepared, largest first
        (from the ``start``-th to before the ``stop``-th): found again with this model's parameters where
        they differ from the other model's."""
        wbc = prepared.wbc if prepared.params == self.params else \
            preprocessing.locate_wbc(preprocessing.stain_mask(prepared.rgb, self.params), self.params)
        return preprocessing.cell_crops(prepared.rgb, wbc, self.input_size, self.params, start=start, stop=stop)


def load_model_dir(model_dir: str | Path, threads: int = 1) -> dict[str, Classifier]:
    """Every ``*.onnx`` with metadata in ``model_dir``, by model name."""
    model_dir = Path(model_dir)
    paths = sorted(model_dir.glob("*.onnx"))
    if not paths:
        raise ModelLoadError(f"no .onnx models in {model_dir}; set the model directory to the repository's models/")
    models: dict[str, Classifier] = {}
    for path in paths:
        model = Classifier.load(path, threads=threads)
        if model.name in models:
            raise ModelLoadError(f"{path.name} and another file both carry the model name {model.name!r}; "
                                 "re-export one of them with another --name")
        models[model.name] = model
    return models
