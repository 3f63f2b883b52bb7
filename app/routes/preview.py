"""POST /preprocess: a PNG of what the model sees, for the web page and for debugging."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response

from app import error_codes, rendering
from app.classification import Limits
from app.concurrency import run_cpu_bound
from app.deps import ImageFile, ModelDep, WorkDep, require_multipart, single_file
from app.errors import error_responses
from app.model import Classifier
from app.preprocessing import decode_image
from app.rendering import Size, View

router = APIRouter(tags=["preview"], dependencies=[Depends(require_multipart), Depends(single_file)])

PNG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}, "description": "the preview image"}}


def preview_png(data: bytes, model: Classifier, view: View, size: Size, limits: Limits) -> bytes:
    rgb = decode_image(data, limits.per_image_pixels, limits.max_working_pixels)
    return rendering.to_png(rendering.render(rgb, model, view, size))


@router.post("/preprocess", response_class=Response,
             responses={**PNG_RESPONSE, **error_responses(*error_codes.UPLOAD_ERRORS, *error_codes.IMAGE_ERRORS,
                                                      error_codes.DUPLICATE_FIELD)},
             summary="See the preprocessing: the color extraction, the stain mask, the overlay or the crop")
async def preprocess(
    file: ImageFile,
    model: ModelDep,
    work: WorkDep,
    view: Annotated[View, Query(description="extracted: the color extraction; mask: the stain mask; overlay: the "
                                            "image with the mask outline, the cell's box and the crop window; "
                                            "crop: the crop-mode window, cut out")] = "extracted",
    size: Annotated[Size, Query(description="model: at the model's input size (a square for crop); original: at "
                                            "the uploaded image's size, or as analysed, reduced by 2 to 8, when it has "
                                            "over BLOODCELLS_MAX_WORKING_PIXELS (the window's for crop)")] = "model",
) -> Response:
    data = await file.read()
    png = await run_cpu_bound(work.limiter, preview_png, data, model, view, size, work.limits)
    return Response(png, media_type="image/png")
