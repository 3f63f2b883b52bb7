"""White blood cell classification service: preprocessing, ONNX inference and the FastAPI app."""

import os

# onnxruntime reads this when it is imported; without it, where it cannot persist its telemetry device
# id (a read-only home, as in the container), it prints a warning that is not a JSON log line, and it
# sends usage telemetry. Set before any module of the package imports onnxruntime; an operator's own
# value wins.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
