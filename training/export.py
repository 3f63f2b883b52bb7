"""Export a trained Keras model to ONNX with its metadata, after a parity check on real images.

tf2onnx's ``from_keras`` fails on Keras 3 models (KeyError on a keras_tensor); ``from_function`` on a
``tf.function`` that calls the model in inference mode converts it exactly.

Two choices are folded into the graph, so that the service still makes one onnxruntime call: several
runs of one mode become one ensemble (the mean of their probabilities), and test-time augmentation
(``training.tta``) runs it on each view of the image and averages again. A temperature fitted on the
recipe's k-fold predictions (``training.calibration``) then rescales the averaged probabilities.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Callable
from importlib import metadata as package_metadata
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app import preprocessing
from app.labels import CLASSES
from app.model import sha256_file
from app.model_metadata import Evaluation, ModelMetadata
from app.preprocessing import PreprocessingParams, to_tensor
from training import calibration, data, tta
from training.config import TrainConfig
from training.console import native_log_filter, stages
from training.evaluate import REPORT_KEYS, evaluate_fullfield, evaluate_onnx, evaluate_validation

with native_log_filter():  # TensorFlow's start-up notices (see training/console.py)
    import keras
    import tensorflow as tf
    import tf2onnx

OPSET = 17
INPUT_NAME = "image"
PARITY_TOLERANCE = 1e-5
# Training settings that a k-fold report may differ from a run in and still calibrate it.
CALIBRATION_FREE = frozenset({"seed", "threads", "time_budget_s"})


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


def to_onnx(model: keras.Model, path: Path, kind: tta.Kind = "none", temperature: float = 1.0) -> None:
    height, width, channels = model.input_shape[1:]
    signature = (tf.TensorSpec((None, height, width, channels), tf.float32, name=INPUT_NAME),)

    def infer(image):
        # The model in inference mode: dropout off, batch norm on its moving statistics.
        probabilities = tta.predict_tf(lambda x: model(x, training=False), image, kind)
        return probabilities if temperature == 1.0 else calibration.scale_tf(probabilities, temperature)
    onnx_model, _ = tf2onnx.convert.from_function(tf.function(infer), input_signature=signature, opset=OPSET)
    path.write_bytes(onnx_model.SerializeToString())


def reference(predict: Callable[[np.ndarray], np.ndarray], tensor: np.ndarray, kind: tta.Kind = "none",
              temperature: float = 1.0) -> np.ndarray:
    """What the exported graph computes, in NumPy around ``predict`` (the network): the mean over the views,
    then the temperature."""
    probabilities = tta.predict_numpy(predict, tensor, kind)
    return probabilities if temperature == 1.0 else calibration.scale(probabilities, temperature)


def parity(model: keras.Model, onnx_path: Path, images: np.ndarray, kind: tta.Kind = "none",
           temperature: float = 1.0) -> float:
    """Max abs difference of probabilities, Keras (views and temperature in NumPy) vs onnxruntime, on the same
    uint8 inputs."""
    tensor = to_tensor(images)
    expected = reference(lambda x: model.predict(x, batch_size=64, verbose=0), tensor, kind, temperature)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {session.get_inputs()[0].name: tensor})[0]
    return float(np.abs(expected - actual).max())


def ensemble(members: list[keras.Model]) -> keras.Model:
    """One model whose output is the mean of the members' probabilities (one member: itself)."""
    if len(members) == 1:
        return members[0]
    image = keras.Input(members[0].input_shape[1:], name=INPUT_NAME)
    # Re-wrapped under distinct names: two runs of one architecture share every layer name.
    wrapped = [keras.Model(m.inputs, m.outputs[0], name=f"member_{i}") for i, m in enumerate(members)]
    return keras.Model(image, keras.layers.Average(name="mean")([m(image) for m in wrapped]), name="ensemble")


