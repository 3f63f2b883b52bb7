"""POST /classify and POST /classify/batch."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request

from app import classification, error_codes
from app.concurrency import header_here, run_cpu_bound, run_image_work
from app.deps import ImageFile, ImageFiles, ModelDep, SettingsDep, WorkDep, require_multipart, single_file
from app.errors import ApiError, error_responses, request_id_of
from app.schemas import BatchClassification, Classification

router = APIRouter(tags=["classify"], dependencies=[Depends(require_multipart)])
ERRORS = error_responses(*error_codes.UPLOAD_ERRORS, *error_codes.IMAGE_ERRORS, error_codes.DUPLICATE_FIELD)
# A bad file of a batch is an error entry of the 200 answer; only the pixels of all the files together refuse it.
BATCH_ERRORS = error_responses(*error_codes.UPLOAD_ERRORS, error_codes.REQUEST_TOO_MANY_PIXELS,
                               error_codes.TOO_MANY_FILES)


def elapsed_ms(request: Request) -> float:
    # From the request's arrival (set by the request-context middleware): the upload is included.
    start = getattr(request.state, "start", None) or time.perf_counter()
    return round((time.perf_counter() - start) * 1000.0, 3)


@router.post("/classify", response_model=Classification, responses=ERRORS,
             summary="Classify the white blood cell of one image", dependencies=[Depends(single_file)])
async def classify(request: Request, file: ImageFile, model: ModelDep, work: WorkDep) -> Classification:
    data = await file.read()
    header = classification.header_of(data, work.limits) if header_here(len(data)) else None
    prediction = await run_image_work(work.coalescer, work.admission, header, classification.classify, model, data,
                                      work.limits, work.registry.cell_model, header)
    return Classification(**dict(prediction), elapsed_ms=elapsed_ms(request))


@router.post("/classify/batch", response_model=BatchClassification, responses=BATCH_ERRORS,
             summary="Classify several images with batched inference; a bad file gets its own error entry")
async def classify_batch(request: Request, files: ImageFiles, model: ModelDep, work: WorkDep,
                         settings: SettingsDep) -> BatchClassification:
    if len(files) > settings.max_batch_files:
        raise ApiError.of(error_codes.TOO_MANY_FILES, f"the batch holds {len(files)} files, over the limit of "
                          f"{settings.max_batch_files}; split it into several requests")
    payloads = [await upload.read() for upload in files]
    outcomes = await run_cpu_bound(work.limiter, classification.classify_many, model, payloads, work.limits,
                                   work.registry.cell_model)
    items = classification.batch_items([upload.filename for upload in files], outcomes, request_id_of(request.scope))
    return BatchClassification(mode=model.mode, model=classification.model_ref(model), results=items,
                               elapsed_ms=elapsed_ms(request))
