"""The training commands of ``bloodcells``: train, experiment, export, evaluate, card and cache.

``app/cli.py`` adds them to its parser (``add_commands``) and calls the handler a command names. This
module imports no TensorFlow: the handlers that train or export import it themselves, so that
``bloodcells serve``, ``classify`` and every ``--help`` never load it.

An option that sets a TrainConfig field is named after the field (``dest``) and is absent from the parsed
arguments unless given (``argparse.SUPPRESS``). A run's configuration is TrainConfig's defaults, then the
recipe's values (``--recipe``), then the options given: no default is restated here.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from app import preprocessing
from training import cache, paper, tta
from training.config import (
    AUGMENTATIONS,
    INPUT_SIZES,
    MODELS,
    PHOTOS,
    SCHEDULES,
    RecipeError,
    TrainConfig,
    configure,
    read_recipe,
    recipe_names,
)
from training.console import say
from training.data import DataSetError

DEFAULTS = TrainConfig()
ERRORS: tuple[type[Exception], ...] = (DataSetError, RecipeError)  # one line and exit code 2, no traceback
DATA_HELP = "data set folder (dataset2-master of the Kaggle download); default: $BLOODCELLS_DATA_DIR"
CACHE_HELP = "decoded-image cache folder; default: $BLOODCELLS_CACHE_DIR or ~/.cache/bloodcells"


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 60x80, got {text!r}") from None
    if height < 32 or width < 32:
        raise argparse.ArgumentTypeError("input size must be at least 32x32")
    return height, width


def _modes(text: str) -> tuple[str, ...]:
    if text == "both":
        return ("original", "color")
    if text == "all":
        return preprocessing.MODES
    modes = tuple(text.split(","))
    for mode in modes:
        if mode not in preprocessing.MODES:
            raise argparse.ArgumentTypeError(f"unknown mode {mode!r}; choose from {', '.join(preprocessing.MODES)}, both, all")
    return modes


def _param(text: str) -> tuple[str, int | float]:
    defaults = preprocessing.PreprocessingParams().to_dict()
    name, _, value = text.partition("=")
    if name not in defaults or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME in {', '.join(defaults)}, got {text!r}")
    try:
        return name, type(defaults[name])(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name} takes a {type(defaults[name]).__name__}, got {value!r}") from None


def _default(name: str) -> str:
    return f"default {getattr(DEFAULTS, name)}"


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """The options that set TrainConfig fields; their help shows TrainConfig's defaults."""
    def option(*flags: str, **kwargs) -> None:
        parser.add_argument(*flags, default=argparse.SUPPRESS, **kwargs)

    sizes = ", ".join(f"{h}x{w} for {mode}" for mode, (h, w) in INPUT_SIZES.items())
    option("--input-size", type=_size, metavar="HxW", help=f"model input HEIGHTxWIDTH (default: {sizes})")
    option("--epochs", type=int, help=_default("epochs"))
    option("--batch-size", type=int, help=_default("batch_size"))
    option("--lr", dest="learning_rate", type=float, metavar="LR",
           help=f"Adam learning rate, the peak with --schedule cosine ({_default('learning_rate')})")
    option("--schedule", choices=SCHEDULES, help=_default("schedule"))
    option("--patience", type=int, help=f"early-stopping patience in epochs ({_default('patience')})")
    option("--start-from-epoch", type=int, help=f"no early stopping before this epoch ({_default('start_from_epoch')})")
    option("--augment", choices=AUGMENTATIONS, help="jitter: small shifts and per-channel stain-color gains; stain: "
           "per-image hue turns (+-0.04), saturation (x0.75-1.25) and value (x0.85-1.15); rot90: "
           "quarter turns (square inputs only); mixup: each image and its label blended with another's of the "
           f"batch, weight ~ Beta(0.2, 0.2); zoom: each image scaled about its centre by 0.8-1.25; edge (crop "
           "mode): half the images shown with their cell cut by the frame's edge (training/edges.py) "
           f"({_default('augment')})")
    option("--label-smoothing", type=float, help=_default("label_smoothing"))
    option("--val-fraction", type=float,
           help=f"share of each class's source photos held out for validation ({_default('val_fraction')})")
    option("--photos", choices=PHOTOS, help="how the copies of one source photo are found for the splits: by "
           f"appearance (training.photos) or by the file names' _N_, which do not identify photos ({_default('photos')})")
    option("--seed", type=int, help=_default("seed"))
    option("--limit-per-class", type=int, help="use only N images per class (smoke runs; the cache is not used)")
    option("--param", dest="params", type=_param, action="append", metavar="NAME=VALUE",
           help="override a preprocessing parameter (repeatable), e.g. crop_min_side=128")
    option("--threads", type=int, help=f"TensorFlow threads, 0: all cores ({_default('threads')})")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help=DATA_HELP)
    parser.add_argument("--cache-dir", type=Path, help=CACHE_HELP)
    parser.add_argument("--quiet", action="store_true", help="no progress bars nor stage lines")


