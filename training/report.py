"""Classification metrics with source-photo bootstrap intervals, and the plots of a run (no TensorFlow).

TEST holds 71 source photos, each augmented 13 to 155 times: the images are not independent draws, so
the interval resamples photos (within each class), not images. One TEST monocyte photo is ~6 points.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.labels import CLASSES

EPS = 1e-7


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, EPS, 1.0))))


def brier_score(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared distance between the probabilities and the one-hot label (0 best, 2 worst)."""
    onehot = np.eye(probabilities.shape[1])[labels]
    return float(((probabilities - onehot) ** 2).sum(axis=1).mean())


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by their image count."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n: int = len(CLASSES)) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    return np.bincount(labels * n + predictions, minlength=n * n).reshape(n, n)


def bootstrap_accuracy(correct: np.ndarray, labels: np.ndarray, sources: np.ndarray,
                       reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of accuracy, resampling source photos with replacement within each class."""
    rng = np.random.default_rng(seed)
    # Per photo: how many images and how many correct; a resample sums over the drawn photos.
    photos, photo_index = np.unique(sources, return_inverse=True)
    totals = np.bincount(photo_index)
    hits = np.bincount(photo_index, weights=correct.astype(np.float64))
    photo_label = np.zeros(len(photos), dtype=np.int64)
    photo_label[photo_index] = labels
    groups = [np.flatnonzero(photo_label == label) for label in np.unique(labels)]
    draws = np.empty(reps)
    for rep in range(reps):
        chosen = np.concatenate([rng.choice(group, size=len(group), replace=True) for group in groups])
        draws[rep] = hits[chosen].sum() / totals[chosen].sum()
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def worst_photos(correct: np.ndarray, sources: np.ndarray, top: int = 5) -> list[dict]:
    """The photos with the most wrong images, most first: where the errors are (copies of a photo share them)."""
    photos, photo_index = np.unique(sources, return_inverse=True)
    wrong = np.bincount(photo_index, weights=(~correct).astype(np.float64)).astype(int)
    images = np.bincount(photo_index)
    order = [i for i in np.argsort(-wrong, kind="stable") if wrong[i]][:top]
    return [{"photo": str(photos[i]), "images": int(images[i]), "wrong": int(wrong[i])} for i in order]


def classification_report(probabilities: np.ndarray, labels: np.ndarray, sources: np.ndarray) -> dict:
    """Accuracy, loss, per-class precision/recall, confusion matrix and the bootstrap interval."""
    predictions = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predictions)
    correct = predictions == labels
    low, high = bootstrap_accuracy(correct, labels, sources)
    per_class = {}
    for index, name in enumerate(CLASSES):
        predicted, actual = matrix[:, index].sum(), matrix[index].sum()
        per_class[name] = {
            "precision": float(matrix[index, index] / predicted) if predicted else 0.0,
            "recall": float(matrix[index, index] / actual) if actual else 0.0,
            "support": int(actual),
        }
    return {
        "accuracy": float(correct.mean()),
        "loss": log_loss(probabilities, labels),
        "ece": expected_calibration_error(probabilities, labels),
        "mean_confidence": float(probabilities.max(axis=1).mean()),
        "accuracy_ci95": [low, high],
        "ci_method": "bootstrap over source photos within each class, 2000 resamples",
        "images": int(len(labels)),
        "source_photos": int(len(np.unique(sources))),
        "worst_photos": worst_photos(correct, sources),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "confusion_matrix_axes": "rows: true class, columns: predicted class, in the order of 'classes'",
        "classes": list(CLASSES),
    }


def format_report(report: dict, title: str) -> str:
    low, high = report["accuracy_ci95"]
    lines = [
        f"{title}: accuracy {report['accuracy']:.4f} (95% CI {low:.3f}-{high:.3f}, {report['source_photos']} photos, "
        f"{report['images']} images), loss {report['loss']:.4f}, ECE {report.get('ece', float('nan')):.3f}",
        f"  {'class':<12}{'precision':>10}{'recall':>8}{'support':>9}",
    ]
    for name, row in report["per_class"].items():
        lines.append(f"  {name:<12}{row['precision']:>10.3f}{row['recall']:>8.3f}{row['support']:>9d}")
    lines.append("  confusion (rows true, columns predicted): " + "  ".join(
        f"{name[:3]}={row}" for name, row in zip(CLASSES, report["confusion_matrix"])))
    if report.get("worst_photos"):
        wrong = sum(photo["wrong"] for photo in report["worst_photos"])
        lines.append(f"  {wrong} of {round(report['images'] * (1 - report['accuracy']))} wrong images are copies of "
                     f"{len(report['worst_photos'])} photos: " + ", ".join(
                         f"{p['photo']} {p['wrong']}/{p['images']}" for p in report["worst_photos"]))
    return "\n".join(lines)


def plot_confusion(matrix: np.ndarray | list, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=30, ha="right")
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (row, col), value in np.ndenumerate(matrix):
        ax.text(col, row, str(value), ha="center", va="center",
                color="white" if value > matrix.max() / 2 else "black")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(history: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for key, axis in (("loss", left), ("accuracy", right)):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in history:
                axis.plot(range(1, len(history[prefix + key]) + 1), history[prefix + key], style,
                          label=("train " if not prefix else "validation ") + key)
        axis.set_xlabel("epoch")
        axis.legend()
        axis.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
