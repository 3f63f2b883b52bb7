"""The model card, ``models/README.md``, rendered from the files the pipeline wrote.

Every number in the card is read from ``models/<name>.json`` (written by ``bloodcells export``, which
measures TEST and full-field accuracy) and ``models/experiment.json`` (``bloodcells experiment``): the
card never holds a number typed by hand, and ``bloodcells card`` re-creates it.
"""

from __future__ import annotations

import json
from pathlib import Path
from string import Template

from app import preprocessing
from app.labels import CLASSES
from app.model_metadata import ModelMetadata
from training import paper
from training.config import configure, read_recipe, recipe_path

MODES_ORDER = ("original", "color", "crop")
# The card's prose, with a $placeholder for each generated part.
CARD_TEMPLATE = Template((Path(__file__).parent / "templates" / "model_card.md").read_text())


def load_models(model_dir: Path) -> list[dict]:
    """Each model's metadata, read through the contract the service loads it with, as the file's JSON object."""
    metas = [ModelMetadata.from_json(path.read_text()).to_dict() for path in sorted(model_dir.glob("*.json"))
             if path.with_suffix(".onnx").exists()]
    return sorted(metas, key=lambda m: MODES_ORDER.index(m["mode"]) if m["mode"] in MODES_ORDER else 99)


def _ci(result: dict) -> str:
    low, high = result["accuracy_ci95"]
    return f"{result['accuracy']:.3f} ({low:.3f}-{high:.3f})"


def _views(meta: dict) -> str:
    """The test-time augmentation folded into the graph (training/tta.py), as the tables show it."""
    kind = meta.get("export", {}).get("test_time_augmentation", "none")
    return kind if kind == "none" else f"{kind} ({meta['export']['views']} views)"


def _models_table(metas: list[dict]) -> list[str]:
    lines = ["| file | mode | architecture | parameters | input (HxW) | test-time augmentation "
             "| TEST accuracy (95% CI) | TEST loss | full-field accuracy (95% CI) | sha256 |",
             "|---|---|---|---:|---|---|---|---:|---|---|"]  # noqa: E501
    for meta in metas:
        _, height, width, _ = meta["input"]["shape"]
        field_cell = _ci(meta["fullfield"]) if "fullfield" in meta else "not measured"
        lines.append(f"| `{meta['name']}.onnx` | {meta['mode']} | {meta['architecture']} | {meta['parameters']:,} "
                     f"| {height}x{width} | {_views(meta)} | {_ci(meta['test'])} | {meta['test']['loss']:.3f} "
                     f"| {field_cell} | `{meta['onnx_sha256'][:12]}` |")
    return lines


def _per_class(meta: dict) -> list[str]:
    lines = [f"**{meta['name']}** ({meta['mode']} mode), TEST:", "",
             "| class | precision | recall | " + " | ".join(f"predicted {c}" for c in CLASSES) + " |",
             "|---|---:|---:|" + "---:|" * len(CLASSES)]
    for name, row in zip(CLASSES, meta["test"]["confusion_matrix"]):
        stats = meta["test"]["per_class"][name]
        lines.append(f"| {name} | {stats['precision']:.3f} | {stats['recall']:.3f} | "
                     + " | ".join(str(v) for v in row) + " |")
    return lines + [""]


def _plain_validation(meta: dict) -> str:
    plain = meta["training"].get("validation")
    if _views(meta) == "none" or not plain:
        return ""
    return f" with its test-time augmentation, {plain['accuracy']:.3f} without"


def _training(meta: dict) -> str:
    config = meta["training"]["config"]
    budget = ", stopped by its time budget" if meta["training"]["stopped_by_time_budget"] else ""
    return (f"- **{meta['name']}**: `{config['model']}` on `{config['mode']}` inputs of {config['input_size'][0]}x"
            f"{config['input_size'][1]}, Adam lr {config['learning_rate']} ({config['schedule']} schedule), batch "
            f"{config['batch_size']}, augmentation `{config['augment']}`, label smoothing {config['label_smoothing']}, "
            f"up to {config['epochs']} epochs with early stopping on validation loss (patience {config['patience']}, "
            f"not before epoch {config['start_from_epoch']}): ran {meta['training']['epochs_run']} epochs, best "
            f"{meta['training']['best_epoch']}, {meta['training']['train_seconds'] / 60:.0f} min on 2 CPU cores{budget}; "
            f"seed {meta['training']['seed']}. Validation (held-out TRAIN photos) accuracy "
            f"{meta['validation']['accuracy']:.3f}{_plain_validation(meta)}. ONNX parity with Keras: max abs difference "
            f"{meta['export']['parity_max_abs_diff']:.1e} on {meta['export']['parity_images']} TEST images."
            + _recipe_link(meta))


