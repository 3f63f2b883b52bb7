"""Test-time augmentation: the views of an image a model is run on, whose probabilities are averaged.

A white cell has no "up" and no handedness, so a flipped or turned image is the same cell: averaging the
model's answers over those views is a cheap ensemble. The views are named once here, with the two
implementations that must agree: NumPy (k-fold's held-out figures, the export's parity reference) and
TensorFlow (the exported graph, so that the service still makes one onnxruntime call per batch).

- ``flips``: the image, left-right, up-down and both (both = a half turn); any input shape.
- ``dihedral``: those four and each of them turned a quarter: all 8 symmetries of a square; square inputs
  only (crop mode).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

Kind = Literal["none", "flips", "dihedral"]
KINDS: tuple[Kind, ...] = ("none", "flips", "dihedral")

# (flip left-right, flip up-down, quarter turns), applied in that order, on NHWC batches.
View = tuple[bool, bool, int]
_FLIPS: tuple[View, ...] = ((False, False, 0), (True, False, 0), (False, True, 0), (True, True, 0))
VIEWS: dict[Kind, tuple[View, ...]] = {
    "none": ((False, False, 0),),
    "flips": _FLIPS,
    "dihedral": _FLIPS + tuple((lr, ud, 1) for lr, ud, _ in _FLIPS),
}


def kinds_for(input_size: tuple[int, int]) -> tuple[Kind, ...]:
    """The kinds an input of this (height, width) keeps its shape through."""
    height, width = input_size
    return KINDS if height == width else ("none", "flips")


def check(kind: str, input_size: tuple[int, int]) -> Kind:
    """``kind`` if it fits the input; else a ValueError that says which do."""
    allowed = kinds_for(input_size)
    if kind not in allowed:
        raise ValueError(f"test-time augmentation {kind!r} does not fit a {input_size[0]}x{input_size[1]} input; "
                         f"choose one of {', '.join(allowed)} (quarter turns need a square input)")
    return kind  # type: ignore[return-value]


def view_numpy(images: np.ndarray, view: View) -> np.ndarray:
    flip_lr, flip_ud, turns = view
    if flip_lr:
        images = images[:, :, ::-1]
    if flip_ud:
        images = images[:, ::-1]
    if turns:
        images = np.rot90(images, turns, axes=(1, 2))  # counter-clockwise
    return np.ascontiguousarray(images)


def predict_numpy(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, kind: Kind) -> np.ndarray:
    """The mean of ``predict`` over the views of ``images`` (NHWC), the views stacked into one call as the
    exported graph does."""
    views = VIEWS[kind]
    if len(views) == 1:
        return predict(images)
    probabilities = predict(np.concatenate([view_numpy(images, view) for view in views]))
    return probabilities.reshape(len(views), len(images), -1).mean(axis=0)


def view_tf(images, view: View):
    import tensorflow as tf

    flip_lr, flip_ud, turns = view
    # Strided slices, not tf.reverse: tf2onnx makes a Slice of them, and of tf.reverse a ReverseSequence
    # between two transposes, which cost onnxruntime more than the network's own first layers.
    if flip_lr:
        images = images[:, :, ::-1]
    if flip_ud:
        images = images[:, ::-1]
    for _ in range(turns):  # a quarter turn counter-clockwise, as np.rot90: transpose, then upside down
        images = tf.transpose(images, [0, 2, 1, 3])[:, ::-1]
    return images


def predict_tf(model: Callable, images, kind: Kind):
    """The same mean in TensorFlow, the views stacked into one batch so the model runs once."""
    import tensorflow as tf

    views = VIEWS[kind]
    if len(views) == 1:
        return model(images)
    probabilities = model(tf.concat([view_tf(images, view) for view in views], axis=0))
    # The class count stays static: the exported graph must say its output is [N, classes].
    classes = probabilities.shape[-1]
    return tf.reduce_mean(tf.reshape(probabilities, [len(views), -1, classes]), axis=0)
