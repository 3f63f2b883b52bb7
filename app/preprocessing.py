"""The one preprocessing implementation, shared by training and serving.

Training (``training.data``) and the service (``app.model``) both turn image bytes into model
inputs through the functions of this module and nothing else, so that a model never sees at serving
time anything other than what it was trained on.

Pipeline: ``decode_image`` (bytes -> RGB uint8) -> ``stain_mask`` (HSV segmentation of the
red/purple stained white cell) -> ``locate_wbc`` (largest stained region) -> ``model_image``
(the input mode's picture, resized to the model's input, uint8) -> ``to_tensor`` (float32 in [0, 1]).
"""

from __future__ import annotations

import io
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from typing import Literal, NamedTuple, get_args

import cv2
import numpy as np
from PIL import Image

Mode = Literal["original", "color", "crop"]
MODES: tuple[Mode, ...] = get_args(Mode)
CHANNEL_ORDER = "RGB"
SCALING = "float32 = uint8 / 255, in [0, 1]"
SUPPORTED_FORMATS = ("JPEG", "PNG")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
REDUCTIONS = (1, 2, 4, 8)
# libjpeg's scaled decode at 1/1, 1/2, 1/4, 1/8, in RGB order.
JPEG_READ_FLAGS = {1: cv2.IMREAD_COLOR_RGB, 2: cv2.IMREAD_REDUCED_COLOR_2 & ~cv2.IMREAD_COLOR | cv2.IMREAD_COLOR_RGB,
                   4: cv2.IMREAD_REDUCED_COLOR_4 & ~cv2.IMREAD_COLOR | cv2.IMREAD_COLOR_RGB,
                   8: cv2.IMREAD_REDUCED_COLOR_8 & ~cv2.IMREAD_COLOR | cv2.IMREAD_COLOR_RGB}
# A decode that needs more than this (a large PNG) waits for any other such decode of the process: at 64 MiB,
# four requests of a PNG just under it, at once, grew a worker by 378 MB (benchmarks.request_memory). A worker
# has one CPU, so decodes that take turns lose no time.
LARGE_DECODE_BYTES = 16 * 1024 * 1024
_LARGE_DECODE = threading.Lock()
# A JPEG's scans (SOS markers): libjpeg decodes each one over the whole image, so a small file of
# thousands of empty scans costs minutes. Encoders write 1 (baseline) to about 10 (progressive).
MAX_JPEG_SCANS = 100
# Scans x pixels of one JPEG: each scan is a pass over every block (99 refinement scans of 5000x5000 took 1 s
# of CPU). A progressive 25 Mpx photo of 12 scans; encoders write about 10.
MAX_JPEG_SCAN_PIXELS = 300_000_000
# Metadata a JPEG (APPn and COM segments) or a PNG (chunks before its pixels, but the palette) may hold. Pillow
# keeps every one it reads (10 MB of empty APP3 segments took 334 MB); cameras and editors write a few, an ICC
# profile spans at most a dozen, a phone's extended XMP (depth maps) up to about 70.
MAX_METADATA_SEGMENTS = 256
# Of a JPEG's, the Exif ones (APP1 "Exif"): Pillow joins them, at a cost that grows with the square of their
# number (4 MB of them took 13 s). A JPEG has one.
MAX_EXIF_SEGMENTS = 4
# Frame types libjpeg-turbo decodes only at full size, whatever reduction is asked for.
LOSSLESS_JPEG_FRAMES = frozenset({0xC3, 0xC7, 0xCB, 0xCF})
# A PNG's compressed chunks, anywhere in it (an ICC profile, compressed text): Pillow and libpng inflate each,
# up to 1 MiB from a few hundred bytes (21 of them in a 32 KiB upload took 86 ms; 40 after the pixels, 1 s).
# The format allows one ICC profile.
MAX_PNG_COMPRESSED_CHUNKS = 4
# A PNG decodes whole, at its samples' depth, and OpenCV's decode peaks at about twice that
# (``benchmarks.request_memory``: 100 MB of 16-bit RGBA grows a worker by 200 MB). Its decoded bytes are
# held to what the pixel limit allows of 8-bit RGBA.
PNG_BYTES_PER_PIXEL = 4
PNG_MAX_SIDE = 1_000_000  # libpng's default user limit (PNG_USER_WIDTH_MAX, PNG_USER_HEIGHT_MAX)
# In entropy-coded data 0xFF is followed by 0x00 (a stuffed byte) or a restart marker; anything else
# (fill bytes 0xFF included) starts the next marker.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")
# A marker as libjpeg reads one: any bytes before a 0xFF are garbage it skips (with a warning), then fill
# bytes (0xFF); 0xFF00 is garbage too. Reading a stray byte as a marker would lose count of the scans.
_MARKER = re.compile(rb"\xff+[^\x00\xff]")
# Progressive JPEG frames, Huffman (SOF2) or arithmetic (SOF10). 0xFF followed by anything but 0x00 or
# a restart marker never occurs inside entropy-coded data, so a plain search finds only markers.
_PROGRESSIVE_MARKERS = (b"\xff\xc2", b"\xff\xca")