def _recipe_link(meta: dict) -> str:
    """Where the settings that made the model are kept, and the commands that make it again."""
    path = recipe_path(meta["name"])
    config = meta["training"]["config"]
    # A model exported under a recipe's name from some other run is not that recipe's: no link then.
    if not path.is_file() or configure(read_recipe(meta["name"])).to_dict() != config:
        return ""
    relative = f"training/recipes/{path.name}"
    kind = meta.get("export", {}).get("test_time_augmentation", "none")
    views = "" if kind == "none" else f" --tta {kind}"
    run = f"runs/{config['model']}/{config['mode']}"
    if meta.get("export", {}).get("temperature", 1.0) == 1.0:
        return (f" Recipe: [`{relative}`](../{relative}): `bloodcells train --recipe {meta['name']}`, then "
                f"`bloodcells export --run {run} --name {meta['name']}{views}`.")
    return (f" Recipe: [`{relative}`](../{relative}): `bloodcells train --recipe {meta['name']}` and "
            f"`bloodcells kfold --recipe {meta['name']}`, then `bloodcells export --run {run} --name {meta['name']}{views} "
            f"--calibration runs/kfold/{config['model']}/{config['mode']}/kfold.json`.")


def render(model_dir: Path, experiment: list[dict], runs: list[dict] | None = None,
           exports: list[dict] | None = None) -> str:
    metas = load_models(model_dir)
    versions = metas[0]["versions"] if metas else {}
    return CARD_TEMPLATE.substitute(
        models_table="\n".join(_models_table(metas)),
        paper_figures=_paper_figures(),
        per_class=_block([line for meta in metas for line in _per_class(meta)]),
        training="\n".join(_training(meta) for meta in metas),
        libraries=", ".join(f"{k} {v}" for k, v in versions.items()),
        experiment=_block(_experiment_tables(experiment, metas)),
        runs=_block(_runs_table(runs or [])),
        exports=_block(_exports_table(exports or [])),
        kfold=_kfold(model_dir / "kfold"),
        smear_check=_smear_check(model_dir / "smear_check.json"),
        photos=_photos(model_dir / "photos.json"),
        errors=_block([_errors(meta) for meta in metas]),
    )


def _photos(path: Path) -> str:
    """Source photos by the file names and by appearance (``python -m training.photos --json models/photos.json``)."""
    if not path.exists():
        return "Not measured: run `python -m training.photos --json models/photos.json`."
    lines = ["| split | class | images | photos | copies per photo (min / median / max) | cell side explained by "
             "the name's _N_ | by the photo found |", "|---|---|---:|---:|---|---:|---:|"]
    for split, found in json.loads(path.read_text()).items():
        for name, row in found["classes"].items():
            low, median, high = row["copies_per_photo"]
            lines.append(f"| {split} | {name} | {row['images']:,} | {row['photos_by_appearance']} | {low} / {median} / "
                         f"{high} | {row['name_explains']['cell_side']:.1%} | {row['appearance_explains']['cell_side']:.1%} |")
    return "\n".join(lines)


def _errors(meta: dict) -> str:
    """Where a model's TEST errors are: the photos with the most wrong copies (``report.worst_photos``)."""
    test = meta["test"]
    worst = test.get("worst_photos")
    if not worst:
        return f"- **{meta['name']}**: not measured by photo; `bloodcells evaluate --model models/{meta['name']}.onnx --record`."
    wrong = round(test["images"] * (1 - test["accuracy"]))
    listed = ", ".join(f"{p['photo']} {p['wrong']} of {p['images']}" for p in worst)
    return (f"- **{meta['name']}**: {sum(p['wrong'] for p in worst)} of its {wrong} wrong TEST images are copies of "
            f"{len(worst)} photos: {listed}.")