def _given(args: argparse.Namespace) -> dict:
    """The TrainConfig fields the command line set (``mode`` apart: --mode may name several)."""
    names = {f.name for f in fields(TrainConfig)} - {"mode"}
    given = {name: getattr(args, name) for name in names if hasattr(args, name)}
    if "params" in given:
        given["params"] = dict(given["params"])
    return given


def train_configs(args: argparse.Namespace) -> list[TrainConfig]:
    """One configuration per mode asked for: TrainConfig's defaults, then the recipe, then the options given."""
    recipe = read_recipe(args.recipe) if args.recipe else {}
    modes = args.modes or (recipe.get("mode", DEFAULTS.mode),)
    return [configure(recipe, **_given(args), mode=mode) for mode in modes]


def experiment_config(args: argparse.Namespace) -> TrainConfig:
    """What every Table 1 run shares; one protocol, so one input size for every mode: the paper's."""
    return configure(None, **{"input_size": paper.INPUT_SIZE, **_given(args)})


def _announce_cache(cache_dir: Path | None, configs: list[TrainConfig] | None = None) -> None:
    # A run on a subset (limit_per_class) neither reads nor writes the cache.
    if configs is None or any(config.limit_per_class is None for config in configs):
        say(cache.describe(cache_dir))


def cmd_train(args: argparse.Namespace) -> int:
    from training import report
    from training.train import at_chance, train  # TensorFlow

    configs = train_configs(args)
    for config in configs:
        result = train(config, args.data_dir, args.out, cache_dir=args.cache_dir, progress=not args.quiet)
        print(f"{config.model} / {config.mode}: {result.parameters:,} parameters, {result.epochs_run} epochs "
              f"(best {result.best_epoch}, {result.restarts} restarts), {result.train_seconds:.0f} s; "
              f"artifacts in {result.run_dir}")
        if at_chance(result.validation["loss"]):
            paper_cnn = " (the paper's CNN can take 10 or more), or try --model sepnet" if config.model != "sepnet" else ""
            print(f"  still at chance level (validation loss ln 4): the network never found the cell; give it more "
                  f"--epochs{paper_cnn}")
        print(report.format_report(result.validation, "  validation"))
        if result.test is not None:
            print(report.format_report(result.test, "  TEST"))
    _announce_cache(args.cache_dir, configs)
    return 0


def cmd_kfold(args: argparse.Namespace) -> int:
    from training.kfold import cross_validate, format_report

    configs = train_configs(args)
    for config in configs:
        print(format_report(cross_validate(config, args.data_dir, args.out, args.folds, cache_dir=args.cache_dir,
                                           progress=not args.quiet, resume=args.resume)))
    _announce_cache(args.cache_dir, configs)
    return 0


