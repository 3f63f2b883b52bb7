"""Train one model on one input mode: seeded, source-photo validation split, early stopping, TEST last.

Reads top to bottom: load the preprocessed split (the service's own preprocessing, cached), carve the
validation photos out of TRAIN, fit with early stopping on validation loss (best epoch restored),
then touch TEST once for the final report. Artifacts go to ``<out>/<model>/<mode>/``. What a run is
(model, mode, sizes, schedule...) is one ``TrainConfig``, in ``training/config.py``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.labels import CLASSES
from app.preprocessing import to_tensor
from training.config import AUGMENTATIONS, TrainConfig  # noqa: F401 (TrainConfig: callers import it from here)
from training.console import native_log_filter, say

with native_log_filter():  # TensorFlow's start-up notices (see training/console.py)
    import keras
    import tensorflow as tf
    from tqdm.keras import TqdmCallback

# Several runs in one process (kfold's folds, train --mode both) make TensorFlow warn at each new model that
# its predict function was traced again: expected here, and not the user's to act on.
tf.get_logger().setLevel("ERROR")

from training import data, edges, report, zoo  # noqa: E402 (zoo imports Keras)


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
    test: dict | None  # None for a cross-validation fold: TEST is not looked at


# The loss of answering 1/4 for every class: a network that has not found the stained cell yet.
CHANCE_LOSS = float(np.log(len(CLASSES)))


def at_chance(loss: float) -> bool:
    return loss > 0.98 * CHANCE_LOSS


class PlateauGuard(keras.callbacks.Callback):
    """Says when validation loss sits at chance level (ln 4), and stops a run still there after ``epochs``
    epochs (0: never stops it). Said aloud: a short run of the paper's CNN that ends on the plateau
    otherwise looks like a broken pipeline."""

    def __init__(self, epochs: int, label: str, total_epochs: int) -> None:
        super().__init__()
        self.epochs, self.label, self.total_epochs = epochs, label, total_epochs
        self.stuck = self.announced = False

    def on_epoch_end(self, epoch, logs=None) -> None:
        loss = (logs or {}).get("val_loss", 0.0)
        # On new photos a network that has learnt can still lose more than ln 4 for an epoch (2.08 at epoch 9,
        # training accuracy 0.93, on a fold of photos found by appearance): the plateau is also in training.
        learning = not at_chance((logs or {}).get("loss", CHANCE_LOSS))
        if at_chance(loss) and not learning and not self.announced:
            self.announced = True
            say(f"{self.label}: on the chance-level plateau at epoch {epoch + 1} (validation loss {loss:.3f}, ln 4 = "
                f"{CHANCE_LOSS:.3f}): the network has not found the cell yet; " + self._what_next())
        if epoch + 1 == self.epochs and at_chance(loss) and not learning:
            self.stuck = True
            self.model.stop_training = True

    def _what_next(self) -> str:
        if not self.epochs:
            return "this last try is not restarted"
        if self.total_epochs < self.epochs:
            return (f"this run ends at epoch {self.total_epochs}, before the restart check at epoch {self.epochs}: "
                    "give it more --epochs")
        return f"a run still on it at epoch {self.epochs} restarts from a new initialisation"


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


def augmenter(kind: str, seed: int):
    """Augmentation on the float tensor; every op keeps a black background black (color mode)."""
    if kind == "none":
        return None
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; choose one of {', '.join(AUGMENTATIONS)}")
    generator = tf.random.Generator.from_seed(seed)
    jitter = kind.startswith("flips+jitter")
    quarter_turns = kind.endswith("+rot90")
    stain = kind.endswith("+stain")
    mixup = kind.endswith("+mixup")
    cutmix = kind.endswith("+cutmix")
    zoom = kind.endswith("+zoom")
    edge = kind.endswith("+edge")

    def augment(images, labels):
        if edge:
            # images: each image and its cell cut at an edge (training.edges); a share of them shown cut.
            plain, cut = images
            shown_cut = generator.uniform([tf.shape(plain)[0], 1, 1, 1]) < edges.EDGE_SHARE
            images = tf.where(shown_cut, cut, plain)
        batch = tf.shape(images)[0]
        flip_lr = generator.uniform([batch, 1, 1, 1]) < 0.5
        flip_ud = generator.uniform([batch, 1, 1, 1]) < 0.5
        images = tf.where(flip_lr, tf.reverse(images, axis=[2]), images)
        images = tf.where(flip_ud, tf.reverse(images, axis=[1]), images)
        if quarter_turns:
            # A cell has no "up"; only square inputs (crop mode) keep their shape through a quarter turn.
            images = tf.image.rot90(images, k=generator.uniform([], 0, 4, dtype=tf.int32))
        if zoom:
            images = _zoom(images, generator)
        if stain:
            # Photos differ in stain as a whole: per-image hue turns, saturation and value scales (black stays black).
            hsv = tf.image.rgb_to_hsv(images)
            hue = tf.math.floormod(hsv[..., :1] + generator.uniform([batch, 1, 1, 1], -0.04, 0.04), 1.0)
            saturation = tf.clip_by_value(hsv[..., 1:2] * generator.uniform([batch, 1, 1, 1], 0.75, 1.25), 0.0, 1.0)
            value = tf.clip_by_value(hsv[..., 2:] * generator.uniform([batch, 1, 1, 1], 0.85, 1.15), 0.0, 1.0)
            images = tf.image.hsv_to_rgb(tf.concat([hue, saturation, value], axis=-1))
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
        if mixup:
            images, labels = _mix(images, labels, generator)
        if cutmix:
            images, labels = _cut_mix(images, labels, generator)
        return images, labels

    return augment


# The crop window is sized from the stain mask, which follows the stain: a cell's scale in its window varies
# with it. Each image is zoomed about its centre by a factor from ZOOM_RANGE (log-uniform; > 1 enlarges).
ZOOM_RANGE = (0.8, 1.25)


def _zoom(images, generator):
    """Each image zoomed about its centre, zero (black) outside what it showed."""
    batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    low, high = np.log(ZOOM_RANGE[0]), np.log(ZOOM_RANGE[1])
    half = 0.5 / tf.exp(generator.uniform([batch, 1], low, high))  # of the window, in the image's own units
    boxes = tf.concat([0.5 - half, 0.5 - half, 0.5 + half, 0.5 + half], axis=1)
    return tf.image.crop_and_resize(images, boxes, tf.range(batch), (height, width), extrapolation_value=0.0)


# mixup's Beta(alpha, alpha): near 0 or 1 mostly, so most images stay close to one cell (Zhang et al. 2018).
MIXUP_ALPHA = 0.2


def _mix(images, labels, generator):
    """Each image and its one-hot label blended with those of the batch read backwards (the batch is already
    shuffled), with a weight per image drawn from Beta(MIXUP_ALPHA, MIXUP_ALPHA)."""
    batch = tf.shape(images)[0]
    seeds = generator.make_seeds(2)
    first = tf.random.stateless_gamma([batch], seeds[:, 0], alpha=MIXUP_ALPHA)
    second = tf.random.stateless_gamma([batch], seeds[:, 1], alpha=MIXUP_ALPHA)
    weight = first / tf.maximum(first + second, 1e-12)
    labels = tf.cast(labels, images.dtype)
    mixed_images = weight[:, None, None, None] * images + (1.0 - weight[:, None, None, None]) * tf.reverse(images, [0])
    mixed_labels = weight[:, None] * labels + (1.0 - weight[:, None]) * tf.reverse(labels, [0])
    return mixed_images, mixed_labels


# CutMix's Beta(alpha, alpha) for the share of each image kept (Yun et al. 2019: alpha 1, a uniform share).
CUTMIX_ALPHA = 1.0


def _cut_mix(images, labels, generator):
    """Each image with a box of the image of the batch read backwards pasted in (sides sqrt(1 - share) of the
    image's, centred at random, clipped to it), and its one-hot label blended with that image's by the area
    pasted."""
    batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    seeds = generator.make_seeds(2)
    first = tf.random.stateless_gamma([batch], seeds[:, 0], alpha=CUTMIX_ALPHA)
    second = tf.random.stateless_gamma([batch], seeds[:, 1], alpha=CUTMIX_ALPHA)
    side = tf.sqrt(1.0 - first / tf.maximum(first + second, 1e-12))
    half_h = tf.cast(tf.round(side * height / 2), tf.int32)[:, None, None]
    half_w = tf.cast(tf.round(side * width / 2), tf.int32)[:, None, None]
    centre_y = generator.uniform([batch, 1, 1], 0, height, dtype=tf.int32)
    centre_x = generator.uniform([batch, 1, 1], 0, width, dtype=tf.int32)
    rows, cols = tf.range(height)[None, :, None], tf.range(width)[None, None, :]
    inside = ((rows >= centre_y - half_h) & (rows < centre_y + half_h)
              & (cols >= centre_x - half_w) & (cols < centre_x + half_w))
    mixed_images = tf.where(inside[..., None], tf.reverse(images, [0]), images)
    pasted = tf.reduce_mean(tf.cast(inside, images.dtype), axis=[1, 2])[:, None]
    labels = tf.cast(labels, images.dtype)
    return mixed_images, (1.0 - pasted) * labels + pasted * tf.reverse(labels, [0])


def _dataset(x: np.ndarray | tuple[np.ndarray, np.ndarray], y: np.ndarray, batch_size: int, seed: int,
             augment=None) -> tf.data.Dataset:
    """``x``: the images, or (images, their cells cut at an edge) for an ``+edge`` augmentation."""
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if augment is not None:
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
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
          progress: bool = True, fold: tuple[int, int] | None = None) -> RunResult:
    """``fold``: (index, folds) trains on the other folds of ``kfold_by_source`` and validates on this one,
    and never loads TEST (``training.kfold``); else the usual validation split, then TEST once."""
    tf.config.experimental.enable_op_determinism()
    if config.threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(config.threads)
            tf.config.threading.set_inter_op_parallelism_threads(config.threads)
        except RuntimeError:  # already initialised by an earlier run in this process: keeps its setting
            pass
    run_dir = Path(out_dir) / config.model / config.mode
    if fold is not None:
        run_dir = run_dir / f"fold-{fold[0]}-of-{fold[1]}"
    run_dir.mkdir(parents=True, exist_ok=True)

    def load(split: str) -> data.Arrays:
        return data.load_split(data_dir, split, (config.mode,), config.size, config.params,
                               cache_dir=cache_dir, limit_per_class=config.limit_per_class,
                               progress=progress, photos=config.photos)[config.mode]

    full = load("TRAIN")
    if fold is None:
        train_idx, val_idx = data.split_by_source(full.labels, full.sources, config.val_fraction, config.seed)
    else:
        train_idx, val_idx = data.kfold_by_source(full.labels, full.sources, fold[1], config.seed)[fold[0]]
    x_train, y_train = to_tensor(full.images[train_idx]), full.labels[train_idx]
    inputs: np.ndarray | tuple[np.ndarray, np.ndarray] = x_train
    if config.augment.endswith("+edge"):
        cut, cut_paths = edges.load_split(data_dir, "TRAIN", config.size, config.params, cache_dir=cache_dir,
                                          limit_per_class=config.limit_per_class, progress=progress)
        if not np.array_equal(cut_paths, full.paths):
            raise RuntimeError("the cut cells (training.edges) are not in the order of the images they were cut from: "
                               "clear the cache (bloodcells cache --clear) and train again")
        inputs = (x_train, to_tensor(cut[train_idx]))
    x_val, y_val = to_tensor(full.images[val_idx]), full.labels[val_idx]

    one_hot = lambda y: keras.utils.to_categorical(y, len(CLASSES))  # noqa: E731
    steps = int(np.ceil(len(x_train) / config.batch_size))
    started = time.monotonic()
    label = f"{config.model} {config.mode}"
    for restart in range(config.max_restarts + 1):
        keras.utils.set_random_seed(config.seed + 1000 * restart)
        model = zoo.build(config.model, (*config.size, 3))
        model.compile(
            optimizer=keras.optimizers.Adam(_learning_rate(config, steps)),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
            metrics=["accuracy"],
        )
        budget = TimeBudget(config.time_budget_s)
        guard = PlateauGuard(config.plateau_epochs if restart < config.max_restarts else 0, label, config.epochs)
        callbacks = [
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                          start_from_epoch=config.start_from_epoch, restore_best_weights=True),
            budget,
            guard,
            keras.callbacks.CSVLogger(str(run_dir / "history.csv")),  # follow a long run with tail -f
        ]
        if progress:
            callbacks.append(TqdmCallback(verbose=0, desc=label))
        with native_log_filter():  # a harmless ERROR line from TensorFlow's determinism (training/console.py)
            history = model.fit(
                _dataset(inputs, one_hot(y_train), config.batch_size, config.seed + restart,
                         augmenter(config.augment, config.seed + restart)),
                validation_data=_dataset(x_val, one_hot(y_val), 256, config.seed),
                # The dataset shuffles itself (seeded); Keras ignores shuffle= for a dataset, and warns if left on.
                epochs=config.epochs, callbacks=callbacks, verbose=0, shuffle=False,
            ).history
        if not guard.stuck or budget.hit:
            break
        epochs = f"{config.plateau_epochs} epoch" + ("" if config.plateau_epochs == 1 else "s")
        say(f"{label}: still at chance level after {epochs}: restart {restart + 1} of "
            f"{config.max_restarts}, from a new initialisation (seed {config.seed + 1000 * (restart + 1)})")
    train_seconds = time.monotonic() - started
    best_epoch = int(np.argmin(history["val_loss"])) + 1

    with native_log_filter():  # the harmless determinism ERROR line again, for a new process's first predict
        val_probabilities = model.predict(x_val, batch_size=256, verbose=0)
    validation = report.classification_report(val_probabilities, y_val,
                                              full.sources[val_idx])
    title = f"{config.model}, {config.mode} mode"
    test = None
    if fold is None:
        # TEST is touched once, after every choice has been made on validation.
        test_arrays = load("TEST")
        test = report.classification_report(predict(model, test_arrays.images), test_arrays.labels,
                                            test_arrays.sources)
        report.plot_confusion(test["confusion_matrix"], run_dir / "confusion_test.png", f"{title}: TEST")
    model.save(run_dir / "model.keras")
    report.plot_curves(history, run_dir / "curves.png", title)
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
