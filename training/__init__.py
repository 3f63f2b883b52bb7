"""Training, the paper's experiment, evaluation and ONNX export (TensorFlow only where needed)."""

import os

# Set before any module of this package imports TensorFlow: its C++ INFO and WARNING lines (CPU features,
# oneDNN) drown the progress bars; errors still show. What TensorFlow logs before it reads this
# variable is filtered by training.console.native_log_filter.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
