"""The API's request and response bodies (pydantic), which are also its OpenAPI schema."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from app.labels import CLASSES

Label = Literal[CLASSES]  # type: ignore[valid-type]  # the four class names, from the one list of them

Probabilities = create_model(  # type: ignore[call-overload]  # fields made from CLASSES, which mypy cannot follow
    "Probabilities",
    __config__=ConfigDict(extra="forbid"),
    __doc__="The probability of each class; they sum to 1.",
    **{name: (float, Field(ge=0.0, le=1.0)) for name in CLASSES},
)


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable reason, e.g. not_an_image, upload_too_large, unknown_mode")
    message: str = Field(description="what went wrong and what to do about it")
    request_id: str | None = Field(None, description="the X-Request-ID of the request, for the logs")


class ErrorResponse(BaseModel):
    """The one shape of every error answer."""

    error: ErrorDetail


class Box(BaseModel):
    """A box in the uploaded image's pixel coordinates; x, y is its top-left corner."""

    x: int
    y: int
    width: int
    height: int


class WhiteCell(BaseModel):
    found: bool = Field(description="whether a stained region large enough to be a white cell was found")
    box: Box | None = Field(description="bounding box of the largest one")
    area_fraction: float = Field(ge=0.0, le=1.0, description="its stained area over the image's area")
    count: int = Field(ge=0, description="how many such regions the image holds")


class Cell(BaseModel):
    """One white cell of the image, classified on its own by the crop model from its own window."""

    box: Box
    area_fraction: float = Field(ge=0.0, le=1.0, description="its stained area over the image's area")
    window: Box = Field(description="the square window around it that the crop model saw")
    label: Label
    confidence: float = Field(ge=0.0, le=1.0)
    probabilities: Probabilities


class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str


class Prediction(BaseModel):
    label: Label
    confidence: float = Field(ge=0.0, le=1.0, description="the probability of the label")
    probabilities: Probabilities
    mode: str = Field(description="the input mode of the model that answered")
    model: ModelRef
    looks_like_smear: bool = Field(
        description="whether the image looks like a stained blood smear (colours, texture, a stained region of a "
                    "white cell's size); when false the label should not be trusted, and a warning says so")
    smear_score: float = Field(ge=0.0, le=1.0, description="how much the image looks like a stained smear; "
                               "looks_like_smear is smear_score >= 0.5")
    wbc: WhiteCell
    cells: list[Cell] = Field(
        description="every white cell found, largest first, each classified by the crop model from a window "
                    "around it (one answer per cell), at most BLOODCELLS_MAX_CELLS; empty when no cell is found or "
                    "no crop model is loaded")
    cells_omitted: int = Field(0, ge=0, description="white cells found beyond those in `cells` (the smallest ones), "
                               "not classified")
    warnings: list[str]


class Classification(Prediction):
    elapsed_ms: float = Field(description="time spent on the request in the service, upload included")


class BatchItem(BaseModel):
    """One file of a batch, in upload order: a prediction or the error that file got."""

    index: int
    filename: str | None
    result: Prediction | None = None
    error: ErrorDetail | None = None


class BatchClassification(BaseModel):
    mode: str
    model: ModelRef
    results: list[BatchItem]
    elapsed_ms: float


class ModelInfo(BaseModel):
    mode: str
    name: str
    version: str
    sha256: str
    default: bool = Field(description="whether requests that name neither mode nor model get this model")
    mode_default: bool = Field(description="whether requests that name only its mode get this model")
    architecture: str | None = Field(description="the network's family in the training zoo (training/zoo.py)")
    parameters: int | None = Field(description="trainable and fixed weights of the network")
    input_size: tuple[int, int] = Field(description="height, width of the model input")
    test_time_augmentation: str = Field(
        description="views of each image the graph runs the network on and averages, inside the one call: none, "
                    "flips (the image and its three mirror images) or dihedral (those and their quarter turns)")
    temperature: float = Field(
        description="the graph's calibration: its averaged probabilities p become softmax(log p / temperature), "
                    "with the temperature fitted on the held-out photos of the recipe's k-fold networks; 1: none")
    test_accuracy: float | None = Field(description="accuracy on the data set's TEST split (centred 320x240 cells)")
    test_accuracy_ci95: tuple[float, float] | None = Field(
        description="95% interval of the TEST accuracy, a bootstrap over the TEST source photos")
    fullfield_accuracy: float | None = Field(
        description="accuracy on the same cells placed anywhere in a 640x480 frame; the default mode is the "
                    "one with the best mean of the two")
    metadata: dict[str, Any] = Field(description="the model's metadata file, as exported")


class ModelsResponse(BaseModel):
    default_mode: str
    defaults: dict[str, str] = Field(description="each mode's default model, by name")
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    modes: list[str]
    default_mode: str
    models: list[str]
