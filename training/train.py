"""Train one model on one input mode: seeded, source-photo validation split, early stopping, TEST last.

Reads top to bottom: load the preprocessed split (the service's own preprocessing, cached), carve the
validation photos out of TRAIN, fit with early stopping on validation loss (best epoch restored),
then touch TEST once for the final report. Artifacts go to ``<out>/<model>/<mode>/``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tqdm.keras import TqdmCallback  # noqa: E402

from app.labels import CLASSES  # noqa: E402
from app.preprocessing import Mode, PreprocessingParams, to_tensor  # noqa: E402
from training import data, report, zoo  # noqa: E402


@dataclass
class TrainConfig:
    model: str = "dropout0.3"
    mode: Mode = "original"
    input_size: tuple[int, int] = (60, 80)  # height, width
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
    seed: int = 0
    augment: str = "flips"  # one of AUGMENTATIONS: jitter = small shifts and stain-color gains
    label_smoothing: float = 0.0
    time_budget_s: float | None = None
    threads: int = 0  # TensorFlow intra-op threads; 0: all cores
    limit_per_class: int | None = None  # smoke runs on a small stratified subset
    params: PreprocessingParams = field(default_factory=PreprocessingParams)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["params"] = self.params.to_dict()
        values["input_size"] = list(self.input_size)
        return values


@dataclass
class RunResult:
    config: TrainConfig
    model: keras.Model
    run_dir: Path
    parameters: int
    epochs_run: int
    best_epoch: int
    train_seconds: float
    stopped_by_time_budget: bool
    restarts: int
    validation: dict
    test: dict


class PlateauGuard(keras.callbacks.Callback):
    """Stops a run whose validation loss is still at chance level (ln 4) after ``epochs`` epochs."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs, self.stuck = epochs, False

    def on_epoch_end(self, epoch, logs=None) -> None:
        if epoch + 1 == self.epochs and (logs or {}).get("val_loss", 0.0) > 0.98 * np.log(len(CLASSES)):
            self.stuck = True
            self.model.stop_training = True


class TimeBudget(keras.callbacks.Callback):
    """Stops training after ``seconds`` of wall time (VGG16 from scratch on two CPU cores)."""

    def __init__(self, seconds: float | None) -> None:
        super().__init__()
        self.seconds, self.hit, self.start = seconds, False, 0.0

    def on_train_begin(self, logs=None) -> None:
        self.start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None) -> None:
        if self.seconds and time.monotonic() - self.start > self.seconds:
            self.hit = True
            self.model.stop_training = True


AUGMENTATIONS = ("none", "flips", "flips+jitter", "flips+jitter+rot90")


def augmenter(kind: str, seed: int):
    """Augmentation on the float tensor; every op keeps a black background black (color mode)."""
    if kind == "none":
        return None
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; choose one of {', '.join(AUGMENTATIONS)}")
    generator = tf.random.Generator.from_seed(seed)
    jitter = kind.startswith("flips+jitter")
    quarter_turns = kind.endswith("+rot90")

    def augment(images, labels):
        batch = tf.shape(images)[0]
        flip_lr = generator.uniform([batch, 1, 1, 1]) < 0.5
        flip_ud = generator.uniform([batch, 1, 1, 1]) < 0.5
        images = tf.where(flip_lr, tf.reverse(images, axis=[2]), images)
        images = tf.where(flip_ud, tf.reverse(images, axis=[1]), images)
        if quarter_turns:
            # A cell has no "up"; only square inputs (crop mode) keep their shape through a quarter turn.
            images = tf.image.rot90(images, k=generator.uniform([], 0, 4, dtype=tf.int32))
        if jitter:
            # Stain and illumination differ between photos: per-image, per-channel gains.
            gains = generator.uniform([batch, 1, 1, 3], 0.9, 1.1)
            images = tf.clip_by_value(images * gains, 0.0, 1.0)
            # Small shifts with zero fill (the data set's own copies have black borders).
            height, width = images.shape[1], images.shape[2]
            margin_y, margin_x = height // 10, width // 10
            dy = generator.uniform([], -margin_y, margin_y + 1, dtype=tf.int32)
            dx = generator.uniform([], -margin_x, margin_x + 1, dtype=tf.int32)
            padded = tf.pad(images, [[0, 0], [margin_y, margin_y], [margin_x, margin_x], [0, 0]])
            images = tf.slice(padded, [0, margin_y + dy, margin_x + dx, 0], [-1, height, width, 3])
        return images, labels

    return augment


def _dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, augment=None) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if augment is not None:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augment is not None:
        ds = ds.map(augment, num_parallel_calls=1)
    return ds.prefetch(2)


