"""What a training run is: one ``TrainConfig``, its defaults, and the recipes of the shipped models.

Every default of ``bloodcells train`` and ``bloodcells experiment`` is a field default here, never
restated in the command line. A recipe, ``training/recipes/<name>.toml``, holds the fields that made
the shipped model ``models/<name>.onnx`` (the same values as ``training.config`` in its metadata);
options given on the command line override it field by field.

No TensorFlow here: the command line is built from this module, and ``bloodcells serve`` builds it too.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from app.preprocessing import MODES, Mode, PreprocessingParams
from training import paper

# The names training.zoo builds: the paper's Table 1, then this project's model (zoo checks they match).
MODELS: tuple[str, ...] = (*paper.VARIANTS, "sepnet", "sepnet-wide")
AUGMENTATIONS = ("none", "flips", "flips+jitter", "flips+jitter+rot90", "flips+jitter+stain", "flips+jitter+mixup",
                 "flips+jitter+zoom", "flips+jitter+cutmix", "flips+jitter+edge")
SCHEDULES = ("constant", "cosine")
# How the copies of one source photo are found, for every split by photo: "appearance"
# (training.photos); "names", the file names' _N_, which do not identify photos (the shipped
# models were trained on splits by names).
PHOTOS = ("appearance", "names")

# The input (height, width) of a mode when a run names none. original and color: the paper's 60x80,
# the aspect of the data set's 320x240 frames. crop: the window cut around the cell is square, so a
# 60x80 input would stretch it; 64x64 is what the shipped crop model uses (training/recipes/crop.toml).
INPUT_SIZES: dict[str, tuple[int, int]] = {"original": paper.INPUT_SIZE, "color": paper.INPUT_SIZE, "crop": (64, 64)}

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


class RecipeError(ValueError):
    """A recipe that does not exist or does not describe a TrainConfig; the message says which."""


@dataclass
class TrainConfig:
    model: str = "dropout0.3"
    mode: Mode = "original"
    input_size: tuple[int, int] | None = None  # height, width; None: INPUT_SIZES[mode]
    epochs: int = 80
    batch_size: int = 32
    learning_rate: float = 1e-3  # can stall at loss ln 4 on original images: see plateau_epochs
    schedule: str = "constant"  # or "cosine" (decay to 0 over `epochs`, 2 warm-up epochs)
    patience: int = 15
    # The paper's CNN can sit on a loss plateau at ln 4 for several epochs on original images
    # before it finds the stained cell: no early stopping before this epoch.
    start_from_epoch: int = 10
    # ...and sometimes never leaves it (all hidden units dead): a run still at chance-level validation
    # loss after `plateau_epochs` epochs restarts from a new initialisation, at most `max_restarts` times.
    plateau_epochs: int = 8
    max_restarts: int = 3
    val_fraction: float = 0.15
    photos: str = "appearance"  # one of PHOTOS
    seed: int = 0
    augment: str = "flips"  # one of AUGMENTATIONS: jitter = small shifts and stain-color gains
    label_smoothing: float = 0.0
    time_budget_s: float | None = None
    threads: int = 0  # TensorFlow intra-op threads; 0: all cores
    limit_per_class: int | None = None  # smoke runs on a small stratified subset
    params: PreprocessingParams = field(default_factory=PreprocessingParams)

    def __post_init__(self) -> None:
        # Checked here, not when training starts: a typo in a recipe fails before minutes of preprocessing.
        for name, value, known in (("model", self.model, MODELS), ("mode", self.mode, MODES),
                                   ("augment", self.augment, AUGMENTATIONS), ("schedule", self.schedule, SCHEDULES),
                                   ("photos", self.photos, PHOTOS)):
            if value not in known:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(known)}")
        if self.augment.endswith("+edge") and self.mode != "crop":
            raise ValueError(f"augmentation {self.augment!r} cuts the crop mode's cells at an edge; "
                             f"the {self.mode} mode has no crop window: choose another augmentation")
        height, width = self.input_size if self.input_size is not None else INPUT_SIZES[self.mode]
        self.input_size = (int(height), int(width))

    @property
    def size(self) -> tuple[int, int]:
        """``input_size`` once ``__post_init__`` has filled it in."""
        assert self.input_size is not None
        return self.input_size

    def to_dict(self) -> dict:
        values = asdict(self)
        values["params"] = self.params.to_dict()
        values["input_size"] = list(self.size)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """From ``to_dict``'s shape (a recipe, a run's ``result.json``); ``params`` may name only some."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise RecipeError(f"unknown training settings {sorted(unknown)}; known: {sorted(known)}")
        params = PreprocessingParams.from_dict(values.get("params", {}))
        return cls(**{**values, "params": params})

    @classmethod
    def recorded(cls, values: dict) -> TrainConfig:
        """A run's recorded configuration: one recorded before ``photos`` existed split by names."""
        return cls.from_dict({"photos": "names", **values})


def recipe_names() -> tuple[str, ...]:
    return tuple(sorted(path.stem for path in RECIPES_DIR.glob("*.toml")))


def recipe_path(name: str) -> Path:
    return RECIPES_DIR / f"{name}.toml"


def read_recipe(name: str) -> dict:
    """A recipe's settings, named as TrainConfig's fields; a field it leaves out keeps its default
    (TOML has no null: that is how a recipe says "no time budget")."""
    path = recipe_path(name)
    if not path.is_file():
        raise RecipeError(f"no recipe {name!r} in {RECIPES_DIR}; choose one of {', '.join(recipe_names())}")
    try:
        values = tomllib.loads(path.read_text())
        TrainConfig.from_dict(values)  # an unknown field or value fails now, naming the file
    except ValueError as exc:  # tomllib.TOMLDecodeError is one too
        raise RecipeError(f"{path}: {exc}") from None
    return values


def configure(recipe: dict | None = None, **overrides) -> TrainConfig:
    """TrainConfig's defaults, then the recipe's values, then the overrides (the command line's options).

    ``params`` merges parameter by parameter, so ``--param crop_min_side=128`` keeps the recipe's others.
    """
    recipe = recipe or {}
    params = {**recipe.get("params", {}), **overrides.pop("params", {})}
    return TrainConfig.from_dict({**recipe, **overrides, "params": params})
