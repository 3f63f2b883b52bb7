"""The ``bloodcells`` command. Training subcommands import TensorFlow lazily, inside their handlers,
so ``serve``, ``classify`` and ``evaluate`` work on the base install (no training extra)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from app import preprocessing

DEFAULT_DATA_HELP = "data set folder (dataset2-master of the Kaggle download); default: $BLOODCELLS_DATA_DIR"


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


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help=DEFAULT_DATA_HELP)
    parser.add_argument("--cache-dir", type=Path, help="preprocessed-image cache (default ~/.cache/bloodcells)")
    parser.add_argument("--input-size", type=_size, default=(60, 80), help="model input HEIGHTxWIDTH (default 60x80)")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (peak, with --schedule cosine)")
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    parser.add_argument("--patience", type=int, default=15, help="early-stopping patience in epochs")
    parser.add_argument("--start-from-epoch", type=int, default=10, help="no early stopping before this epoch")
    parser.add_argument("--augment", choices=("none", "flips", "flips+jitter", "flips+jitter+rot90"), default="flips",
                        help="jitter: small shifts and per-channel stain-color gains; rot90: quarter turns "
                             "(square inputs only)")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--val-fraction", type=float, default=0.15, help="share of each class's source photos held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-per-class", type=int, help="use only N images per class (smoke runs)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="override a preprocessing parameter (repeatable), e.g. crop_min_side=128")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow threads (default 0: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _params(overrides: list[str]) -> preprocessing.PreprocessingParams:
    defaults = preprocessing.PreprocessingParams().to_dict()
    values = {}
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in defaults or not value:
            raise SystemExit(f"--param {item!r}: expected NAME=VALUE with NAME in {', '.join(defaults)}")
        values[name] = type(defaults[name])(value)
    return preprocessing.PreprocessingParams.from_dict({**defaults, **values})


def _train_config(args: argparse.Namespace, model: str, mode: str, time_budget: float | None = None):
    from training.train import TrainConfig

    return TrainConfig(model=model, mode=mode, input_size=args.input_size, epochs=args.epochs,
                       batch_size=args.batch_size, learning_rate=args.lr, schedule=args.schedule,
                       patience=args.patience, start_from_epoch=args.start_from_epoch, val_fraction=args.val_fraction,
                       seed=args.seed, augment=args.augment, label_smoothing=args.label_smoothing,
                       time_budget_s=time_budget, limit_per_class=args.limit_per_class, threads=args.threads,
                       params=_params(args.param))


def cmd_train(args: argparse.Namespace) -> int:
    from training import report
    from training.train import train

    for mode in args.mode:
        config = _train_config(args, args.model, mode, args.time_budget)
        result = train(config, args.data_dir, args.out, cache_dir=args.cache_dir, progress=not args.quiet)
        print(f"{args.model} / {mode}: {result.parameters:,} parameters, {result.epochs_run} epochs "
              f"(best {result.best_epoch}), {result.train_seconds:.0f} s; artifacts in {result.run_dir}")
        print(report.format_report(result.validation, "  validation"))
        print(report.format_report(result.test, "  TEST"))
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from training.experiment import collect, run_experiment, write_report

    if args.report_only:
        rows = collect(args.out, tuple(args.variants), args.mode)
    else:
        base = _train_config(args, "basic", "original")
        rows = run_experiment(base, args.data_dir, args.out, tuple(args.variants), args.mode, args.vgg_budget,
                              cache_dir=args.cache_dir, progress=not args.quiet)
    write_report(rows, args.out, args.report, "bloodcells " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    print(f"report written to {args.report}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from training.export import export

    path = export(args.run, args.out, args.name, args.data_dir, limit_per_class=args.limit_per_class,
                  cache_dir=args.cache_dir)
    meta = json.loads(path.with_suffix(".json").read_text())
    print(f"exported {path} (sha256 {meta['onnx_sha256'][:12]}..., parity max abs diff "
          f"{meta['export']['parity_max_abs_diff']:.1e} on {meta['export']['parity_images']} TEST images)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate_fullfield, evaluate_onnx
    from training.report import format_report

    progress = not (args.json or args.quiet)
    if args.fullfield:
        result = evaluate_fullfield(args.model, args.data_dir, args.split, seed=args.seed,
                                    limit_per_class=args.limit_per_class, progress=progress)
    else:
        result = evaluate_onnx(args.model, args.data_dir, args.split, cache_dir=args.cache_dir,
                               limit_per_class=args.limit_per_class, progress=progress)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_report(result, f"{result['name']} ({result['mode']}) on {result['split']}"))
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from training.card import write_card

    path = write_card(args.models, readme=args.readme, runs_root=args.runs)
    print(f"model card written to {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from app.server import serve

    return serve(host=args.host, port=args.port, workers=args.workers, model_dir=args.model_dir)


def cmd_classify(args: argparse.Namespace) -> int:
    from app.offline import classify_files

    return classify_files(args.images, mode=args.mode, model_dir=args.model_dir, as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bloodcells", description="White blood cell classification: "
                                     "train, reproduce the paper, export to ONNX, evaluate, serve and classify.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one model on one or more input modes (needs the train extra)")
    p.add_argument("--model", default="dropout0.3", help="zoo variant (basic, dropout0.1, dropout0.3, 3xdropout0.1, "
                   "lasso, ridge, ridge+dropout0.1, vgg16, sepnet)")
    p.add_argument("--mode", type=_modes, default=("original",), help="original, color, crop, both (original,color), all")
    p.add_argument("--out", type=Path, default=Path("runs"), help="run directory root (default runs/)")
    p.add_argument("--time-budget", type=float, help="stop training after this many seconds")
    _add_training_options(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("experiment", help="reproduce the paper's Table 1: every variant x mode (needs the train extra)")
    p.add_argument("--variants", nargs="+", default=None, help="default: the paper's eight")
    p.add_argument("--mode", type=_modes, default=("original", "color"), help="default: both")
    p.add_argument("--vgg-budget", type=float, default=1200.0, help="VGG16 wall-time budget per run, seconds")
    p.add_argument("--out", type=Path, default=Path("runs/experiment"))
    p.add_argument("--report", type=Path, default=Path("models/experiment.md"))
    p.add_argument("--report-only", action="store_true",
                   help="write the report from the finished runs under --out, training nothing")
    _add_training_options(p)
    p.set_defaults(handler=cmd_experiment)

    p = sub.add_parser("export", help="export a training run to ONNX + metadata, with a parity check (train extra)")
    p.add_argument("--run", type=Path, required=True, help="run directory holding model.keras and result.json")
    p.add_argument("--name", required=True, help="file stem in the output folder, e.g. original")
    p.add_argument("--out", type=Path, default=Path("models"))
    p.add_argument("--data-dir", help=DEFAULT_DATA_HELP)
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("--limit-per-class", type=int, help="parity on a subset (smoke runs)")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("evaluate", help="accuracy, loss, per-class metrics and bootstrap CI of an ONNX model")
    p.add_argument("--model", type=Path, required=True, help="an exported .onnx (its .json beside it)")
    p.add_argument("--data-dir", help=DEFAULT_DATA_HELP)
    p.add_argument("--split", choices=("TEST", "TRAIN"), default="TEST")
    p.add_argument("--json", action="store_true", help="print JSON (top-level accuracy and loss)")
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("--limit-per-class", type=int)
    p.add_argument("--fullfield", action="store_true",
                   help="evaluate on full-field frames: each image placed at random in a 640x480 smear background")
    p.add_argument("--seed", type=int, default=0, help="seed of the full-field frames")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("card", help="re-create the model card models/README.md from the models' metadata")
    p.add_argument("--models", type=Path, default=Path("models"))
    p.add_argument("--readme", type=Path, default=Path("README.md"),
                   help="project README whose results block is refreshed too")
    p.add_argument("--runs", type=Path, help="also list the training runs under this folder (models/runs.json)")
    p.set_defaults(handler=cmd_card)

    p = sub.add_parser("serve", help="run the HTTP service (uvicorn)")
    p.add_argument("--host", default=None, help="default: $BLOODCELLS_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: $BLOODCELLS_PORT or 8000")
    p.add_argument("--workers", type=int, default=None, help="default: $BLOODCELLS_WORKERS or the CPU count")
    p.add_argument("--model-dir", type=Path, default=None, help="default: $BLOODCELLS_MODEL_DIR or ./models")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("classify", help="classify image files offline, no server (table or JSON)")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--mode", choices=preprocessing.MODES, default=None, help="default: the service's default mode")
    p.add_argument("--model-dir", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_classify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "variants", "unset") is None:
        from training.paper import VARIANTS

        args.variants = list(VARIANTS)
    from app.inference import ModelLoadError
    from app.preprocessing import ImageDecodeError

    errors: tuple[type[Exception], ...] = (ModelLoadError, ImageDecodeError, FileNotFoundError)
    try:
        from training.data import DataSetError

        errors += (DataSetError,)
    except ImportError:  # the training package is not installed with this distribution
        pass
    try:
        return args.handler(args)
    except errors as exc:
        print(f"bloodcells {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
