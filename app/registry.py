"""The loaded models by input mode, the default mode, and the start-up warm-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def reported_accuracy(model: Classifier) -> float | None:
    """The model's accuracy across both kinds of input its metadata records (see
    ``ModelMetadata.accuracy_across_inputs``); ``None`` when it records none."""
    return model.contract.accuracy_across_inputs


@dataclass(frozen=True)
class ModelRegistry:
    models: dict[str, Classifier]
    default_mode: str

    @classmethod
    def load(cls, model_dir: Path, threads: int = 1, default_mode: str | None = None) -> ModelRegistry:
        models = load_model_dir(model_dir, threads=threads)
        if default_mode is None:
            # A model that records no accuracy is never preferred to one that does.
            default_mode = max(models, key=lambda mode: reported_accuracy(models[mode]) or -1.0)
        elif default_mode not in models:
            raise ModelLoadError(f"the default mode {default_mode!r} has no model in {model_dir} (loaded: "
                                 f"{', '.join(models)}); export one or set BLOODCELLS_DEFAULT_MODE to a loaded mode")
        return cls(models=models, default_mode=default_mode)

    @property
    def cell_model(self) -> Classifier | None:
        """The crop model, which classifies every white cell of an image from a window around it."""
        return self.models.get("crop")

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(self.models)

    def get(self, mode: str | None) -> Classifier:
        """The model for ``mode`` (any case), or the default one for ``None``."""
        try:
            return self.models[mode.lower() if mode else self.default_mode]
        except KeyError:
            raise UnknownModeError(str(mode), self.modes) from None

    def warm_up(self) -> None:
        """One full preprocessing + inference per model, so the first request pays no lazy initialisation."""
        blank = np.full((240, 320, 3), 230, np.uint8)
        for model in self.models.values():
            inputs = model.prepare(blank).model_image[None]
            model.predict(np.concatenate([inputs, inputs]))
            model.predict(inputs)
        logger.info("models ready", extra={"fields": {
            "models": {mode: f"{m.name} {m.version}" for mode, m in self.models.items()},
            "default_mode": self.default_mode}})
