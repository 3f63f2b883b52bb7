"""Temperature scaling: one number that makes a model's probabilities say how often it is right.

A network trained with label smoothing, or averaged over several views of an image, is underconfident;
one fitted hard to augmented copies of few photos is overconfident. Dividing the log-probabilities by a
temperature T and normalising again (T > 1 softens, T < 1 sharpens) changes no answer, only how sure it
reads. T is fitted by the negative log-likelihood on predictions the network did not train on.

The shipped network has no such predictions to spare (its validation photos leak into TRAIN's copies),
so T is fitted on the k-fold networks of the same recipe (``training.kfold``): each fold's held-out
photos. Their figures "calibrated" are cross-fitted: each fold is scaled by the T fitted on the other
folds, so no fold is measured with a T fitted on itself. ``bloodcells export --calibration kfold.json``
folds the T fitted on every fold into the exported graph, after the views are averaged.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

# log(0) is -inf; a probability this small already means "never" to any figure reported here.
FLOOR = 1e-12
# T outside this range means the predictions carry no usable confidence: refuse rather than ship it.
BOUNDS = (0.05, 20.0)


def scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` row by row; T = 1 gives ``p`` back."""
    logits = np.log(np.clip(probabilities.astype(np.float64), FLOOR, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def scale_tf(probabilities, temperature: float):
    """The same in TensorFlow, for the exported graph."""
    import tensorflow as tf

    return tf.nn.softmax(tf.math.log(tf.maximum(probabilities, FLOOR)) / temperature, axis=-1)


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    chosen = probabilities[np.arange(len(labels)), labels].astype(np.float64)
    return float(-np.mean(np.log(np.clip(chosen, FLOOR, 1.0))))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T that minimises the negative log-likelihood of ``labels`` (convex in 1/T: one minimum)."""
    if len(labels) == 0:
        raise ValueError("no predictions to fit a temperature on")
    found = minimize_scalar(lambda log_t: negative_log_likelihood(scale(probabilities, float(np.exp(log_t))), labels),
                            bounds=tuple(np.log(BOUNDS)), method="bounded", options={"xatol": 1e-4})
    temperature = float(np.exp(found.x))
    if not BOUNDS[0] * 1.01 < temperature < BOUNDS[1] / 1.01:
        raise ValueError(f"the fitted temperature {temperature:.3g} sits at the edge of {BOUNDS}: these predictions "
                         "carry no usable confidence (a network at chance?); do not calibrate on them")
    return temperature


def cross_fitted(folds: list[tuple[np.ndarray, np.ndarray]]) -> tuple[list[float], list[np.ndarray]]:
    """For each fold (probabilities, labels): the T fitted on every other fold, and this fold scaled by it."""
    if len(folds) < 2:
        raise ValueError("cross-fitting needs at least two folds")
    temperatures, scaled = [], []
    for index, (probabilities, _) in enumerate(folds):
        others = [fold for other, fold in enumerate(folds) if other != index]
        temperature = fit_temperature(np.concatenate([p for p, _ in others]), np.concatenate([y for _, y in others]))
        temperatures.append(temperature)
        scaled.append(scale(probabilities, temperature))
    return temperatures, scaled
