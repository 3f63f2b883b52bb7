"""Temperature scaling (training/calibration.py): answers kept, confidence rescaled, the temperature recovered."""

from __future__ import annotations

import numpy as np
import pytest

from training import calibration
from training.report import expected_calibration_error


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def calibrated_sample(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits, and labels drawn from their softmax: probabilities that are calibrated at T = 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (count, 4))
    labels = np.array([rng.choice(4, p=p) for p in softmax(logits)])
    return logits, labels


def test_scale_keeps_every_answer_and_moves_only_the_confidence() -> None:
    probabilities = softmax(np.random.default_rng(0).normal(0.0, 2.0, (50, 4))).astype(np.float32)
    assert np.allclose(calibration.scale(probabilities, 1.0), probabilities, atol=1e-6)
    for temperature in (0.5, 2.0):
        scaled = calibration.scale(probabilities, temperature)
        assert np.allclose(scaled.sum(axis=1), 1.0, atol=1e-6)
        assert (scaled.argmax(axis=1) == probabilities.argmax(axis=1)).all()
    assert (calibration.scale(probabilities, 2.0).max(axis=1) < probabilities.max(axis=1)).all()
    # A zero probability (a saturated softmax) stays finite.
    assert np.isfinite(calibration.scale(np.array([[1.0, 0.0, 0.0, 0.0]], np.float32), 3.0)).all()


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_fit_recovers_the_temperature_of_over_and_underconfident_predictions(true_temperature: float) -> None:
    logits, labels = calibrated_sample(4000, seed=1)
    # Logits divided by T' read over- (T' < 1) or underconfident (T' > 1); the fit must undo it: T = 1 / T'.
    distorted = softmax(logits / true_temperature)
    fitted = calibration.fit_temperature(distorted, labels)
    assert fitted == pytest.approx(1.0 / true_temperature, rel=0.1)
    before = expected_calibration_error(distorted, labels)
    after = expected_calibration_error(calibration.scale(distorted, fitted), labels)
    assert after < before / 2


def test_fit_refuses_predictions_with_no_usable_confidence() -> None:
    # Sure and always wrong: the likelihood keeps falling as T grows, to the edge of the search.
    probabilities = np.tile(np.array([[0.97, 0.01, 0.01, 0.01]], np.float32), (20, 1))
    with pytest.raises(ValueError, match="no usable confidence"):
        calibration.fit_temperature(probabilities, np.full(20, 1))
    # Right everywhere: the loss keeps falling as T goes to 0.
    with pytest.raises(ValueError, match="every prediction is right"):
        calibration.fit_temperature(probabilities, np.full(20, 0))
    with pytest.raises(ValueError, match="no predictions"):
        calibration.fit_temperature(probabilities[:0], np.array([], int))


def test_cross_fitting_scales_each_fold_by_the_temperature_of_the_others() -> None:
    folds = []
    for seed, stretch in ((2, 1.0), (3, 1.0), (4, 0.25)):  # the third fold is far more overconfident
        logits, labels = calibrated_sample(800, seed)
        folds.append((softmax(logits / stretch), labels))
    temperatures, scaled = calibration.cross_fitted(folds)
    for index in range(3):
        others = [fold for other, fold in enumerate(folds) if other != index]
        expected = calibration.fit_temperature(np.concatenate([p for p, _ in others]), np.concatenate([y for _, y in others]))
        assert temperatures[index] == pytest.approx(expected)
        assert np.allclose(scaled[index], calibration.scale(folds[index][0], expected))
    # The first two folds' temperatures include the third's overconfidence; the third's does not.
    assert temperatures[2] < min(temperatures[:2])
    with pytest.raises(ValueError, match="at least two folds"):
        calibration.cross_fitted(folds[:1])


def test_kfold_reports_the_temperature_of_every_fold_and_the_folds_cross_fitted() -> None:
    from training.kfold import calibrate

    folds = []
    for seed in (5, 6, 7):
        logits, labels = calibrated_sample(600, seed)
        folds.append((softmax(logits / 0.5), labels, np.repeat(np.arange(60), 10)))  # overconfident: T near 2
    fitted = calibrate(folds)
    assert fitted["temperature"] == pytest.approx(2.0, rel=0.15) and len(fitted["fold_temperatures"]) == 3
    assert fitted["objective"] == "brier" and fitted["log_loss_fit"]["temperature"] == pytest.approx(2.0, rel=0.15)
    plain = [expected_calibration_error(p, y) for p, y, _ in folds]
    assert fitted["mean"]["ece"] < sum(plain) / 3 / 2
    # A set that cannot be calibrated is reported with its reason, not raised: the folds' training is kept.
    sure_and_wrong = np.tile(np.array([[0.97, 0.01, 0.01, 0.01]], np.float32), (20, 1))
    refused = calibrate([(sure_and_wrong, np.full(20, 1), np.arange(20))] * 2)
    assert refused["temperature"] is None and "no usable confidence" in refused["reason"]


def test_the_brier_fit_is_not_ruled_by_a_few_photos_wrong_with_certainty() -> None:
    logits, labels = calibrated_sample(2000, seed=8)
    probabilities = softmax(logits)
    # One photo's 100 copies, all called the same wrong class with near certainty.
    probabilities[:100] = [0.001, 0.001, 0.001, 0.997]
    labels[:100] = 0
    by_log_loss = calibration.fit_temperature(probabilities, labels, "log_loss")
    by_brier = calibration.fit_temperature(probabilities, labels)
    assert by_log_loss > 1.4 * by_brier and by_brier == pytest.approx(1.0, abs=0.1)
    ece = {name: expected_calibration_error(calibration.scale(probabilities, t), labels)
           for name, t in (("log_loss", by_log_loss), ("brier", by_brier))}
    assert ece["brier"] < ece["log_loss"]
