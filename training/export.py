"""Export a trained Keras model to ONNX with its metadata, after a parity check on real images.

tf2onnx's ``from_keras`` fails on Keras 3 models (KeyError on a keras_tensor); ``from_function`` on a
``tf.function`` that calls the model in inference mode converts it exactly.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from importlib import metadata as package_metadata
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app import preprocessing
from app.labels import CLASSES
from app.model import sha256_file
from app.model_metadata import Evaluation, ModelMetadata
from app.preprocessing import PreprocessingParams, to_tensor
from training import data
from training.console import native_log_filter, stages
from training.evaluate import evaluate_fullfield, evaluate_onnx

with native_log_filter():  # TensorFlow's start-up notices (see training/console.py)
    import keras
    import tensorflow as tf
    import tf2onnx

OPSET = 17
INPUT_NAME = "image"
PARITY_TOLERANCE = 1e-5
REPORT_KEYS = ("accuracy", "loss", "ece", "mean_confidence", "accuracy_ci95", "ci_method", "images", "source_photos",
               "per_class", "confusion_matrix", "confusion_matrix_axes", "classes")


class ParityError(RuntimeError):
    """ONNX and Keras disagree on the same inputs: the export is wrong and must not ship."""


def library_versions() -> dict[str, str]:
    names = ["tensorflow-cpu", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime",
             "opencv-python-headless", "numpy", "pillow"]
    versions = {}
    for name in names:
        try:
            versions[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            pass
    return versions


def to_onnx(model: keras.Model, path: Path) -> None:
    height, width, channels = model.input_shape[1:]
    signature = (tf.TensorSpec((None, height, width, channels), tf.float32, name=INPUT_NAME),)
    # A graph that calls the model in inference mode: dropout off, batch norm on its moving statistics.
    infer = tf.function(lambda image: model(image, training=False))
    onnx_model, _ = tf2onnx.convert.from_function(infer, input_signature=signature, opset=OPSET)
    path.write_bytes(onnx_model.SerializeToString())


def parity(model: keras.Model, onnx_path: Path, images: np.ndarray) -> float:
    """Max abs difference of probabilities, Keras vs onnxruntime, on the same uint8 inputs."""
    tensor = to_tensor(images)
    expected = model.predict(tensor, batch_size=64, verbose=0)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {session.get_inputs()[0].name: tensor})[0]
    return float(np.abs(expected - actual).max())


def export(run_dir: Path, out_dir: Path, name: str, data_dir: str | None, parity_images: int = 128,
           limit_per_class: int | None = None, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Write ``<out>/<name>.onnx``, ``<name>.keras`` and ``<name>.json`` from a training run directory.

    Most of its time goes to measuring the exported file (TEST, then full-field frames built afresh):
    each stage says so when it starts, and the measurements show their progress bars.
    """
    stage = stages(progress)
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    result = json.loads((run_dir / "result.json").read_text())
    config = result["config"]
    params = PreprocessingParams.from_dict(config["params"])
    height, width = config["input_size"]
    input_size = (int(height), int(width))
    stage(f"export: loading {run_dir / 'model.keras'}")
    model = keras.models.load_model(run_dir / "model.keras")

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path, keras_path, meta_path = (out_dir / f"{name}{suffix}" for suffix in (".onnx", ".keras", ".json"))
    stage(f"export: converting to ONNX (tf2onnx, opset {OPSET}) -> {onnx_path}")
    to_onnx(model, onnx_path)

    # Parity on real images of every class, preprocessed by the service's own code.
    stage("export: parity check, Keras against onnxruntime on the same TEST images")
    images = data.load_split(data_dir, "TEST", (config["mode"],), input_size, params, cache_dir=cache_dir,
                             limit_per_class=limit_per_class, progress=progress)[config["mode"]].images
    pick = np.linspace(0, len(images) - 1, min(parity_images, len(images))).astype(int)
    difference = parity(model, onnx_path, images[pick])
    if difference > PARITY_TOLERANCE:
        onnx_path.unlink()
        raise ParityError(f"ONNX and Keras differ by {difference:.2e} (> {PARITY_TOLERANCE:.0e}) on real images; "
                          "the export is not faithful and was removed")
    if run_dir.resolve() != out_dir.resolve():
        shutil.copyfile(run_dir / "model.keras", keras_path)

    images_dir = data.resolve_data_dir(data_dir)
    metadata = ModelMetadata(
        name=name,
        version=dt.datetime.now(dt.UTC).strftime("%Y%m%d") + "-" + sha256_file(onnx_path)[:8],
        architecture=config["model"],
        mode=config["mode"],
        classes=list(CLASSES),
        input={
            "name": INPUT_NAME,
            "shape": [None, input_size[0], input_size[1], 3],
            "layout": "NHWC",
            "channel_order": preprocessing.CHANNEL_ORDER,
            "scaling": preprocessing.SCALING,
            "resize": "cv2.INTER_AREA",
        },
        output={"shape": [None, len(CLASSES)], "meaning": "class probabilities (softmax), in the order of 'classes'"},
        preprocessing=params.to_dict(),
        parameters=int(model.count_params()),
        validation=result["validation"],
        training={
            "config": config,
            "seed": config["seed"],
            "epochs_run": result["epochs_run"],
            "best_epoch": result["best_epoch"],
            "train_seconds": result["train_seconds"],
            "stopped_by_time_budget": result["stopped_by_time_budget"],
        },
        dataset={
            "name": "Blood Cell Images (P. Mooney, Kaggle), dataset2-master",
            "fingerprint": data.fingerprint(images_dir),
            "fingerprint_method": "sha256 over relative path and size of every TRAIN and TEST file",
            "subset_per_class": limit_per_class,
        },
        export={
            "tool": "tf2onnx.convert.from_function",
            "opset": OPSET,
            "parity_max_abs_diff": difference,
            "parity_images": int(len(pick)),
            "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
        versions=library_versions(),
        onnx_sha256=sha256_file(onnx_path),
    )
    meta_path.write_text(metadata.to_json())
    # The figures that ship are measured on the exported file, through the service's own loading and
    # preprocessing, not copied from training. Users upload whole microscope frames too: the full-field
    # figure lets the service default to the mode that is best across both kinds of input.
    stage(f"export: measuring {onnx_path.name} on TEST")
    test = evaluate_onnx(onnx_path, data_dir, "TEST", cache_dir=cache_dir, limit_per_class=limit_per_class,
                         progress=progress)
    stage(f"export: measuring {onnx_path.name} on full-field frames (each TEST image in a 640x480 frame)")
    field = evaluate_fullfield(onnx_path, data_dir, "TEST", limit_per_class=limit_per_class, progress=progress)
    metadata = metadata.model_copy(update={
        "test": Evaluation.model_validate({key: test[key] for key in REPORT_KEYS}),
        "fullfield": Evaluation.model_validate({key: field[key] for key in (*REPORT_KEYS, "frame", "seed")}),
    })
    meta_path.write_text(metadata.to_json())
    return onnx_path
