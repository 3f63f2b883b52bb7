"""White blood cell classification service: preprocessing, ONNX inference and the FastAPI app."""

__version__ = "0.1.0"