def read_run(source: Path) -> tuple[dict, Path]:
    """A training run's result and Keras file, from its directory, or from a shipped model's ``.keras``
    (its metadata beside it holds the run's settings and figures): a shipped network exported again."""
    if source.is_dir():
        return json.loads((source / "result.json").read_text()), source / "model.keras"
    if source.suffix != ".keras" or not source.with_suffix(".json").is_file():
        raise FileNotFoundError(f"{source}: give a training run directory (result.json, model.keras) or a shipped "
                                "model's .keras with its .json beside it")
    metadata = ModelMetadata.model_validate_json(source.with_suffix(".json").read_text())
    training = metadata.training or {}
    result = {key: training[key] for key in ("config", "epochs_run", "best_epoch", "train_seconds",
                                             "stopped_by_time_budget")}
    # The run's own figure, of the plain network (an export with views keeps it apart from the graph's).
    return {**result, "validation": training.get("validation") or metadata.validation}, source


def read_temperature(kfold_report: Path, config: TrainConfig, kind: tta.Kind) -> float:
    """The temperature that ``bloodcells kfold`` fitted for ``kind`` on folds trained with this run's settings."""
    found = json.loads(Path(kfold_report).read_text())
    folds = TrainConfig.recorded(found["config"]).to_dict()
    # How sure a network is depends on all of its training (augmentation, label smoothing, when it stopped);
    # only the seed and the machine's settings may differ.
    differ = sorted(key for key, value in config.to_dict().items()
                    if key not in CALIBRATION_FREE and folds.get(key) != value)
    if differ:
        raise ValueError(f"{kfold_report} cross-validated other training settings than this run's "
                         f"({', '.join(f'{key}: {folds.get(key)!r} there, {config.to_dict()[key]!r} here' for key in differ)}): "
                         "fit the temperature on the folds of this run's recipe")
    fitted = found.get("calibration", {}).get(kind)
    if not fitted or fitted.get("temperature") is None:
        raise ValueError(f"{kfold_report} has no temperature for test-time augmentation {kind!r}"
                         + (f" ({fitted['reason']})" if fitted else "") + ": run `bloodcells kfold --resume` with "
                         "that report's settings to measure it")
    return float(fitted["temperature"])


def _same_inputs(configs: list[TrainConfig], run_dirs: list[Path]) -> None:
    first = configs[0]
    for config, run_dir in zip(configs[1:], run_dirs[1:], strict=True):
        if (config.mode, config.size, config.params) != (first.mode, first.size, first.params):
            raise ValueError(f"{run_dir} takes other inputs than {run_dirs[0]} (mode, input size or preprocessing "
                             "parameters differ): an ensemble's members must share them")


