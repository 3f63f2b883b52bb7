"""The metadata contract of an exported model: ``models/<name>.json`` beside ``<name>.onnx``.

``training/export.py`` builds a :class:`ModelMetadata` and writes it; the service (``Classifier.load``)
and the model card read the file through it. The fields the readers use are typed; the rest (training
configuration, data set, export details, library versions, ...) stay loosely typed, and every key a
file holds, known or not, survives a load and a dump unchanged. This module needs neither TensorFlow
nor ``training``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from app.preprocessing import PreprocessingParams


class _Open(BaseModel):
    """Typed where read, open for the rest: unknown keys are kept and dumped back in place."""

    model_config = ConfigDict(extra="allow")


class ModelInput(_Open):
    """What the network takes: an NHWC batch of ``shape`` (batch size ``None``), channels in ``channel_order``."""

    name: str | None = None
    shape: list[int | None]
    layout: str | None = None
    channel_order: str | None = None
    scaling: str | None = None
    resize: str | None = None

    @field_validator("shape")
    @classmethod
    def _four_dimensions(cls, shape: list[int | None]) -> list[int | None]:
        if len(shape) != 4 or any(side is None or side <= 0 for side in shape[1:]):
            raise ValueError(f"input shape must be [N, height, width, channels] with positive sizes, not {shape}")
        return shape

    @property
    def size(self) -> tuple[int, int]:
        """Height, width."""
        return self._side(1), self._side(2)

    @property
    def channels(self) -> int:
        return self._side(3)

    def _side(self, axis: int) -> int:
        side = self.shape[axis]
        assert side is not None  # the validator above refuses a None beyond the batch axis
        return side


class Evaluation(_Open):
    """An evaluation of the exported file (TEST, or full-field frames): accuracy typed, the rest kept as written."""

    accuracy: float

    @property
    def accuracy_ci95(self) -> tuple[float, float] | None:
        """The 95% interval of the accuracy; kept untyped so that the file's key order survives a round trip."""
        interval = (self.model_extra or {}).get("accuracy_ci95")
        return (float(interval[0]), float(interval[1])) if interval else None


class ModelMetadata(_Open):
    """One model's metadata file. Field order is the file's order, so a dump reads like the export wrote it."""

    name: str
    version: str
    architecture: str | None = None
    mode: str
    classes: list[str]
    input: ModelInput
    output: dict[str, Any] | None = None
    preprocessing: dict[str, int | float]
    parameters: int | None = None
    validation: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    dataset: dict[str, Any] | None = None
    export: dict[str, Any] | None = None
    versions: dict[str, str] | None = None
    onnx_sha256: str
    # Measured on the exported file after it is written: absent until then.
    test: Evaluation | None = None
    fullfield: Evaluation | None = None

    @field_validator("preprocessing")
    @classmethod
    def _known_parameters(cls, values: dict[str, int | float]) -> dict[str, int | float]:
        PreprocessingParams.from_dict(values)  # ValueError on an unknown parameter
        return values

    @property
    def test_time_augmentation(self) -> str:
        """The views the graph averages over (``training/tta.py``): none, flips or dihedral."""
        return str((self.export or {}).get("test_time_augmentation", "none"))

    @property
    def views(self) -> int:
        """How many views of each image the graph runs its network on (1 without test-time augmentation)."""
        return int((self.export or {}).get("views", 1))

    @property
    def temperature(self) -> float:
        """The temperature the graph divides its log-probabilities by (``training/calibration.py``); 1: none."""
        return float((self.export or {}).get("temperature", 1.0))

    @property
    def params(self) -> PreprocessingParams:
        return PreprocessingParams.from_dict(self.preprocessing)

    @property
    def accuracy_across_inputs(self) -> float | None:
        """Accuracy across both kinds of input the metadata records: the mean of TEST (the data set's
        centred 320x240 cells) and full-field (the same cells anywhere in a 640x480 frame), whichever
        were measured; ``None`` when neither was. The service's default mode is the best by this figure."""
        figures = [evaluation.accuracy for evaluation in (self.test, self.fullfield) if evaluation is not None]
        return sum(figures) / len(figures) if figures else None

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        return cls.model_validate(json.loads(text))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the file: the keys that were given (loaded or built), in the file's order."""
        return self.model_dump(mode="json", exclude_unset=True)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"
