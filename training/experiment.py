"""Reproduce the paper's Table 1: every variant on both input modes, one protocol, one report.

Each run is ``training.train`` with the same configuration but the model name (VGG16 also gets a
time budget: it trains from scratch on the CPU). Finished runs are kept and skipped on a re-run with
the same configuration, so an interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from app import preprocessing
from training import paper, report
from training.config import TrainConfig


def run_experiment(base: TrainConfig, data_dir: str | None, out_dir: Path, variants: tuple[str, ...],
                   modes: tuple[preprocessing.Mode, ...], vgg_budget_s: float, cache_dir: Path | None = None,
                   progress: bool = True) -> list[dict]:
    from training.train import summary, train  # TensorFlow: only when training

    rows = []
    for mode in modes:
        for variant in variants:
            config = replace(base, model=variant, mode=mode,
                             time_budget_s=vgg_budget_s if variant == "vgg16" else base.time_budget_s)
            done = out_dir / variant / mode / "result.json"
            if done.exists() and _same_run(json.loads(done.read_text())["config"], config.to_dict()):
                rows.append(json.loads(done.read_text()))
                continue
            rows.append(summary(train(config, data_dir, out_dir, cache_dir=cache_dir, progress=progress)))
            (out_dir / "experiment.json").write_text(json.dumps(rows, indent=2))
    (out_dir / "experiment.json").write_text(json.dumps(rows, indent=2))
    return rows


def collect(out_dir: Path, variants: tuple[str, ...], modes: tuple[str, ...]) -> list[dict]:
    """The finished runs under ``out_dir``, in table order (mode, then variant), without training any."""
    rows = []
    for mode in modes:
        for variant in variants:
            done = out_dir / variant / mode / "result.json"
            if done.exists():
                rows.append(json.loads(done.read_text()))
    return rows


def _same_run(old: dict, new: dict) -> bool:
    """Same configuration, but for settings that do not change the result (threads)."""
    ignore = {"threads"}
    return {k: v for k, v in old.items() if k not in ignore} == {k: v for k, v in new.items() if k not in ignore}


def _cell(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table_markdown(rows: list[dict]) -> str:
    lines = [
        "| variant | mode | parameters | TEST accuracy (95% CI) | TEST loss | paper TEST accuracy | paper TEST loss "
        "| validation accuracy "
        "| epochs (best) | restarts | train time |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        test, low_high = row["test"], row["test"]["accuracy_ci95"]
        published = paper.TEST_ACCURACY.get((row["model"], row["mode"]))
        published_loss = paper.TEST_LOSS.get((row["model"], row["mode"]))
        budget = " (time budget)" if row["stopped_by_time_budget"] else ""
        lines.append(
            f"| {row['model']} | {row['mode']} | {row['parameters']:,} | {test['accuracy']:.3f} "
            f"({low_high[0]:.3f}-{low_high[1]:.3f}) | {test['loss']:.3f} | {_cell(published)} | {_cell(published_loss)} "
            f"| {row['validation']['accuracy']:.3f} | {row['epochs_run']} ({row['best_epoch']}) "
            f"| {row.get('restarts', 0)} | {row['train_seconds'] / 60:.1f} min{budget} |"
        )
    return "\n".join(lines)


def plot_table(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    modes = list(dict.fromkeys(row["mode"] for row in rows))
    variants = list(dict.fromkeys(row["model"] for row in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(variants)), 3.8))
    width = 0.8 / len(modes)
    for offset, mode in enumerate(modes):
        by_variant = {row["model"]: row for row in rows if row["mode"] == mode}
        xs = [i + offset * width for i, v in enumerate(variants) if v in by_variant]
        acc = np.array([by_variant[v]["test"]["accuracy"] for v in variants if v in by_variant])
        ci = np.array([by_variant[v]["test"]["accuracy_ci95"] for v in variants if v in by_variant])
        ax.bar(xs, acc, width, yerr=[acc - ci[:, 0], ci[:, 1] - acc], capsize=3, label=mode)
    for (variant, mode), value in paper.TEST_ACCURACY.items():
        if variant in variants and mode in modes:
            x = variants.index(variant) + modes.index(mode) * width
            ax.plot([x - width / 2, x + width / 2], [value, value], "k-", lw=2)
    ax.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(variants))], variants, rotation=20)
    ax.set_ylabel("TEST accuracy")
    ax.set_ylim(0.2, 1.0)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="mode (black bar: paper)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(rows: list[dict], out_dir: Path, report_path: Path, command: str) -> None:
    """The Table 1 reproduction (markdown) and its plot, beside the models."""
    plot_path = report_path.with_suffix(".png")
    plot_table(rows, plot_path)
    base = rows[0]["config"] if rows else {}
    text = [
        "# Table 1 reproduction",
        "",
        f"Produced by `{command}` from the runs under `{out_dir.as_posix()}`; every run's summary is in "
        f"`{report_path.with_suffix('.json').name}` beside this file.",
        "",
        "Protocol: validation split of TRAIN by source photo (15% of each class's photos), early stopping on "
        "validation loss with the best epoch restored, TEST (2,487 images, 71 photos) used once per run for "
        "this table. Intervals: 95% bootstrap over TEST source photos.",
        f"Shared configuration: input {base.get('input_size')}, batch {base.get('batch_size')}, "
        f"Adam lr {base.get('learning_rate')} ({base.get('schedule')}), up to {base.get('epochs')} epochs, "
        f"patience {base.get('patience')}, augmentation `{base.get('augment')}`, seed {base.get('seed')}.",
        "VGG16 trains from scratch (no ImageNet weights can be downloaded here) under a wall-time budget.",
        "The paper's columns are its Table 1 (`../shared/paper/`): its validation set is the TEST folder, so its "
        "val_acc and val_loss are TEST figures. The paper does not say how it chose its epochs; here TEST is "
        "looked at once per run, after training.",
        "",
        table_markdown(rows),
        "",
        f"![TEST accuracy by variant and mode]({plot_path.name})",
        "",
    ]
    report_path.write_text("\n".join(text))
    report_path.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    for row in rows:
        print(report.format_report(row["test"], f"{row['model']} / {row['mode']} TEST"))
