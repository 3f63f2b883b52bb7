"""Training, the paper's experiment, evaluation and ONNX export (TensorFlow only where needed)."""
