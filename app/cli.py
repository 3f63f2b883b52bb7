"""The ``bloodcells`` command: parses the command line and dispatches to a handler.

``serve`` and ``classify`` are the service's and live here. The training commands (train, experiment,
export, evaluate, card, cache) are built and handled in ``training/cli.py``, which imports TensorFlow
only inside the handlers that train or export: ``serve``, ``classify`` and ``--help`` never load it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from app import preprocessing
from training import cli as training_cli


def cmd_serve(args: argparse.Namespace) -> int:
    from app.server import serve

    return serve(host=args.host, port=args.port, workers=args.workers, model_dir=args.model_dir)


def cmd_classify(args: argparse.Namespace) -> int:
    from app.offline import classify_files

    return classify_files(args.images, mode=args.mode, model_dir=args.model_dir, as_json=args.json, name=args.model)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bloodcells", description="White blood cell classification: "
                                     "train, reproduce the paper, export to ONNX, evaluate, serve and classify.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    training_cli.add_commands(sub)

    p = sub.add_parser("serve", help="run the HTTP service (uvicorn)")
    p.add_argument("--host", default=None, help="default: $BLOODCELLS_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: $BLOODCELLS_PORT or 8000")
    p.add_argument("--workers", type=int, default=None, help="default: $BLOODCELLS_WORKERS or the CPU count")
    p.add_argument("--model-dir", type=Path, default=None, help="default: $BLOODCELLS_MODEL_DIR or ./models")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("classify", help="classify image files offline, no server (table or JSON)")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--mode", choices=preprocessing.MODES, default=None, help="default: the service's default mode")
    p.add_argument("--model", default=None, help="a model by name (see models/README.md); default: the mode's default")
    p.add_argument("--model-dir", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_classify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from app.model import ModelLoadError

    errors: tuple[type[Exception], ...] = (ModelLoadError, preprocessing.ImageDecodeError, FileNotFoundError,
                                           *training_cli.ERRORS)
    try:
        return args.handler(args)
    except errors as exc:
        print(f"bloodcells {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more can be printed, and Python's own flush at exit would
        # print a traceback; point stdout at nothing instead.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
