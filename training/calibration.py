"""Temperature scaling: one number that makes a model's probabilities say how often it is right.

A network trained with label smoothing, or averaged over several views of an image, is underconfident;
one fitted hard to augmented copies of few photos is overconfident. Dividing the log-probabilities by a
temperature T and normalising again (T > 1 softens, T < 1 sharpens) changes no answer, only how sure it
reads. T is fitted on predictions the network did not train on, by the Brier score: the log loss, the
usual choice, is ruled by the few photos a network gets wrong with certainty (each photo comes as dozens
of copies), and on the paper CNN's folds it chose T = 4, which made the loss lower but the calibration
error twice as large (0.139 against 0.073); the Brier score chose T = 1.1-1.6 and kept it (0.072). On the
crop network's folds both agree (T = 0.82-0.86 with flips). ``bloodcells kfold`` reports both fits.

The shipped network has no such predictions to spare (its validation photos leak into TRAIN's copies),
so T is fitted on the k-fold networks of the same recipe (``training.kfold``): each fold's held-out
photos. Their figures "calibrated" are cross-fitted: each fold is scaled by the T fitted on the other
folds, so no fold is measured with a T fitted on itself. ``bloodcells export --calibration kfold.json``
folds the T fitted on every fold into the exported graph, after the views are averaged.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from training.report import brier_score, log_loss

OBJECTIVES = {"brier": brier_score, "log_loss": log_loss}

# log(0) is -inf. A floor this far below any probability a float32 softmax gives still reads as "never"
# after division by any temperature within BOUNDS (1e-30 ** (1 / 20) is 0.03, but no network emits it).
FLOOR = 1e-30
# A temperature outside this range says the predictions cannot be calibrated by one number: refuse it.
BOUNDS = (0.05, 20.0)


def scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` row by row, in float64; T = 1 gives ``p`` back."""
    logits = np.log(np.maximum(probabilities.astype(np.float64), FLOOR)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def scale_tf(probabilities, temperature: float):
    """The same in TensorFlow (float32), for the exported graph."""
    import tensorflow as tf

    return tf.nn.softmax(tf.math.log(tf.maximum(probabilities, FLOOR)) / temperature, axis=-1)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray, objective: str = "brier") -> float:
    """The T that minimises the Brier score (or ``objective``) of ``labels``; one minimum in practice, and the
    search is bounded."""
    score = OBJECTIVES[objective]
    if len(labels) == 0:
        raise ValueError("no predictions to fit a temperature on")
    if (probabilities.argmax(axis=1) == labels).all():
        raise ValueError("every prediction is right: sharpening them without end only lowers the score, so no "
                         "temperature is best; there is nothing to calibrate on")
    found = minimize_scalar(lambda log_t: score(scale(probabilities, float(np.exp(log_t))), labels),
                            bounds=tuple(np.log(BOUNDS)), method="bounded", options={"xatol": 1e-4})
    temperature = float(np.exp(found.x))
    if temperature <= BOUNDS[0] * 1.01:
        raise ValueError(f"the fitted temperature {temperature:.3g} sits at the low edge of {BOUNDS}: the predictions "
                         "are right almost everywhere; there is nothing to calibrate on")
    if temperature >= BOUNDS[1] / 1.01:
        raise ValueError(f"the fitted temperature {temperature:.3g} sits at the high edge of {BOUNDS}: the predictions "
                         "carry no usable confidence (sure and wrong, or a network at chance); do not calibrate on them")
    return temperature


def cross_fitted(folds: list[tuple[np.ndarray, np.ndarray]],
                 objective: str = "brier") -> tuple[list[float], list[np.ndarray]]:
    """For each fold (probabilities, labels): the T fitted on every other fold, and this fold scaled by it."""
    if len(folds) < 2:
        raise ValueError("cross-fitting needs at least two folds")
    temperatures, scaled = [], []
    for index, (probabilities, _) in enumerate(folds):
        others = [fold for other, fold in enumerate(folds) if other != index]
        try:
            temperature = fit_temperature(np.concatenate([p for p, _ in others]), np.concatenate([y for _, y in others]),
                                          objective)
        except ValueError as exc:
            raise ValueError(f"fitted without fold {index}: {exc}") from exc
        temperatures.append(temperature)
        scaled.append(scale(probabilities, temperature))
    return temperatures, scaled
