"""The loaded models by name, the default model of each input mode, and the start-up warm-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from app import preprocessing, smear
from app.model import Classifier, ModelLoadError, load_model_dir

logger = logging.getLogger("bloodcells")


class UnknownModeError(LookupError):
    """A mode that names no loaded model; the message lists the ones that do."""

    def __init__(self, mode: str, available: tuple[str, ...]) -> None:
        self.mode = mode
        self.available = available
        self.message = (f"mode {mode!r} is not available: no model for it is loaded; "
                        f"choose one of {', '.join(available)}")
        super().__init__(self.message)


class UnknownModelError(LookupError):
    """A model name that names no loaded model, or a model of another mode than the one asked for."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


def reported_accuracy(model: Classifier) -> float | None:
    """The model's accuracy across both kinds of input its metadata records (see
    ``ModelMetadata.accuracy_across_inputs``); ``None`` when it records none."""
    return model.contract.accuracy_across_inputs


def _most_accurate(models: list[Classifier]) -> Classifier:
    # A model that records no accuracy is never preferred to one that does; ties go to the first name.
    return max(sorted(models, key=lambda m: m.name), key=lambda m: reported_accuracy(m) or -1.0)


@dataclass(frozen=True)
class ModelRegistry:
    models: dict[str, Classifier]  # by name
    defaults: dict[str, str]  # mode -> the name of the model that answers a request naming only the mode
    default_mode: str

    @classmethod
    def load(cls, model_dir: Path, threads: int = 1, default_mode: str | None = None) -> ModelRegistry:
        models = load_model_dir(model_dir, threads=threads)
        by_mode: dict[str, list[Classifier]] = {}
        for model in models.values():
            by_mode.setdefault(model.mode, []).append(model)
        defaults = {mode: _most_accurate(of_mode).name for mode, of_mode in by_mode.items()}
        if default_mode is None:
            default_mode = _most_accurate(list(models.values())).mode
        elif default_mode not in defaults:
            raise ModelLoadError(f"the default mode {default_mode!r} has no model in {model_dir} (loaded: "
                                 f"{', '.join(defaults)}); export one or set BLOODCELLS_DEFAULT_MODE to a loaded mode")
        return cls(models=models, defaults=defaults, default_mode=default_mode)

    @property
    def cell_model(self) -> Classifier | None:
        """The crop mode's model, which classifies every white cell of an image from a window around it."""
        name = self.defaults.get("crop")
        return self.models[name] if name else None

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(self.defaults)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.models)

    def is_default(self, model: Classifier) -> bool:
        """Whether ``model`` answers the requests that name only its mode."""
        return self.defaults.get(model.mode) == model.name

    def get(self, mode: str | None, name: str | None = None) -> Classifier:
        """The model called ``name``; else the default model of ``mode`` (any case), or of the default mode."""
        if name is not None:
            return self._named(name, mode)
        try:
            return self.models[self.defaults[mode.lower() if mode else self.default_mode]]
        except KeyError:
            raise UnknownModeError(str(mode), self.modes) from None

    def _named(self, name: str, mode: str | None) -> Classifier:
        model = self.models.get(name)
        if model is None:
            raise UnknownModelError(f"model {name!r} is not loaded; choose one of {', '.join(self.names)} "
                                    "(GET /models describes each), or leave model out for the mode's default")
        if mode and mode.lower() != model.mode:
            raise UnknownModelError(f"model {name!r} serves mode {model.mode!r}, not {mode!r}; leave mode out "
                                    "when you name the model")
        return model

    def warm_up(self) -> None:
        """Every step of a request once per model, on a drawn smear decoded from JPEG and from PNG, so that the
        first request pays no lazy initialisation: OpenCV builds its Lab tables on the first smear check (67 ms
        here), Pillow loads its format plugins on the first header read, and a blank image finds no cell to crop."""
        for data in warm_up_images():
            rgb = preprocessing.decode(data).rgb
            for model in self.models.values():
                prepared = model.prepare(rgb)
                smear.check(prepared)
                inputs = prepared.model_image[None]
                model.predict(np.concatenate([inputs, inputs]))
                model.predict(inputs)
                model.cell_crops(prepared)
        logger.info("models ready", extra={"fields": {
            "models": {name: f"{m.mode} {m.version}" for name, m in self.models.items()},
            "defaults": self.defaults, "default_mode": self.default_mode}})


def warm_up_images() -> tuple[bytes, bytes]:
    """A 320x240 image drawn to go through every step: a pale textured ground and one purple white cell that the
    stain mask finds and crop mode cuts out, as JPEG and as PNG bytes."""
    rows, cols = np.mgrid[0:240, 0:320]
    texture = (12 * np.sin(rows / 3.0) * np.cos(cols / 3.0)).astype(np.int16)
    rgb = np.clip(np.array([225, 195, 205], np.int16) + texture[..., None], 0, 255).astype(np.uint8)
    cell = (rows - 120) ** 2 + (cols - 160) ** 2 < 22 ** 2
    rgb[cell] = (120, 60, 160)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    return cv2.imencode(".jpg", bgr)[1].tobytes(), cv2.imencode(".png", bgr)[1].tobytes()