def _smear_check(path: Path) -> str:
    """The smear check's flag rates (``python -m training.smear_check --out models/smear_check.json``)."""
    if not path.exists():
        return "Not measured: run `python -m training.smear_check --out models/smear_check.json`."
    result = json.loads(path.read_text())
    real = ", ".join(f"{split} {r['flagged']} of {r['images']:,} ({r['rate']:.2%})" for split, r in result["real"].items())
    kinds = ", ".join(f"{kind} {r['flagged']}/{r['images']}" for kind, r in result["non_smears"].items())
    several = ", ".join(f"{split} {r['several_white_cells']} of {r['images']:,}" for split, r in result["real"].items())
    every = result["non_smears_all"]
    return (f"Real smears flagged as not a smear: {real} (target: at most "
            f"{result['targets']['real_flagged_at_most']:.0%}). Non-smears flagged: {every['flagged']} of "
            f"{every['images']} ({every['rate']:.1%}; target: at least {result['targets']['non_smears_flagged_at_least']:.0%}); "
            f"by kind: {kinds}.\n\nImages where the white-cell finder reports more than one white cell (the data set "
            f"has one per image; a second stained region counts only from 1,000 px, larger than platelet clumps): "
            f"{several}.")


# Below this held-out accuracy a fold's network answers about as well as a guess among four classes.
CHANCE_LEVEL = 0.3


def _kfold(folder: Path) -> str:
    """Each cross-validation kept in ``models/kfold/`` (``bloodcells kfold``): held-out accuracy, plain and with
    each test-time augmentation."""
    lines = []
    for path in sorted(folder.glob("*.json")):
        report = json.loads(path.read_text())
        figures = "; ".join(
            f"{kind}: {f['mean']['accuracy']:.3f} (sd {f['stdev']['accuracy']:.3f}), loss {f['mean']['loss']:.3f}, "
            f"ECE {f['mean']['ece']:.3f}" for kind, f in report.get("tta", {}).items())
        config = report["config"]
        height, width = config["input_size"]
        changed = {name: value for name, value in config["params"].items()
                   if preprocessing.PreprocessingParams().to_dict().get(name) != value}
        settings = ", ".join([f"{height}x{width}", f"augmentation `{config['augment']}`",
                              f"{config['schedule']} learning rate {config['learning_rate']:g}",
                              *([f"label smoothing {config['label_smoothing']:g}"] if config["label_smoothing"] else []),
                              *(f"`{name}={value}`" for name, value in changed.items()),
                              *(["early stopping off"] if config["start_from_epoch"] >= config["epochs"] else [])])
        lines.append(f"- `{path.stem}` ({report['model']}, {report['mode']} mode; {settings}), {report['folds']} folds "
                     f"of photos found by {config.get('photos', 'names')} "
                     f"([`kfold/{path.name}`](kfold/{path.name})): mean held-out accuracy by test-time augmentation: "
                     f"{figures}.{_at_chance(report)}{_calibrated(report)}")
    return "\n".join(lines + _ensembles(folder / "ensembles")) or "No cross-validation kept."


def _ensembles(folder: Path) -> list[str]:
    """Each ``bloodcells kfold-ensemble`` kept in ``models/kfold/ensembles/``: the best combinations against the
    best member alone, members named by their augmentation (what these trainings differ in)."""
    lines = []
    for path in sorted(folder.glob("*.json")):
        result = json.loads(path.read_text())
        ranked, configs = result["ensembles"], result["configs"]

        def named(members: list[str]) -> str:
            return " + ".join(f"`{configs[member]['augment']}`" for member in members)  # noqa: B023 (used at once)
        figures = "; ".join(f"{named(r['members'])}: {r['mean']['accuracy']:.3f} (sd {r['stdev']['accuracy']:.3f}), "
                            f"loss {r['mean']['loss']:.3f}, ECE {r['mean']['ece']:.3f}" for r in ranked[:3])
        best_alone = next(r for r in ranked if len(r["members"]) == 1)
        lines.append(f"- Ensembles ([`kfold/ensembles/{path.name}`](kfold/ensembles/{path.name}), `bloodcells "
                     f"kfold-ensemble`): the networks of {len(result['members'])} of these {result['mode']} trainings, "
                     f"named by their augmentation, averaged fold by fold with `{result['tta']}`, every combination "
                     f"measured on the held-out photos. Best: {figures}. The best network alone: "
                     f"{named(best_alone['members'])} {best_alone['mean']['accuracy']:.3f}.")
    return lines