def _learning_rate(config: TrainConfig, steps_per_epoch: int):
    if config.schedule == "constant":
        return config.learning_rate
    if config.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=config.learning_rate * 0.1, decay_steps=config.epochs * steps_per_epoch,
            warmup_target=config.learning_rate, warmup_steps=2 * steps_per_epoch, alpha=0.01)
    raise ValueError(f"unknown schedule {config.schedule!r}; choose constant or cosine")


def predict(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    return model.predict(to_tensor(images), batch_size=batch_size, verbose=0)


def train(config: TrainConfig, data_dir: str | None, out_dir: Path, cache_dir: Path | None = None,
          progress: bool = True) -> RunResult:
    tf.config.experimental.enable_op_determinism()
    if config.threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(config.threads)
            tf.config.threading.set_inter_op_parallelism_threads(config.threads)
        except RuntimeError:  # already initialised by an earlier run in this process: keeps its setting
            pass
    run_dir = Path(out_dir) / config.model / config.mode
    run_dir.mkdir(parents=True, exist_ok=True)

    def load(split: str) -> data.Arrays:
        return data.load_split(data_dir, split, (config.mode,), config.input_size, config.params,
                               cache_dir=cache_dir, limit_per_class=config.limit_per_class,
                               progress=progress)[config.mode]

    full = load("TRAIN")
    train_idx, val_idx = data.split_by_source(full.labels, full.sources, config.val_fraction, config.seed)
    x_train, y_train = to_tensor(full.images[train_idx]), full.labels[train_idx]
    x_val, y_val = to_tensor(full.images[val_idx]), full.labels[val_idx]

    one_hot = lambda y: keras.utils.to_categorical(y, len(CLASSES))  # noqa: E731
    steps = int(np.ceil(len(x_train) / config.batch_size))
    started = time.monotonic()
    for restart in range(config.max_restarts + 1):
        keras.utils.set_random_seed(config.seed + 1000 * restart)
        model = zoo.build(config.model, (*config.input_size, 3))
        model.compile(
            optimizer=keras.optimizers.Adam(_learning_rate(config, steps)),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
            metrics=["accuracy"],
        )
        budget = TimeBudget(config.time_budget_s)
        guard = PlateauGuard(config.plateau_epochs if restart < config.max_restarts else 0)
        callbacks = [
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                          start_from_epoch=config.start_from_epoch, restore_best_weights=True),
            budget,
            guard,
            keras.callbacks.CSVLogger(str(run_dir / "history.csv")),  # follow a long run with tail -f
        ]
        if progress:
            callbacks.append(TqdmCallback(verbose=0, desc=f"{config.model} {config.mode}"))
        history = model.fit(
            _dataset(x_train, one_hot(y_train), config.batch_size, config.seed + restart,
                     augmenter(config.augment, config.seed + restart)),
            validation_data=_dataset(x_val, one_hot(y_val), 256, config.seed),
            epochs=config.epochs, callbacks=callbacks, verbose=0,
        ).history
        if not guard.stuck or budget.hit:
            break
    train_seconds = time.monotonic() - started
    best_epoch = int(np.argmin(history["val_loss"])) + 1

    validation = report.classification_report(model.predict(x_val, batch_size=256, verbose=0), y_val,
                                              full.sources[val_idx])
    # TEST is touched once, after every choice has been made on validation.
    test_arrays = load("TEST")
    test = report.classification_report(predict(model, test_arrays.images), test_arrays.labels, test_arrays.sources)

    title = f"{config.model}, {config.mode} mode"
    model.save(run_dir / "model.keras")
    report.plot_curves(history, run_dir / "curves.png", title)
    report.plot_confusion(test["confusion_matrix"], run_dir / "confusion_test.png", f"{title}: TEST")
    result = RunResult(config=config, model=model, run_dir=run_dir, parameters=model.count_params(),
                       epochs_run=len(history["loss"]), best_epoch=best_epoch, train_seconds=train_seconds,
                       stopped_by_time_budget=budget.hit, restarts=restart,
                       validation=validation, test=test)
    (run_dir / "history.json").write_text(json.dumps({k: [float(v) for v in vs] for k, vs in history.items()}))
    (run_dir / "result.json").write_text(json.dumps(summary(result), indent=2))
    return result


def summary(result: RunResult) -> dict:
    return {
        "model": result.config.model,
        "mode": result.config.mode,
        "parameters": result.parameters,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "train_seconds": round(result.train_seconds, 1),
        "stopped_by_time_budget": result.stopped_by_time_budget,
        "restarts": result.restarts,
        "config": result.config.to_dict(),
        "validation": result.validation,
        "test": result.test,
    }
