"""The baseline: the usual way of serving such a model, a minimal FastAPI endpoint calling Keras.

Decode the upload with OpenCV, resize it to the model's input (INTER_AREA, as the service does),
scale to [0, 1] and call ``model.predict`` on the same trained model the service exports to ONNX
(``models/original.keras`` by default, $KERAS_BASELINE_MODEL otherwise), on the same views of the
image as the exported graph (its metadata's test-time augmentation, in one predict call, averaged:
the same answer as the service's). TensorFlow keeps its
default settings (thread pools included), as a user's app would. Not the service: it is only here
to be measured against it.

    uvicorn benchmarks.keras_server:app --workers 2 --port 8001

``python -m benchmarks.run`` starts it exactly so; ``benchmarks.guard`` calls ``classify_bytes``
in process.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no TensorFlow start-up chatter in the logs

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from fastapi import FastAPI, File, HTTPException, UploadFile  # noqa: E402

from training import tta  # noqa: E402  (NumPy only: the views the exported graph averages over)

REPO = Path(__file__).resolve().parents[1]
MODEL_PATH = Path(os.environ.get("KERAS_BASELINE_MODEL", REPO / "models" / "original.keras"))
CLASSES = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")


def load_model(path: Path = MODEL_PATH):
    import keras

    model = keras.saving.load_model(path, compile=False)
    metadata = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").is_file() else {}
    model.views = metadata.get("export", {}).get("test_time_augmentation", "none")
    height, width = model.input_shape[1:3]
    model.predict(np.zeros((1, height, width, 3), np.float32), verbose=0)  # the first call builds the graph
    return model


def classify_bytes(model, data: bytes) -> dict[str, Any]:
    """The whole per-request work of the baseline: decode, resize, scale, ``model.predict``."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not an image")
    height, width = model.input_shape[1:3]
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    inputs = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    probabilities = tta.predict_numpy(lambda x: model.predict(x, verbose=0), inputs[None], model.views)[0]
    best = int(np.argmax(probabilities))
    return {"label": CLASSES[best], "confidence": float(probabilities[best]),
            "probabilities": dict(zip(CLASSES, (float(p) for p in probabilities)))}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.model = load_model()
    # The same "models ready" JSON line as the service, so the benchmark finds each worker's pid.
    print(json.dumps({"message": "models ready", "pid": os.getpid()}), file=sys.stderr, flush=True)
    yield


app = FastAPI(title="Keras baseline", lifespan=lifespan)


@app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/classify")
async def classify(file: UploadFile = File(...)) -> dict[str, Any]:
    data = await file.read()
    try:
        return classify_bytes(app.state.model, data)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