def _at_chance(report: dict) -> str:
    """The folds whose network never left the chance-level plateau (held-out accuracy near 1 in 4)."""
    stuck = [str(run["fold"]) for run in report["runs"] if run["accuracy"] < CHANCE_LEVEL]
    return f" Fold {', '.join(stuck)} stayed at chance level ({len(stuck)} of {report['folds']})." if stuck else ""


def _calibrated(report: dict) -> str:
    """The temperature fitted on the folds for each view set, and the figures scaled by it, cross-fitted."""
    fitted = {kind: f for kind, f in report.get("calibration", {}).items() if f.get("temperature") is not None}
    if not fitted:
        return ""
    return " With a temperature (fitted on the other folds, each fold scaled by theirs): " + "; ".join(
        f"{kind}: T {f['temperature']:.2f}, loss {f['mean']['loss']:.3f}, ECE {f['mean']['ece']:.3f}"
        for kind, f in fitted.items()) + "."


def _block(lines: list[str]) -> str:
    """Lines that the template follows with a heading: each ends with a newline; none, nothing."""
    return "".join(line + "\n" for line in lines)


def _paper_figures() -> str:
    return ", ".join(f"{acc:.3f} ({mode})" for mode, acc in paper.BEST.items())


def _experiment_tables(experiment: list[dict], metas: list[dict]) -> list[str]:
    if not experiment:
        return []
    from training.experiment import table_markdown

    shipped = [{"model": f"{m['architecture']} (shipped, {m['input']['shape'][1]}x{m['input']['shape'][2]})",
                "mode": m["mode"], "parameters": m["parameters"], "test": m["test"], "validation": m["validation"],
                **{k: m["training"][k] for k in ("epochs_run", "best_epoch", "train_seconds", "stopped_by_time_budget")}}
               for m in metas]
    return [table_markdown(experiment), "", "The shipped models, trained with their own recipe (above), on the same splits:",
            "", table_markdown(shipped), ""]


def collect_runs(root: Path, exclude: Path | None = None) -> list[dict]:
    """A line per training run under ``root`` (its result.json): the configurations tried in development."""
    rows = []
    for path in sorted(root.glob("**/result.json")):
        if exclude is not None and exclude.resolve() in path.resolve().parents:
            continue
        result = json.loads(path.read_text())
        if result.get("test") is None:
            continue  # a cross-validation fold (training/kfold.py): no TEST figure to list
        config = result["config"]
        rows.append({
            "run": path.parent.relative_to(root).as_posix(),
            "model": result["model"], "mode": result["mode"], "input_size": config["input_size"],
            "augment": config["augment"], "learning_rate": config["learning_rate"],
            "schedule": config["schedule"], "label_smoothing": config.get("label_smoothing", 0.0),
            "epochs_run": result["epochs_run"], "restarts": result.get("restarts", 0),
            "params_changed": {k: v for k, v in config["params"].items()
                               if v != preprocessing.PreprocessingParams().to_dict()[k]},
            "validation_accuracy": result["validation"]["accuracy"], "validation_loss": result["validation"]["loss"],
            "test_accuracy": result["test"]["accuracy"], "test_loss": result["test"]["loss"],
        })
    return rows


def _runs_table(runs: list[dict]) -> list[str]:
    if not runs:
        return []
    lines = [
        "## Development runs",
        "",
        "Every configuration trained while building the shipped models, as `bloodcells card --runs runs` "
        "collected them from the runs' `result.json` (`runs.json` beside this file). Every training run reports "
        "TEST at its end, so these TEST figures were seen during development: choices were argued from "
        "validation where it discriminated and from the error analysis, but the list is here so that the "
        "selection effect is visible. Validation reads near perfect for most runs: TRAIN photos look alike.",
        "",
        "| run | model | mode | input | augmentation | lr (schedule) | label smoothing | epochs | validation acc / loss "
        "| TEST acc / loss |",
        "|---|---|---|---|---|---|---:|---:|---|---|",
    ]
    for row in runs:
        params = "".join(f", {k}={v}" for k, v in row["params_changed"].items())
        lines.append(
            f"| `{row['run']}` | {row['model']} | {row['mode']}{params} | {row['input_size'][0]}x{row['input_size'][1]} "
            f"| {row['augment']} | {row['learning_rate']:g} ({row['schedule']}) | {row['label_smoothing']:g} "
            f"| {row['epochs_run']} | {row['validation_accuracy']:.3f} / {row['validation_loss']:.3f} "
            f"| {row['test_accuracy']:.3f} / {row['test_loss']:.3f} |")
    return lines + [""]


