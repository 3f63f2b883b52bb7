"""The floor, in process and on one core: what decoding, preprocessing and onnxruntime cost per image,
with nothing of HTTP, so the HTTP figures can be read as a fraction of it.

One thread everywhere (cv2.setNumThreads(1), onnxruntime intra-op 1), as in each service worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app import classification
from app.malloc import bound_heap
from app.model import Classifier
from app.preprocessing import decode_image
from app.registry import ModelRegistry

BATCH_SIZES = (1, 8, 32, 64)


@dataclass
class Samples:
    wall_s: list[float]  # elapsed time of each call
    cpu_s: list[float]  # CPU time of this thread during each call


def summarize(samples: Samples, images_per_sample: int = 1) -> dict[str, float | None]:
    """Median, p90 and p99 milliseconds per image (elapsed), the median CPU milliseconds per image,
    and images/s from the total elapsed time (a throughput on one core).

    On a quiet machine the CPU median matches the elapsed one; on a busy one it is the steadier figure."""
    per_image_ms = np.asarray(samples.wall_s, dtype=np.float64) * 1000.0 / images_per_sample
    cpu_ms = np.asarray(samples.cpu_s, dtype=np.float64) * 1000.0 / images_per_sample
    total_s = float(np.sum(samples.wall_s))
    return {
        "median_ms": round(float(np.median(per_image_ms)), 4),
        "p90_ms": round(float(np.percentile(per_image_ms, 90)), 4),
        "p99_ms": round(float(np.percentile(per_image_ms, 99)), 4),
        "cpu_median_ms": round(float(np.median(cpu_ms)), 4),
        "images_per_s": round(len(samples.wall_s) * images_per_sample / total_s, 1) if total_s else None,
        "samples": len(samples.wall_s),
    }


def time_calls(func: Callable[..., object], count: int, warmup: int = 5) -> Samples:
    """Elapsed and CPU seconds of each of ``count`` calls ``func(i)``, after ``warmup`` untimed ones."""
    for i in range(warmup):
        func(i)
    wall, cpu = [], []
    clock, cpu_clock = time.perf_counter, time.thread_time
    for i in range(count):
        start, cpu_start = clock(), cpu_clock()
        func(i)
        cpu.append(cpu_clock() - cpu_start)
        wall.append(clock() - start)
    return Samples(wall, cpu)


def floor(models: dict[str, Classifier], images_320: Sequence[bytes], images_640: Sequence[bytes],
          reference: bytes, repeats: int) -> dict[str, Any]:
    """Every in-process figure. ``repeats``: passes over the sample images for each measurement;
    ``reference``: the one image the HTTP measurements post, measured alone too, so that HTTP and
    in-process figures compare on the same pixels."""
    cv2.setNumThreads(1)
    bound_heap()  # a worker's malloc settings: they decide what a call's large activations cost
    result: dict[str, Any] = {"threads": 1, "images_320x240": len(images_320), "images_640x480": len(images_640)}
    sizes = {"320x240": list(images_320), "640x480": list(images_640)}
    stages: dict[str, Any] = {}
    pipeline: dict[str, Any] = {}
    for size, payloads in sizes.items():
        n = len(payloads)
        count = n * repeats
        decoded = [decode_image(data) for data in payloads]
        stages[f"decode {size}"] = summarize(time_calls(lambda i, p=payloads, n=n: decode_image(p[i % n]), count))
        for mode, model in models.items():
            stages[f"preprocess {mode} {size}"] = summarize(
                time_calls(lambda i, model=model, d=decoded, n=n: model.prepare(d[i % n]), count))
    # onnxruntime alone, on preprocessed real images, per call and per image.
    prepared = {mode: np.stack([model.prepare(decode_image(data)).model_image for data in images_320])
                for mode, model in models.items()}
    for mode, model in models.items():
        inputs = prepared[mode]
        for batch in BATCH_SIZES:
            tiled = np.concatenate([inputs] * (-(-batch // len(inputs))))[:batch]
            calls = max(20, repeats * len(images_320) // batch)
            stages[f"onnxruntime {mode} batch {batch}"] = summarize(
                time_calls(lambda i, m=model, x=tiled: m.predict(x), calls), images_per_sample=batch)
    # The floor: decode + preprocess + onnxruntime (in calls of at most INFER_CHUNK images and the
    # model's images_per_call, as the service makes them), per image, without the answer's objects:
    # one image as /classify, batches as /classify/batch.
    for mode, model in models.items():
        for batch in BATCH_SIZES:
            n = len(images_320)

            def work(i: int, m: Classifier = model, b: int = batch, n: int = n) -> None:
                rows = np.stack([m.prepare(decode_image(images_320[(i * b + k) % n])).model_image for k in range(b)])
                for start in range(0, b, classification.INFER_CHUNK):
                    m.predict_batched(rows[start:start + classification.INFER_CHUNK], classification.INFER_CHUNK)

            calls = max(10, repeats * n // batch)
            pipeline[f"floor {mode} 320x240 batch {batch}"] = summarize(time_calls(work, calls, warmup=2),
                                                                         images_per_sample=batch)
    count = repeats * len(images_320)
    for mode, model in models.items():
        pipeline[f"floor {mode} reference image"] = summarize(time_calls(
            lambda i, m=model: m.predict(m.prepare(decode_image(reference)).model_image[None]), count))
        # The service's whole per-image work for one request: bytes -> Prediction (decode,
        # preprocess, onnxruntime, the answer's pydantic model and the metrics).
        pipeline[f"classify() {mode} reference image"] = summarize(time_calls(
            lambda i, m=model: classification.classify(m, reference, classification.Limits()), count))
        pipeline[f"classify() {mode} 640x480"] = summarize(time_calls(
            lambda i, m=model: classification.classify(m, images_640[i % len(images_640)], classification.Limits()),
            repeats * len(images_640)))
    result["stages"] = stages
    result["pipeline"] = pipeline
    return result


def load_models(model_dir: Path) -> dict[str, Classifier]:
    """Each mode's default model, by mode: the models a request that names only a mode gets."""
    registry = ModelRegistry.load(model_dir, threads=1)
    return {mode: registry.get(mode) for mode in registry.modes}