def export(run_dirs: Path | list[Path], out_dir: Path, name: str, data_dir: str | None, parity_images: int = 128,
           limit_per_class: int | None = None, cache_dir: Path | None = None, progress: bool = True,
           test_time_augmentation: str = "none", calibration_report: Path | None = None) -> Path:
    """Write ``<out>/<name>.onnx``, ``<name>.keras`` and ``<name>.json`` from one training run directory, or
    from several (an ensemble: the first run's validation split and settings are the model's).

    Most of its time goes to measuring the exported file (TEST, then full-field frames built afresh):
    each stage says so when it starts, and the measurements show their progress bars.
    """
    stage = stages(progress)
    run_dirs = [Path(d) for d in ([run_dirs] if isinstance(run_dirs, (str, Path)) else run_dirs)]
    out_dir = Path(out_dir)
    runs = [read_run(d) for d in run_dirs]
    results = [result for result, _ in runs]
    result = results[0]
    configs = [TrainConfig.recorded(r["config"]) for r in results]
    _same_inputs(configs, run_dirs)
    config = result["config"]
    params = PreprocessingParams.from_dict(config["params"])
    input_size = configs[0].size
    kind = tta.check(test_time_augmentation, input_size)
    if calibration_report and len(run_dirs) > 1:
        raise ValueError("--calibration fits one network of the recipe; an ensemble of several averages their "
                         "answers and is less sure than each: export it without a temperature")
    temperature = read_temperature(calibration_report, configs[0], kind) if calibration_report else 1.0
    stage(f"export: loading {', '.join(str(path) for _, path in runs)}")
    members = [keras.models.load_model(path) for _, path in runs]
    model = ensemble(members)

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path, keras_path, meta_path = (out_dir / f"{name}{suffix}" for suffix in (".onnx", ".keras", ".json"))
    views = len(tta.VIEWS[kind])
    stage(f"export: converting to ONNX (tf2onnx, opset {OPSET}; {len(members)} member(s), {views} view(s)) "
          f"-> {onnx_path}")
    to_onnx(model, onnx_path, kind, temperature)

    # Parity on real images of every class, preprocessed by the service's own code.
    stage("export: parity check, Keras against onnxruntime on the same TEST images")
    images = data.load_split(data_dir, "TEST", (config["mode"],), input_size, params, cache_dir=cache_dir,
                             limit_per_class=limit_per_class, progress=progress)[config["mode"]].images
    pick = np.linspace(0, len(images) - 1, min(parity_images, len(images))).astype(int)
    difference = parity(model, onnx_path, images[pick], kind, temperature)
    if difference > PARITY_TOLERANCE:
        onnx_path.unlink()
        raise ParityError(f"ONNX and Keras differ by {difference:.2e} (> {PARITY_TOLERANCE:.0e}) on real images; "
                          "the export is not faithful and was removed")
    if len(members) > 1:
        model.save(keras_path)
    elif runs[0][1].resolve() != keras_path.resolve():
        shutil.copyfile(runs[0][1], keras_path)

    images_dir = data.resolve_data_dir(data_dir)
    metadata = ModelMetadata(
        name=name,
        version=dt.datetime.now(dt.UTC).strftime("%Y%m%d") + "-" + sha256_file(onnx_path)[:8],
        architecture=config["model"] if len(members) == 1 else f"{len(members)} x " + " + ".join(
            sorted({c.model for c in configs})),
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
            "validation": result["validation"],  # the run's own figure, of one network without augmentation
            **({"members": [{key: r[key] for key in ("config", "epochs_run", "best_epoch", "train_seconds")}
                            for r in results]} if len(members) > 1 else {}),
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
            "members": len(members),
            "test_time_augmentation": kind,
            "views": views,
            # Fitted on the k-fold networks' held-out photos of this recipe (training/calibration.py); 1: none.
            "temperature": temperature,
            **({"temperature_from": str(calibration_report)} if calibration_report else {}),
            "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
        versions=library_versions(),
        onnx_sha256=sha256_file(onnx_path),
    )
    meta_path.write_text(metadata.to_json())
    if len(members) > 1 or kind != "none":
        # The training run's validation figure is of one plain network: measure what ships instead.
        stage(f"export: measuring {onnx_path.name} on the first run's validation photos")
        validation = evaluate_validation(onnx_path, data_dir, configs[0], cache_dir=cache_dir, progress=progress)
        metadata = metadata.model_copy(update={"validation": {key: validation[key] for key in REPORT_KEYS}})
        meta_path.write_text(metadata.to_json())
    # The figures that ship are measured on the exported file, through the service's own loading and
    # preprocessing, not copied from training. Users upload whole microscope frames too: the full-field
    # figure lets the service default to the mode that is best across both kinds of input.
    stage(f"export: measuring {onnx_path.name} on TEST")
    test = evaluate_onnx(onnx_path, data_dir, "TEST", cache_dir=cache_dir, limit_per_class=limit_per_class,
                         progress=progress)
    stage(f"export: measuring {onnx_path.name} on full-field frames (each TEST image in a 640x480 frame)")
    field = evaluate_fullfield(onnx_path, data_dir, "TEST", limit_per_class=limit_per_class, progress=progress,
                               cache_dir=cache_dir)
    metadata = metadata.model_copy(update={
        "test": Evaluation.model_validate({key: test[key] for key in REPORT_KEYS}),
        "fullfield": Evaluation.model_validate({key: field[key] for key in (*REPORT_KEYS, "frame", "seed")}),
    })
    meta_path.write_text(metadata.to_json())
    return onnx_path