def collect_exports(root: Path) -> list[dict]:
    """A line per exported model under ``root`` (candidates exported while choosing, each measured on TEST by
    ``bloodcells export``): with the training runs, what TEST was looked at for."""
    rows = []
    for path in sorted(root.glob("**/*.json")):
        meta = json.loads(path.read_text())
        if not (isinstance(meta, dict) and "onnx_sha256" in meta and meta.get("test")):
            continue
        rows.append({"export": path.relative_to(root).with_suffix(".onnx").as_posix(), "mode": meta["mode"],
                     "architecture": meta["architecture"], "members": meta["export"].get("members", 1),
                     "test_time_augmentation": _views(meta), "validation_accuracy": meta["validation"]["accuracy"],
                     "validation_loss": meta["validation"]["loss"], "test_accuracy": meta["test"]["accuracy"],
                     "test_loss": meta["test"]["loss"]})
    return rows


def _exports_table(exports: list[dict]) -> list[str]:
    if not exports:
        return []
    lines = ["Exports measured while choosing the test-time augmentation and ensembles (`exports.json`, collected "
             "the same way): `bloodcells export` measures every file on TEST, so these TEST figures were seen too.",
             "",
             "| export | mode | architecture | test-time augmentation | validation acc / loss | TEST acc / loss |",
             "|---|---|---|---|---|---|"]
    for row in exports:
        lines.append(f"| `{row['export']}` | {row['mode']} | {row['architecture']} | {row['test_time_augmentation']} "
                     f"| {row['validation_accuracy']:.3f} / {row['validation_loss']:.3f} "
                     f"| {row['test_accuracy']:.3f} / {row['test_loss']:.3f} |")
    return lines + [""]


RESULTS_START, RESULTS_END = "<!-- results:start -->", "<!-- results:end -->"


def results_block(model_dir: Path) -> str:
    """The summary the project README shows, between its results markers."""
    metas = load_models(model_dir)
    # The service's own choice of default (app/registry.py): the best accuracy across inputs.
    best = max(metas, key=lambda m: ModelMetadata.model_validate(m).accuracy_across_inputs or -1.0)
    paper_figures = _paper_figures()
    return "\n".join([
        RESULTS_START,
        "_Written by `bloodcells card` from the models' metadata._",
        "",
        *_models_table(metas),
        "",
        f"The paper's Dropout(0.3) CNN: TEST accuracy {paper_figures}. The service's default mode is "
        f"`{best['mode']}`, the most accurate across TEST and full-field frames. Calibration error (ECE) on TEST: "
        + ", ".join(f"{m['test']['ece']:.3f} ({m['name']})" for m in metas if "ece" in m["test"]) + ".",
        RESULTS_END,
    ])


def update_readme(readme: Path, model_dir: Path) -> bool:
    text = readme.read_text()
    if RESULTS_START not in text or RESULTS_END not in text:
        return False
    head, rest = text.split(RESULTS_START, 1)
    _, tail = rest.split(RESULTS_END, 1)
    readme.write_text(head + results_block(model_dir) + tail)
    return True


def load_json(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def render_folder(model_dir: Path) -> str:
    """The card of a models folder, from its metadata and the ledgers beside them."""
    return render(model_dir, load_json(model_dir / "experiment.json"), load_json(model_dir / "runs.json"),
                  load_json(model_dir / "exports.json"))


def _add_rows(path: Path, rows: list[dict], key: str) -> None:
    """``rows`` into the ledger at ``path``: a row of the same ``key`` is replaced, the others are kept."""
    new = {row[key] for row in rows}
    kept = [row for row in load_json(path) if row[key] not in new]
    path.write_text(json.dumps(kept + rows, indent=2) + "\n")


def write_card(model_dir: Path, readme: Path | None = None, runs_root: Path | None = None) -> Path:
    if runs_root is not None:
        # Ledgers that only grow: a session's run folders are gone by the next, their TEST looks are not.
        _add_rows(model_dir / "runs.json", collect_runs(runs_root, exclude=runs_root / "experiment"), "run")
        _add_rows(model_dir / "exports.json", collect_exports(runs_root), "export")
    path = model_dir / "README.md"
    path.write_text(render_folder(model_dir))
    if readme is not None and readme.exists():
        update_readme(readme, model_dir)
    return path
