"""Training, the paper's experiment, evaluation and ONNX export (TensorFlow only where needed)."""

import os

# TensorFlow's C++ INFO lines (oneDNN, CPU features) drown the progress bars; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
