"""The Table 1 report: rendered from run summaries, paper figures beside ours, plot written."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training import experiment, report


def row(model: str, mode: str, accuracy: float, restarts: int = 0, budget: bool = False) -> dict:
    labels = np.arange(400) % 4
    right = np.arange(400) < accuracy * 400
    probabilities = np.full((400, 4), 0.1)
    probabilities[np.arange(400), np.where(right, labels, (labels + 1) % 4)] = 0.7
    sources = np.array([f"{label}/{i % 5}" for i, label in enumerate(labels)])
    summary = report.classification_report(probabilities, labels, sources)
    summary["accuracy_ci95"] = [accuracy - 0.02, accuracy + 0.02]
    return {"model": model, "mode": mode, "parameters": 26_596, "test": summary, "validation": dict(summary),
            "epochs_run": 80, "best_epoch": 70, "restarts": restarts, "train_seconds": 600.0,
            "stopped_by_time_budget": budget, "config": {"input_size": [60, 80], "batch_size": 32,
                                                         "learning_rate": 1e-3, "schedule": "constant",
                                                         "epochs": 80, "patience": 15, "augment": "flips",
                                                         "seed": 0}}


def test_table_puts_the_papers_figure_beside_ours_and_counts_restarts() -> None:
    table = experiment.table_markdown([row("dropout0.3", "original", 0.8, restarts=2),
                                       row("vgg16", "color", 0.3, budget=True), row("sepnet", "crop", 0.9)])
    lines = table.splitlines()
    assert len(lines) == 5
    # The paper's Table 1 beside ours: its accuracy and loss (its validation set is TEST).
    assert "| dropout0.3 | original | 26,596 | 0.800 (0.780-0.820) |" in lines[2] and "| 0.842 | 0.818 |" in lines[2]
    assert "| 2 |" in lines[2]
    assert "| 0.509 | 2.703 |" in lines[3] and "(time budget)" in lines[3]
    assert "| n/a | n/a |" in lines[4]  # a network and a mode the paper does not have


def test_report_and_plot_are_written(tmp_path: Path) -> None:
    rows = [row("basic", "original", 0.7), row("dropout0.3", "original", 0.8), row("dropout0.3", "color", 0.75)]
    report = tmp_path / "experiment.md"
    experiment.write_report(rows, tmp_path, report, "bloodcells experiment")
    text = report.read_text()
    assert "bloodcells experiment" in text and "| basic | original |" in text
    assert report.with_suffix(".png").stat().st_size > 1000
    assert report.with_suffix(".json").exists()