def cmd_kfold_ensemble(args: argparse.Namespace) -> int:
    from training.kfold_ensemble import format_report, measure

    result = measure(args.runs, args.data_dir, args.tta, cache_dir=args.cache_dir, progress=not args.quiet)
    print(format_report(result))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {args.json_out}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from training.experiment import collect, run_experiment, write_report

    if args.report_only:
        rows = collect(args.out, tuple(args.variants), args.modes)
    else:
        base = experiment_config(args)
        rows = run_experiment(base, args.data_dir, args.out, tuple(args.variants), args.modes, args.vgg_budget,
                              cache_dir=args.cache_dir, progress=not args.quiet)
        _announce_cache(args.cache_dir, [base])
    write_report(rows, args.out, args.report, "bloodcells " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    print(f"report written to {args.report}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from training.export import export  # TensorFlow

    path = export(args.run, args.out, args.name, args.data_dir, limit_per_class=args.limit_per_class,
                  cache_dir=args.cache_dir, progress=not args.quiet, test_time_augmentation=args.tta,
                  calibration_report=args.calibration)
    meta = json.loads(path.with_suffix(".json").read_text())
    print(f"exported {path} (sha256 {meta['onnx_sha256'][:12]}..., parity max abs diff "
          f"{meta['export']['parity_max_abs_diff']:.1e} on {meta['export']['parity_images']} TEST images; "
          f"TEST accuracy {meta['test']['accuracy']:.3f}, full-field {meta['fullfield']['accuracy']:.3f})")
    if args.limit_per_class is None:
        _announce_cache(args.cache_dir)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate_fullfield, evaluate_onnx, record
    from training.report import format_report

    progress = not (args.json or args.quiet)
    if args.record and (args.split != "TEST" or args.limit_per_class or (args.fullfield and args.seed)):
        raise DataSetError("--record keeps the figures export measures: TEST (or --fullfield with seed 0), every image")
    if args.fullfield:
        result = evaluate_fullfield(args.model, args.data_dir, args.split, seed=args.seed,
                                    limit_per_class=args.limit_per_class, progress=progress, photos=args.photos,
                                    cache_dir=args.cache_dir)
    else:
        result = evaluate_onnx(args.model, args.data_dir, args.split, cache_dir=args.cache_dir,
                               limit_per_class=args.limit_per_class, progress=progress, photos=args.photos)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_report(result, f"{result['name']} ({result['mode']}) on {result['split']}"))
    if args.record:
        say(f"recorded in {record(args.model, result)}")
    if not args.fullfield and args.limit_per_class is None:  # full-field frames are built afresh, not cached
        _announce_cache(args.cache_dir)
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from training.card import write_card

    path = write_card(args.models, readme=args.readme, runs_root=args.runs)
    print(f"model card written to {path}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    if args.clear:
        files, freed = cache.clear(args.cache_dir)
        print(f"removed {files} files ({cache.human(freed)}) from {cache.resolve(args.cache_dir)}")
        return 0
    print(cache.describe(args.cache_dir))
    for path in cache.entries(args.cache_dir):
        print(f"  {path.name}  {cache.human(path.stat().st_size)}")
    return 0


def _add_training_options(p: argparse.ArgumentParser, recipes: tuple[str, ...], out: Path, recipe_help: str) -> None:
    """What train and kfold share: the recipe, the network, the modes, the output root, the time budget
    (of each training run), every TrainConfig option and the data options."""
    p.add_argument("--recipe", choices=recipes, help=f"{recipe_help} (training/recipes/NAME.toml)")
    p.add_argument("--model", default=argparse.SUPPRESS, choices=MODELS, help=f"zoo variant ({_default('model')})")
    p.add_argument("--mode", dest="modes", type=_modes, default=None, metavar="MODE",
                   help=f"original, color, crop, both (original,color) or all (default {DEFAULTS.mode})")
    p.add_argument("--out", type=Path, default=out, help=f"run directory root (default {out}/)")
    p.add_argument("--time-budget", dest="time_budget_s", type=float, default=argparse.SUPPRESS, metavar="SECONDS",
                   help="stop each training run after this many seconds")
    _add_config_options(p)
    _add_run_options(p)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The training subcommands, on the ``bloodcells`` parser's subparsers."""
    recipes = recipe_names()
    p = sub.add_parser("train", help="train one model on one or more input modes (needs the train extra)",
                       description="Train a model. An option left out takes the recipe's value with --recipe, "
                       "else TrainConfig's default (training/config.py, shown below). Runs go to "
                       "OUT/<model>/<mode>/.")
    _add_training_options(p, recipes, Path("runs"), "train a shipped model again, with its settings")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("kfold", help="cross-validate a configuration by source photo over TRAIN (train extra)",
                       description="Train one configuration once per fold, each fold's source photos held out "
                       "once, and report the held-out accuracy, loss and ECE, plain and with each test-time "
                       "augmentation the input allows: their mean is what to choose on. TEST is not looked at. "
                       "Options as for train; runs go to OUT/<model>/<mode>/fold-I-of-K/.")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--resume", action="store_true",
                   help="measure the folds already trained under --out with the same settings, train the rest")
    _add_training_options(p, recipes, Path("runs/kfold"), "start from a shipped model's settings")
    p.set_defaults(handler=cmd_kfold)

    p = sub.add_parser("kfold-ensemble", help="held-out figures of ensembles of cross-validated configurations "
                       "(train extra)",
                       description="Average, fold by fold, the networks of configurations that `bloodcells kfold` "
                       "cross-validated on the same folds, and report every combination's held-out figures, best "
                       "first. TEST is not looked at.")
    p.add_argument("runs", type=Path, nargs="+", metavar="KFOLD_DIR",
                   help="a configuration's kfold output, OUT/<model>/<mode> (holding kfold.json and fold-I-of-K/)")
    p.add_argument("--tta", choices=tta.KINDS, default="flips", help="test-time augmentation of every member "
                   "(default flips, the shipped models')")
    p.add_argument("--json-out", type=Path, help="also write the figures as JSON to this file")
    _add_run_options(p)
    p.set_defaults(handler=cmd_kfold_ensemble)

    p = sub.add_parser("experiment", help="reproduce the paper's Table 1: every variant x mode (needs the train extra)",
                       description="Train every variant on every mode with one configuration (TrainConfig's "
                       f"defaults, input {paper.INPUT_SIZE[0]}x{paper.INPUT_SIZE[1]} for every mode, as the paper) "
                       "and write the Table 1 report. Finished runs under --out are kept and skipped.")
    p.add_argument("--variants", nargs="+", choices=MODELS, default=list(paper.VARIANTS),
                   help="default: the paper's eight")
    p.add_argument("--mode", dest="modes", type=_modes, default=("original", "color"), metavar="MODE",
                   help="original, color, crop, both or all (default both)")
    p.add_argument("--vgg-budget", type=float, default=1200.0, help="VGG16 wall-time budget per run, seconds")
    p.add_argument("--out", type=Path, default=Path("runs/experiment"))
    p.add_argument("--report", type=Path, default=Path("models/experiment.md"))
    p.add_argument("--report-only", action="store_true",
                   help="write the report from the finished runs under --out, training nothing")
    _add_config_options(p)
    _add_run_options(p)
    p.set_defaults(handler=cmd_experiment)

    p = sub.add_parser("export", help="export a training run to ONNX + metadata, with a parity check (train extra)")
    p.add_argument("--run", type=Path, required=True, action="append",
                   help="run directory holding model.keras and result.json, e.g. runs/sepnet/crop (written by "
                   "`bloodcells train --recipe crop`); repeat it for an ensemble of runs of one mode, exported as "
                   "one graph that averages their probabilities")
    p.add_argument("--tta", choices=tta.KINDS, default="none",
                   help="test-time augmentation folded into the graph: flips (4 views), dihedral (8, square "
                   "inputs only); see `bloodcells kfold` for its held-out figures (default none)")
    p.add_argument("--calibration", type=Path, metavar="KFOLD_JSON",
                   help="fold into the graph the temperature that `bloodcells kfold` fitted for this --tta on the "
                   "held-out photos of this recipe's folds (its kfold.json); default: no temperature")
    p.add_argument("--name", required=True, help="file stem in the output folder, e.g. crop")
    p.add_argument("--out", type=Path, default=Path("models"),
                   help="output folder (default models/, where it replaces the shipped model of that name)")
    p.add_argument("--limit-per-class", type=int, help="parity and figures on a subset (smoke runs)")
    _add_run_options(p)
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("evaluate", help="accuracy, loss, per-class metrics and bootstrap CI of an ONNX model")
    p.add_argument("--model", type=Path, required=True, help="an exported .onnx (its .json beside it)")
    p.add_argument("--split", choices=("TEST", "TRAIN"), default="TEST")
    p.add_argument("--json", action="store_true", help="print JSON (top-level accuracy and loss)")
    p.add_argument("--limit-per-class", type=int)
    p.add_argument("--fullfield", action="store_true",
                   help="evaluate on full-field frames: each image placed at random in a 640x480 smear background")
    p.add_argument("--seed", type=int, default=0, help="seed of the full-field frames")
    p.add_argument("--record", action="store_true",
                   help="write the figures into the model's metadata, as export does (TEST, every image)")
    p.add_argument("--photos", choices=PHOTOS, default="appearance",
                   help="the source photos the interval resamples: found by appearance (training.photos, default) "
                   "or the file names' _N_")
    _add_run_options(p)
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("card", help="re-create the model card models/README.md from the models' metadata")
    p.add_argument("--models", type=Path, default=Path("models"))
    p.add_argument("--readme", type=Path, default=Path("README.md"),
                   help="project README whose results block is refreshed too")
    p.add_argument("--runs", type=Path, help="also list the training runs and exported models under this folder (added to "
                   "models/runs.json and models/exports.json, which keep earlier rows)")
    p.set_defaults(handler=cmd_card)

    p = sub.add_parser("cache", help="show the decoded-image cache's size and files, or empty it (--clear)",
                       description="Training, export and evaluation cache every preprocessed split (tens to "
                       "hundreds of MB, one file per split, mode, input size and preprocessing parameters) and "
                       "never delete any. Clearing only costs the next run its preprocessing time.")
    p.add_argument("--cache-dir", type=Path, help=CACHE_HELP)
    p.add_argument("--clear", action="store_true", help="delete the cache's files")
    p.set_defaults(handler=cmd_cache)
