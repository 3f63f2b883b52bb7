"""Metrics and the source-photo bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import report


def test_confusion_matrix_rows_are_true_classes() -> None:
    labels = np.array([0, 0, 1, 2, 3, 3])
    predictions = np.array([0, 3, 1, 2, 3, 0])
    matrix = report.confusion_matrix(labels, predictions)
    assert matrix[0].tolist() == [1, 0, 0, 1]
    assert matrix[3].tolist() == [1, 0, 0, 1]
    assert matrix.sum() == 6


def test_log_loss_of_uniform_predictions_is_ln_4() -> None:
    probabilities = np.full((10, 4), 0.25)
    assert report.log_loss(probabilities, np.arange(10) % 4) == pytest.approx(math.log(4))


def test_report_fields_and_per_class_precision_recall() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    probabilities = np.eye(4)[[0, 1, 1, 1, 2, 2, 3, 3]] * 0.9 + 0.025
    sources = np.array([f"c{label}/{i}" for i, label in enumerate(labels)])
    result = report.classification_report(probabilities, labels, sources)
    assert result["accuracy"] == pytest.approx(7 / 8)
    assert result["per_class"]["eosinophil"]["recall"] == pytest.approx(0.5)
    assert result["per_class"]["lymphocyte"]["precision"] == pytest.approx(2 / 3)
    assert result["confusion_matrix"][0] == [1, 1, 0, 0]
    low, high = result["accuracy_ci95"]
    assert low <= result["accuracy"] <= high


def test_bootstrap_resamples_photos_not_images() -> None:
    # Two photos per class with 50 images each: one photo all right, one all wrong. Resampling images
    # would give a narrow interval around 0.5; resampling photos gives a wide one.
    labels = np.repeat(np.arange(4), 100)
    sources = np.array([f"{label}/{i // 50 % 2}" for i, label in enumerate(labels)])
    correct = np.array([i // 50 % 2 == 0 for i in range(400)])
    low, high = report.bootstrap_accuracy(correct, labels, sources, reps=500)
    assert low < 0.4 and high > 0.6


def test_bootstrap_of_a_perfect_model_is_a_point() -> None:
    labels = np.repeat(np.arange(4), 10)
    sources = np.array([f"{label}/{i % 3}" for i, label in enumerate(labels)])
    assert report.bootstrap_accuracy(np.ones(40, bool), labels, sources, reps=100) == (1.0, 1.0)


def test_calibration_error_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # Confidence 0.75 everywhere, right 3 times in 4: calibrated.
    calibrated = np.tile([0.75, 0.25 / 3, 0.25 / 3, 0.25 / 3], (8, 1))
    calibrated[4:] = [0.25 / 3, 0.75, 0.25 / 3, 0.25 / 3]
    calibrated[[3, 7]] = calibrated[[3, 7]][:, [1, 0, 2, 3]]
    assert report.expected_calibration_error(calibrated, labels) == pytest.approx(0.0, abs=1e-9)
    overconfident = np.where(calibrated == 0.75, 0.997, 0.001)
    assert report.expected_calibration_error(overconfident, labels) == pytest.approx(0.997 - 0.75, abs=1e-6)


def test_worst_photos_are_those_with_most_wrong_copies_and_only_those_with_any() -> None:
    sources = np.array(["a/1"] * 4 + ["a/2"] * 3 + ["b/1"] * 2)
    correct = np.array([False, False, True, True, False, False, False, True, True])
    assert report.worst_photos(correct, sources) == [{"photo": "a/2", "images": 3, "wrong": 3},
                                                     {"photo": "a/1", "images": 4, "wrong": 2}]
    assert report.worst_photos(correct, sources, top=1) == [{"photo": "a/2", "images": 3, "wrong": 3}]