# The error reasons, also the label of the rejected-inputs counter in /metrics. Each is a code of the
# service's catalogue (app.error_codes, origin DECODE), which gives its HTTP status; written out here
# because preprocessing is shared with training and imports nothing of the service
# (tests/test_error_codes.py checks the two agree).
DecodeErrorReason = Literal[
    "empty", "not_an_image", "unsupported_format", "corrupt", "zero_size", "too_many_pixels",
    "request_too_many_pixels", "too_many_scans", "too_much_metadata",
]


class ImageDecodeError(ValueError):
    """Bytes that cannot be turned into an image this pipeline accepts; says why and what to do."""

    def __init__(self, reason: DecodeErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class PreprocessingParams:
    """Every threshold and kernel size of the pipeline; written into each model's metadata.

    Sizes are in pixels of the uploaded image, tuned on the data set's 320x240 frames
    (the same microscope magnification as the 640x480 BCCD frames they were cut from).
    Hue is on OpenCV's 0-179 scale.
    """

    # HSV window of the stain: purple nucleus / granules, not the pale pink red cells.
    hue_min: int = 110
    hue_max: int = 165
    sat_min: int = 60
    val_min: int = 40
    # Opening removes specks and thin edges; components below min_speck_area (platelets,
    # debris) are dropped from the mask.
    open_kernel: int = 3
    min_speck_area: int = 40
    # Gaussian blur of the color-extraction image, as in the paper.
    blur_kernel: int = 5
    # Closing merges the lobes of one nucleus into one region before the largest is taken.
    locate_close_kernel: int = 15
    # A stained region smaller than this is not reported as a white cell.
    min_cell_area: int = 400
    # Crop mode: square window of side crop_scale x the cell's larger box side,
    # at least crop_min_side pixels.
    crop_scale: float = 1.5
    crop_min_side: int = 96

    def __post_init__(self) -> None:
        # A model's metadata carries these: a value that loads but breaks the pipeline (a crop scale of 1e308
        # overflowed at warm-up) must fail where it is read.
        for name, (low, high) in PARAM_RANGES.items():
            value = getattr(self, name)
            kinds, kind_name = ((int, float), "a number") if name in FLOAT_PARAMS else ((int,), "an integer")
            if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
                raise ValueError(f"preprocessing parameter {name}={value!r} is not {kind_name} in {low}..{high}")
        for name in ODD_KERNELS:  # OpenCV's Gaussian blur takes odd sizes; 0 and 1 mean none
            if getattr(self, name) > 1 and getattr(self, name) % 2 == 0:
                raise ValueError(f"preprocessing parameter {name}={getattr(self, name)} must be odd (or 0 for none)")

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PreprocessingParams:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown preprocessing parameters {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)


# The values each parameter may take (inclusive); a comparison is false for NaN, which is refused too.
PARAM_RANGES: dict[str, tuple[float, float]] = {
    "hue_min": (0, 179), "hue_max": (0, 179), "sat_min": (0, 255), "val_min": (0, 255), "open_kernel": (0, 99),
    "min_speck_area": (0, 1_000_000), "blur_kernel": (0, 99), "locate_close_kernel": (0, 99),
    "min_cell_area": (0, 1_000_000), "crop_scale": (0.1, 100.0), "crop_min_side": (1, 10_000),
}
FLOAT_PARAMS = frozenset({"crop_scale"})
ODD_KERNELS = ("blur_kernel",)


@dataclass(frozen=True)
class PixelBox:
    """Pixel box in the coordinates of the image it was found in: x, y of the top-left corner."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class WbcLocation:
    found: bool
    box: PixelBox | None = None
    area_fraction: float = 0.0
    # All stained regions large enough to be a white cell, largest first (box, area fraction).
    cells: tuple[tuple[PixelBox, float], ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Preprocessed:
    """What one image becomes: the model's uint8 input and what the service reports about it."""

    model_image: np.ndarray  # H x W x 3 uint8 RGB at the model's input size
    mask: np.ndarray  # uint8 0/255 stain mask at the uploaded image's size
    wbc: WbcLocation
    window: PixelBox  # the region of the uploaded image that the model input shows
    rgb: np.ndarray  # the decoded image itself: every cell's crop is cut from it
    params: PreprocessingParams  # the parameters that found the mask and the cells
    scale: int = 1  # the uploaded image's pixels per pixel of rgb, each way (a large image is reduced)
    uploaded_size: tuple[int, int] | None = None  # width, height of the upload, where it was reduced


def _ensure_rgb_uint8(image: np.ndarray, decoded_as_bgr: bool) -> np.ndarray:
    if image.dtype == np.uint16:
        image = (image.astype(np.uint32) * 255 + 32767) // 65535
        image = image.astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageDecodeError("unsupported_format", f"unsupported pixel type {image.dtype}; send 8- or 16-bit images")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if channels == 4:
        # Transparent pixels become the light background of a smear, not black stain.
        bgr = image[..., :3].astype(np.float32)
        alpha = image[..., 3:4].astype(np.float32) / 255.0
        image = np.clip(bgr * alpha + 255.0 * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)
        channels = 3
    if channels != 3:
        raise ImageDecodeError("unsupported_format", f"images with {channels} channels are not supported; send RGB or grayscale")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if decoded_as_bgr else image


def _has_signature(data: bytes) -> bool:
    return data.startswith(PNG_SIGNATURE) or data.startswith(JPEG_SIGNATURE)


class ImageHeader(NamedTuple):
    format: str  # "JPEG" or "PNG"
    width: int  # as stored (before any EXIF orientation)
    height: int


def read_header(data: bytes, max_pixels: int) -> ImageHeader:
    """Format, width and height from the header alone, before any pixel is allocated."""
    if not data:
        raise ImageDecodeError("empty", "the uploaded file is empty; send a JPEG or PNG image")
    # The layout first: Pillow reads every metadata segment, and its cost is theirs.
    jpeg = jpeg_layout(data, MAX_JPEG_SCANS + 1) if data.startswith(JPEG_SIGNATURE) else None
    png = png_layout(data) if data.startswith(PNG_SIGNATURE) else None
    _check_layout(jpeg, png)
    try:
        with warnings.catch_warnings():
            # Our own pixel limit applies below; Pillow's bomb warning would only duplicate it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:
                fmt, (width, height) = header.format or "", header.size
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("too_many_pixels", _too_many_pixels_message(None, None, max_pixels)) from exc
    except Exception as exc:  # Pillow raises several types for garbage; all mean "not an image"
        if data[:8] == PNG_SIGNATURE and len(data) >= 24 and 0 in (
                int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")):
            raise ImageDecodeError("zero_size", "the PNG declares a zero width or height; "
                                   "send an image with pixels in it") from exc
        if _has_signature(data):
            # A PNG or JPEG whose header Pillow refuses: a bad chunk CRC, an oversized text chunk.
            raise ImageDecodeError("corrupt", "the file starts as a PNG or JPEG but its header is damaged (a bad "
                                   "checksum or an oversized metadata chunk); send the image re-saved "
                                   "by an image editor") from exc
        raise ImageDecodeError(
            "not_an_image", "the file is not a readable image; send a JPEG or PNG image of a stained blood smear"
        ) from exc
    # MPO: the multi-picture JPEG of phones and cameras; its first picture is a plain JPEG.
    fmt = "JPEG" if fmt == "MPO" else fmt
    if fmt not in SUPPORTED_FORMATS:
        raise ImageDecodeError(
            "unsupported_format", f"{fmt or 'this'} images are not supported; send JPEG or PNG"
        )
    if width <= 0 or height <= 0:
        raise ImageDecodeError("zero_size", f"the image is {width}x{height} pixels; send an image with pixels in it")
    if width * height > max_pixels:
        raise ImageDecodeError("too_many_pixels", _too_many_pixels_message(width, height, max_pixels))
    if fmt == "PNG" and max(width, height) > PNG_MAX_SIDE:
        raise ImageDecodeError("unsupported_format", f"the PNG is {width}x{height} pixels; libpng reads no side over "
                               f"{PNG_MAX_SIDE:,} pixels: send a smaller image")
    sample_bytes = _png_pixel_bytes(data, png) if fmt == "PNG" and png is not None else 0
    if width * height * sample_bytes > max_pixels * PNG_BYTES_PER_PIXEL:
        raise ImageDecodeError("too_many_pixels", (
            f"the PNG declares {width}x{height} pixels of {sample_bytes} bytes each (16-bit samples), "
            f"{width * height * sample_bytes:,} bytes decoded, over the {max_pixels * PNG_BYTES_PER_PIXEL:,} "
            f"of {max_pixels:,} 8-bit RGBA pixels; send it with 8-bit samples, or smaller"))
    if jpeg is not None and jpeg.scans * width * height > MAX_JPEG_SCAN_PIXELS:
        raise ImageDecodeError("too_many_scans", f"the JPEG makes {jpeg.scans} passes (scans) over its {width}x{height} "
                               f"pixels, more than {MAX_JPEG_SCAN_PIXELS:,} pixels in all (a 25 Mpx photo of 12 scans); "
                               "send it re-saved as a baseline JPEG, or smaller")
    return ImageHeader(fmt, width, height)


def _check_layout(jpeg: JpegLayout | None, png: PngLayout | None) -> None:
    if jpeg is not None:
        if jpeg.scans > MAX_JPEG_SCANS:
            raise ImageDecodeError("too_many_scans", f"the JPEG holds more than {MAX_JPEG_SCANS} scans (encoders "
                                   "write 1 to about 10; each one costs a pass over the whole image); send the image "
                                   "re-saved by an image editor")
        if jpeg.lossless:
            raise ImageDecodeError("unsupported_format", "lossless JPEG (SOF3) is not supported: it decodes only at "
                                   "full size; send a baseline or progressive JPEG, or a PNG")
    metadata = jpeg.metadata_segments if jpeg is not None else png.metadata_chunks if png is not None else 0
    if metadata > MAX_METADATA_SEGMENTS or (jpeg is not None and jpeg.exif_segments > MAX_EXIF_SEGMENTS):
        raise ImageDecodeError("too_much_metadata", f"the image holds more than {MAX_METADATA_SEGMENTS} metadata "
                               f"segments or chunks, or more than {MAX_EXIF_SEGMENTS} Exif segments (cameras and "
                               "editors write a few); send the image re-saved by an image editor, without its metadata")
    if png is not None and png.compressed_chunks > MAX_PNG_COMPRESSED_CHUNKS:
        raise ImageDecodeError("too_much_metadata", f"the PNG holds more than {MAX_PNG_COMPRESSED_CHUNKS} compressed "
                               "metadata chunks (ICC profile, compressed text); send the image re-saved by an image "
                               "editor, without its metadata")
    if png is not None and png.animated:
        raise ImageDecodeError("unsupported_format", "animated PNGs are not supported (OpenCV holds two frames of "
                               "one); send one frame, as a PNG or JPEG")


@dataclass(frozen=True)
class JpegLayout:
    scans: int  # counted up to the walk's stop_at
    metadata_segments: int  # APPn and COM, counted up to one over MAX_METADATA_SEGMENTS
    exif_segments: int  # of them, APP1 "Exif"
    lossless: bool


@dataclass(frozen=True)
class PngLayout:
    metadata_chunks: int  # before the first IDAT, but IHDR and PLTE; up to one over MAX_METADATA_SEGMENTS
    compressed_chunks: int  # anywhere: iCCP, zTXt, and iTXt with its compression flag set
    transparent: bool  # a tRNS chunk: OpenCV decodes RGB with it to RGBA
    animated: bool  # an acTL chunk: APNG


def png_layout(data: bytes) -> PngLayout:
    """The chunks of a PNG up to IEND, by their lengths: those before its pixels (which Pillow reads), the
    compressed ones anywhere (libpng inflates those after the pixels too), transparency and animation."""
    position, metadata, compressed, transparent, animated, pixels = len(PNG_SIGNATURE), 0, 0, False, False, False
    while position + 8 <= len(data) and metadata <= MAX_METADATA_SEGMENTS and compressed <= MAX_PNG_COMPRESSED_CHUNKS:
        length, kind = int.from_bytes(data[position:position + 4], "big"), data[position + 4:position + 8]
        if kind == b"IEND":
            break
        pixels = pixels or kind == b"IDAT"
        metadata += not pixels and kind not in (b"IHDR", b"PLTE")
        compressed += kind in (b"iCCP", b"zTXt") or (kind == b"iTXt" and _itxt_compressed(data, position + 8, length))
        transparent = transparent or kind == b"tRNS"
        animated = animated or kind == b"acTL"
        position += 12 + length
    return PngLayout(metadata, compressed, transparent, animated)


def _itxt_compressed(data: bytes, start: int, length: int) -> bool:
    """An iTXt chunk's compression flag: the byte after its keyword's terminating null (most are not)."""
    end = data.find(b"\x00", start, start + min(length, 80))
    return end >= 0 and end + 1 < len(data) and data[end + 1] == 1


def jpeg_layout(data: bytes, stop_at: int) -> JpegLayout:
    """The scans (SOS segments) of a JPEG up to its end of image, counted up to ``stop_at``, its metadata
    segments and its frame type: segments are skipped by their length, so that neither metadata nor data after
    the image (a phone's motion photo) is taken for a scan."""
    scans, metadata, exif, lossless, position = 0, 0, 0, False, 2  # after SOI
    while scans < stop_at and metadata <= MAX_METADATA_SEGMENTS:
        found = _MARKER.search(data, position)
        if found is None or data[found.end() - 1] == 0xD9:  # end of data or EOI
            break
        marker, position = data[found.end() - 1], found.end()
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # standalone markers: no length
            continue
        if position + 2 > len(data):
            break
        exif += marker == 0xE1 and data.startswith(b"Exif\x00", position + 2)
        position += int.from_bytes(data[position:position + 2], "big")
        metadata += 0xE0 <= marker <= 0xEF or marker == 0xFE
        lossless = lossless or marker in LOSSLESS_JPEG_FRAMES
        if marker == 0xDA:
            scans += 1
            found = _NEXT_MARKER.search(data, position)  # past the entropy-coded data
            if found is None:
                break
            position = found.start()
    return JpegLayout(scans, metadata, exif, lossless)


def _png_pixel_bytes(data: bytes, layout: PngLayout) -> int:
    """Bytes per decoded pixel of a PNG, from its IHDR (bit depth at byte 24, colour type at 25): OpenCV
    keeps 16-bit samples, expands a palette to 8-bit colour, and decodes any alpha (grey and alpha, a tRNS
    chunk of RGB or palette) to four channels."""
    if len(data) < 26:
        return 0
    depth, colour = data[24], data[25]
    channels = {0: 1, 2: 3, 3: 4}.get(colour, 4)
    if colour == 2 and layout.transparent:  # a transparent colour: RGBA
        channels = 4
    return channels * (2 if depth == 16 else 1)


def _too_many_pixels_message(width: int | None, height: int | None, max_pixels: int) -> str:
    size = f"{width}x{height} = {width * height:,} pixels" if width and height else "far too many pixels"
    return (f"the image declares {size}, over the limit of {max_pixels:,} (a decompression bomb is refused "
            "before decoding); send a smaller image: a 640x480 field of view is plenty")


def reduction_for(width: int, height: int, max_working_pixels: int | None) -> int:
    """The smallest of 1, 2, 4, 8 that brings the image within ``max_working_pixels`` (8 at most)."""
    if max_working_pixels is None:
        return 1
    for factor in REDUCTIONS:
        if -(-width // factor) * -(-height // factor) <= max_working_pixels:
            return factor
    return REDUCTIONS[-1]


def _decoded_bytes(data: bytes, fmt: str, width: int, height: int, reduction: int) -> int:
    if fmt == "JPEG":
        # A progressive JPEG keeps every DCT coefficient at full size, whatever the scale: 2 bytes x 3
        # components per pixel.
        if any(marker in data for marker in _PROGRESSIVE_MARKERS):
            return width * height * 6
        return -(-width // reduction) * -(-height // reduction) * 3  # decoded straight to the reduced size
    return width * height * 8  # a PNG decodes whole first: up to 4 channels of 16 bits


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray  # H x W x 3 uint8, reduced by ``reduction`` where the image is large
    reduction: int  # 1, 2, 4 or 8: the uploaded image's pixels per pixel of ``rgb``, each way
    width: int  # the uploaded image's own size, as shown (after its EXIF orientation)
    height: int


def decode(data: bytes, max_pixels: int = 40_000_000, max_working_pixels: int | None = None,
           header: ImageHeader | None = None) -> DecodedImage:
    """Decode JPEG or PNG bytes to RGB uint8, reduced by 2, 4 or 8 where it has more than
    ``max_working_pixels`` (a JPEG through libjpeg's scaled decode, which never holds the full image).

    Grayscale, RGBA (composited on white) and 16-bit images are converted; JPEG EXIF orientation is
    applied. The header is checked first, so a decompression bomb is refused before its pixels exist;
    ``header`` is what ``read_header(data, max_pixels)`` returned, where the caller has read it already.
    """
    fmt, width, height = header or read_header(data, max_pixels)
    reduction = reduction_for(width, height, max_working_pixels)
    buffer = np.frombuffer(data, dtype=np.uint8)
    # A JPEG is decoded straight to RGB (libjpeg's own output order; the same values as decoding
    # to BGR and swapping, without the extra pass over the pixels).
    jpeg = fmt == "JPEG"
    flags = JPEG_READ_FLAGS[reduction] if jpeg else cv2.IMREAD_UNCHANGED
    # Large decodes take turns, so that a worker's threads never hold several at once.
    large = _decoded_bytes(data, fmt, width, height, reduction) > LARGE_DECODE_BYTES
    with _LARGE_DECODE if large else nullcontext():
        image = cv2.imdecode(buffer, flags)
        if image is None or image.size == 0:
            raise ImageDecodeError(
                "corrupt", f"the {fmt} file is truncated or corrupt and could not be decoded; send the complete file"
            )
        if not jpeg and reduction > 1:
            size = (-(-image.shape[1] // reduction), -(-image.shape[0] // reduction))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        rgb = _ensure_rgb_uint8(image, decoded_as_bgr=not jpeg)
    if rgb.shape[:2] != (-(-height // reduction), -(-width // reduction)) \
            and rgb.shape[:2] == (-(-width // reduction), -(-height // reduction)):
        width, height = height, width  # turned a quarter by its EXIF orientation: the upload as it is shown
    return DecodedImage(rgb=rgb, reduction=reduction, width=width, height=height)


def decode_image(data: bytes, max_pixels: int = 40_000_000, max_working_pixels: int | None = None) -> np.ndarray:
    """``decode``'s pixels alone: H x W x 3 uint8 RGB."""
    return decode(data, max_pixels, max_working_pixels).rgb


@lru_cache(maxsize=32)
def _ellipse(size: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    kernel.setflags(write=False)  # shared by every call: never modified
    return kernel


@lru_cache(maxsize=32)
def _ellipse_rows(size: int) -> tuple[tuple[int, int], ...]:
    """The elliptical kernel as rows: (row offset from the centre, half-width); each row of OpenCV's
    ellipse is one run of ones centred on the middle column."""
    kernel, centre = _ellipse(size), size // 2
    rows = []
    for index, row in enumerate(kernel):
        ones = np.flatnonzero(row)
        assert ones.size and ones[0] == centre - (ones[-1] - centre) and ones.size == ones[-1] - ones[0] + 1
        rows.append((index - centre, int(ones[-1] - centre)))
    return tuple(rows)


def close_ellipse(mask: np.ndarray, size: int) -> np.ndarray:
    """``cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _ellipse(size))``, bit for bit, about twice as fast on
    a 0/255 mask: the elliptical dilation and erosion as unions and intersections of shifted horizontal
    ones, one per kernel row (OpenCV's borders: nothing outside the image for the dilation, everything
    for the erosion)."""
    return _by_rows(_by_rows(mask, size, cv2.dilate, np.bitwise_or), size, cv2.erode, np.bitwise_and)


def _by_rows(mask: np.ndarray, size: int, operation: Callable[..., np.ndarray],
             combine: np.ufunc) -> np.ndarray:
    height = mask.shape[0]
    out = mask.copy()  # the centre row of the kernel covers the centre pixel: a start for either operation
    by_width: dict[int, np.ndarray] = {}
    for offset, half in _ellipse_rows(size):
        if abs(offset) >= height:
            continue  # the row lies outside the image: nothing for the dilation, everything for the erosion
        if half not in by_width:
            by_width[half] = mask if half == 0 else operation(mask, np.ones((1, 2 * half + 1), np.uint8))
        row = by_width[half]
        if offset >= 0:
            combine(out[:height - offset], row[offset:], out=out[:height - offset])
        else:
            combine(out[-offset:], row[:height + offset], out=out[-offset:])
    return out


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray | None]:
    """8-connected components of a 0/255 mask: count, labels (OpenCV's, label 0 the background), each
    label's pixel count, and OpenCV's statistics where they came with the labelling (else None).

    16-bit labels where they cannot overflow (an image of up to 2x2 blocks per label), which OpenCV
    labels about three times faster than 32-bit ones; the same labels either way. Their areas are a histogram
    of the labels: OpenCV's per-component statistics cost several times the labelling itself, and the boxes
    are wanted only for the few regions large enough to be a cell (``_boxes``). A large image's 32-bit labels
    come with the statistics: counting them in numpy would copy them at 64 bits (32 MB for 2000x2000)."""
    height, width = mask.shape[:2]
    if ((height + 1) // 2) * ((width + 1) // 2) + 1 < 65535:
        count, labels = cv2.connectedComponents(mask, connectivity=8, ltype=cv2.CV_16U)
        # calcHist takes 16-bit labels (not 32-bit ones), one bin per label, exact below 2**24 pixels.
        return count, labels, cv2.calcHist([labels], [0], None, [count], [0, count]).ravel().astype(np.int64), None
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    return count, labels, stats[:, cv2.CC_STAT_AREA].astype(np.int64), stats


# Boxes are found one region at a time up to this many regions; past it (a crafted image of many stained
# blobs) one pass of OpenCV's statistics finds them all, rather than one scan of the window per region.
BOXES_ONE_BY_ONE = 8


def _boxes(mask: np.ndarray, labels: np.ndarray, chosen: np.ndarray,
           stats: np.ndarray | None = None) -> list[tuple[int, int, int, int]]:
    """x, y, width, height of the pixels of each label in ``chosen``, in its order; from ``stats`` (OpenCV's
    statistics of these labels) where given."""
    if stats is None and len(chosen) > BOXES_ONE_BY_ONE:
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=_label_type(labels))
    if stats is not None:
        rows: list[Sequence[int]] = [stats[label, :4].tolist() for label in chosen]
    else:
        rows = [cv2.boundingRect(cv2.inRange(labels, int(label), int(label))) for label in chosen]
    return [(int(x), int(y), int(w), int(h)) for x, y, w, h in rows]


def _label_type(labels: np.ndarray) -> int:
    return cv2.CV_16U if labels.dtype == np.uint16 else cv2.CV_32S


def stain_mask(rgb: np.ndarray, params: PreprocessingParams) -> np.ndarray:
    """uint8 mask (0/255) of the red/purple stained pixels, specks removed."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    mask = cv2.inRange(hsv, (params.hue_min, params.sat_min, params.val_min), (params.hue_max, 255, 255))
    if params.open_kernel > 1:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _ellipse(params.open_kernel))
    if params.min_speck_area > 0:
        # Only the box around the stained pixels is labelled: every component lies inside it.
        x, y, w, h = cv2.boundingRect(mask)
        if w == 0:
            return mask
        _, labels, areas, _ = _components(mask[y:y + h, x:x + w])
        small = areas < params.min_speck_area
        small[0] = False  # the background
        if small.any():
            # A lookup table by component label: one gather instead of a membership test per pixel.
            keep = np.where(small, 0, 255).astype(np.uint8)
            keep[0] = 0
            mask[y:y + h, x:x + w] = np.take(keep, labels)
    return mask


def color_extract(rgb: np.ndarray, mask: np.ndarray, params: PreprocessingParams) -> np.ndarray:
    """The paper's color-extraction image: stained pixels kept, everything else black, then blurred."""
    extracted = cv2.bitwise_and(rgb, rgb, mask=mask)
    if params.blur_kernel > 1:
        extracted = cv2.GaussianBlur(extracted, (params.blur_kernel, params.blur_kernel), 0)
    return extracted


# Another stained region than the largest is another white cell from this many times min_cell_area.
OTHER_CELL_AREA_FACTOR = 2.5


def locate_wbc(mask: np.ndarray, params: PreprocessingParams) -> WbcLocation:
    """Stained regions large enough to be white cells, largest first; the largest is *the* cell.

    The closing and the labelling run on the box around the stained pixels only, widened by twice
    the kernel and started at even coordinates: the same result as on the whole image (outside that
    box the closed mask is 0, a window edge inside the image changes nothing, and OpenCV labels in
    2x2 blocks aligned as on the whole image, so components come in the same order)."""
    image_h, image_w = mask.shape[:2]
    total = float(image_h * image_w)
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0:
        return WbcLocation(found=False)
    kernel = params.locate_close_kernel
    margin = 2 * kernel if kernel > 1 else 0
    x0, y0 = max(0, x - margin) & ~1, max(0, y - margin) & ~1
    x1, y1 = min(image_w, x + w + margin), min(image_h, y + h + margin)
    merged = mask[y0:y1, x0:x1]
    if kernel > 1:
        merged = close_ellipse(merged, kernel)
    _, labels, areas, stats = _components(merged)
    cells = []
    large = np.flatnonzero(areas[1:] >= params.min_cell_area) + 1
    for label, (left, top, width, height) in zip(large, _boxes(merged, labels, large, stats)):
        cells.append((PixelBox(left + x0, top + y0, width, height), int(areas[label]) / total))
    cells.sort(key=lambda cell: cell[1], reverse=True)
    if not cells:
        return WbcLocation(found=False)
    box, fraction = cells[0]
    return WbcLocation(found=True, box=box, area_fraction=fraction, cells=_white_cells(cells, total, params))


def _white_cells(regions: list[tuple[PixelBox, float]], total: float,
                 params: PreprocessingParams) -> tuple[tuple[PixelBox, float], ...]:
    """The largest stained region, and the others that are big enough to be white cells too. Platelet
    clumps stain like nuclei: on the data set every second region found was at most 889 px (TRAIN) while
    white cells were over 900 px in 99.5% of images, so another region counts from OTHER_CELL_AREA_FACTOR
    times the smallest region that can be the cell (1,000 px by default)."""
    smallest = OTHER_CELL_AREA_FACTOR * params.min_cell_area / total
    return (regions[0], *(region for region in regions[1:] if region[1] >= smallest))


def crop_window(box: PixelBox | None, image_height: int, image_width: int, params: PreprocessingParams,
                aspect: float) -> PixelBox:
    """A window of the model's aspect (width / height) centred on the cell, sized relative to the
    cell and clamped to the image; the whole image when there is no cell."""
    if box is None:
        return PixelBox(0, 0, image_width, image_height)
    side = max(params.crop_min_side, params.crop_scale * max(box.width, box.height))
    win_w = min(image_width, int(round(side * max(aspect, 1.0))))
    win_h = min(image_height, int(round(side / min(aspect, 1.0))))
    cx, cy = box.x + box.width / 2.0, box.y + box.height / 2.0
    x = int(round(min(max(cx - win_w / 2.0, 0), image_width - win_w)))
    y = int(round(min(max(cy - win_h / 2.0, 0), image_height - win_h)))
    return PixelBox(x, y, win_w, win_h)


def resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    # INTER_AREA averages when shrinking (no aliasing of granules); it interpolates when enlarging.
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def preprocess(rgb: np.ndarray, mode: Mode, input_size: tuple[int, int],
               params: PreprocessingParams) -> Preprocessed:
    """Turn a decoded RGB image into the model's uint8 input for ``mode`` (original, color or crop)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    height, width = input_size
    mask = stain_mask(rgb, params)
    wbc = locate_wbc(mask, params)
    image_h, image_w = rgb.shape[:2]
    window = PixelBox(0, 0, image_w, image_h)
    if mode == "original":
        picture = rgb
    elif mode == "color":
        picture = color_extract(rgb, mask, params)
    else:
        window = crop_window(wbc.box, image_h, image_w, params, aspect=width / height)
        picture = rgb[window.y:window.y + window.height, window.x:window.x + window.width]
    return Preprocessed(model_image=resize_to(picture, height, width), mask=mask, wbc=wbc, window=window, rgb=rgb,
                        params=params)


def to_tensor(images: np.ndarray) -> np.ndarray:
    """uint8 images (N x H x W x 3, RGB) -> the float32 tensor every model takes, in [0, 1]."""
    return images.astype(np.float32) * np.float32(1.0 / 255.0)


@dataclass(frozen=True)
class CellCrop:
    """One located white cell, cut out as crop mode cuts the largest one."""

    box: PixelBox
    area_fraction: float
    window: PixelBox
    model_image: np.ndarray  # H x W x 3 uint8 RGB at the model's input size


def cell_crops(rgb: np.ndarray, wbc: WbcLocation, input_size: tuple[int, int],
               params: PreprocessingParams, start: int = 0, stop: int | None = None) -> list[CellCrop]:
    """A crop-mode input for every white cell found from the ``start``-th to before the ``stop``-th,
    largest first: an image with several cells gets one answer per cell. The first is exactly what
    ``preprocess(rgb, "crop", ...)`` gives."""
    height, width = input_size
    image_h, image_w = rgb.shape[:2]
    crops = []
    for box, fraction in wbc.cells[start:stop]:
        window = crop_window(box, image_h, image_w, params, aspect=width / height)
        picture = rgb[window.y:window.y + window.height, window.x:window.x + window.width]
        crops.append(CellCrop(box=box, area_fraction=fraction, window=window,
                              model_image=resize_to(picture, height, width)))
    return crops
