"""The shared preprocessing on synthetic smears whose geometry is known."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from app import preprocessing
from app.preprocessing import ImageDecodeError, PreprocessingParams
from tests.synthetic import encode, make_smear, png_bytes

PARAMS = PreprocessingParams()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("seed", range(5))
def test_mask_covers_the_purple_cell_and_no_red_cell(seed: int) -> None:
    rng = np.random.default_rng(seed)
    wbc = (int(rng.integers(60, 260)), int(rng.integers(60, 180)), int(rng.integers(25, 40)))
    smear = make_smear(wbcs=(wbc,), seed=seed)
    mask = preprocessing.stain_mask(smear.rgb, PARAMS) > 0
    assert iou(mask, smear.wbc_mask) >= 0.8
    assert len(smear.rbc_masks) >= 8
    for red_cell in smear.rbc_masks:
        assert (mask & red_cell).sum() == 0


def test_bounding_box_and_area_fraction_match_the_drawn_cell() -> None:
    smear = make_smear(wbcs=((100, 90, 30),), seed=3)
    wbc = preprocessing.locate_wbc(preprocessing.stain_mask(smear.rgb, PARAMS), PARAMS)
    assert wbc.found and wbc.box is not None
    x, y, w, h = smear.wbc_boxes[0]
    assert abs(wbc.box.x - x) <= 2 and abs(wbc.box.y - y) <= 2
    assert abs(wbc.box.width - w) <= 3 and abs(wbc.box.height - h) <= 3
    assert wbc.area_fraction == pytest.approx(smear.wbc_mask.mean(), rel=0.1)


def test_image_without_a_stained_cell_is_reported() -> None:
    smear = make_smear(wbcs=(), seed=1)
    wbc = preprocessing.locate_wbc(preprocessing.stain_mask(smear.rgb, PARAMS), PARAMS)
    assert not wbc.found and wbc.box is None and wbc.area_fraction == 0.0


def test_small_purple_specks_are_removed() -> None:
    smear = make_smear(wbcs=((160, 120, 30),), seed=2)
    rgb = smear.rgb.copy()
    cv2.circle(rgb, (30, 30), 2, (118, 82, 192), -1)  # a platelet-sized speck
    mask = preprocessing.stain_mask(rgb, PARAMS)
    assert mask[28:33, 28:33].max() == 0
    assert mask[120, 160] == 255


def test_several_cells_are_listed_largest_first() -> None:
    smear = make_smear(wbcs=((70, 70, 22), (240, 160, 34)), seed=4)
    wbc = preprocessing.locate_wbc(preprocessing.stain_mask(smear.rgb, PARAMS), PARAMS)
    assert len(wbc.cells) == 2
    assert wbc.box == wbc.cells[0][0]
    assert wbc.cells[0][0].x == pytest.approx(240 - 34, abs=2)
    assert wbc.cells[1][0].x == pytest.approx(70 - 22, abs=2)


def test_color_extraction_blacks_out_everything_but_the_stain() -> None:
    smear = make_smear(seed=5)
    mask = preprocessing.stain_mask(smear.rgb, PARAMS)
    extracted = preprocessing.color_extract(smear.rgb, mask, PARAMS)
    far = ~cv2.dilate(smear.wbc_mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert extracted[far].max() == 0
    core = cv2.erode(smear.wbc_mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert np.abs(extracted[core].astype(int) - smear.rgb[core].astype(int)).mean() < 6


@pytest.mark.parametrize("mode", preprocessing.MODES)
def test_preprocess_gives_the_model_input_size_in_uint8(mode: preprocessing.Mode) -> None:
    smear = make_smear(seed=6)
    out = preprocessing.preprocess(smear.rgb, mode, (60, 80), PARAMS)
    assert out.model_image.shape == (60, 80, 3) and out.model_image.dtype == np.uint8
    tensor = preprocessing.to_tensor(out.model_image[None])
    assert tensor.dtype == np.float32 and 0.0 <= tensor.min() and tensor.max() <= 1.0
    assert out.mask.shape == smear.rgb.shape[:2]


def test_crop_window_is_relative_to_the_cell_whatever_the_frame() -> None:
    small = make_smear(320, 240, wbcs=((160, 120, 30),), seed=7)
    large = make_smear(640, 480, wbcs=((400, 300, 30),), n_rbc=40, seed=7)
    a = preprocessing.preprocess(small.rgb, "crop", (64, 64), PARAMS)
    b = preprocessing.preprocess(large.rgb, "crop", (64, 64), PARAMS)
    assert (a.window.width, a.window.height) == (b.window.width, b.window.height)
    assert a.window.width == a.window.height
    # The cell is in the middle of both crops.
    for out in (a, b):
        centre = out.model_image[28:36, 28:36].reshape(-1, 3).mean(axis=0)
        assert centre[2] > centre[1] + 60  # purple: blue well above green


def test_crop_window_is_clamped_to_the_image() -> None:
    smear = make_smear(wbcs=((20, 20, 18),), seed=8)
    out = preprocessing.preprocess(smear.rgb, "crop", (64, 64), PARAMS)
    w = out.window
    assert w.x == 0 and w.y == 0 and w.x + w.width <= 320 and w.y + w.height <= 240


def test_crop_falls_back_to_the_whole_image_without_a_cell() -> None:
    smear = make_smear(wbcs=(), seed=9)
    out = preprocessing.preprocess(smear.rgb, "crop", (64, 64), PARAMS)
    assert not out.wbc.found
    assert (out.window.width, out.window.height) == (320, 240)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        preprocessing.preprocess(make_smear().rgb, "sepia", (60, 80), PARAMS)  # type: ignore[arg-type]


# Decoding -------------------------------------------------------------------------------------------

def test_png_and_jpeg_decode_to_rgb() -> None:
    smear = make_smear(seed=10)
    png = preprocessing.decode_image(encode(smear.rgb, ".png"))
    assert np.array_equal(png, smear.rgb)
    jpeg = preprocessing.decode_image(encode(smear.rgb, ".jpg"))
    assert jpeg.shape == smear.rgb.shape
    assert np.abs(jpeg.astype(int) - smear.rgb.astype(int)).mean() < 4  # RGB, not BGR


def test_a_jpeg_of_thousands_of_scans_is_refused_before_decoding() -> None:
    from tests.hostile import jpeg_of_scans

    progressive = cv2.imencode(".jpg", make_smear(seed=3).rgb, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert 1 < progressive.count(b"\xff\xda") <= preprocessing.MAX_JPEG_SCANS
    assert preprocessing.decode(progressive).rgb.shape == (240, 320, 3)
    assert preprocessing.decode(jpeg_of_scans(50, 64, 64)).rgb.shape == (64, 64, 3)  # a valid file, within the bound
    with pytest.raises(ImageDecodeError) as refused:
        preprocessing.read_header(jpeg_of_scans(10_000), 25_000_000)
    assert refused.value.reason == "too_many_scans" and "more than 100 scans" in refused.value.message


def test_stray_bytes_where_a_marker_belongs_do_not_hide_scans() -> None:
    from tests.hostile import jpeg_of_scans

    data = jpeg_of_scans(3000, 5000, 5000)
    first_scan_added = data.rfind(b"\xff\xd9") - 11 * 3000
    # libjpeg skips bytes that are not a marker where one belongs (here a lone 0xD9, and a stuffed 0xFF00), and
    # decodes every scan after them: counted as it reads them, they are 3,000, not an end of image.
    for stray in (b"\xd9", b"\xff\x00\xd9", b"garbage\xd9"):
        crafted = data[:first_scan_added] + b"\xff\xfe\x00\x02" + stray + data[first_scan_added:]
        with pytest.raises(ImageDecodeError) as refused:
            preprocessing.read_header(crafted, 25_000_000)
        assert refused.value.reason == "too_many_scans", stray


def test_scans_are_bounded_by_the_passes_they_make_over_the_pixels() -> None:
    from tests.hostile import jpeg_of_scans

    # 99 scans of 5000x5000 cost a second of CPU each image; 60 scans of 64x64 are nothing.
    assert preprocessing.read_header(jpeg_of_scans(50, 64, 64), 25_000_000).width == 64
    with pytest.raises(ImageDecodeError) as refused:
        preprocessing.read_header(jpeg_of_scans(50, 5000, 5000), 25_000_000)
    assert refused.value.reason == "too_many_scans" and "passes" in refused.value.message


def _jpeg_with_segments(marker: bytes, payload: bytes, count: int) -> bytes:
    data = cv2.imencode(".jpg", make_smear(seed=3).rgb)[1].tobytes()
    segment = marker + (len(payload) + 2).to_bytes(2, "big") + payload
    return data[:2] + segment * count + data[2:]


@pytest.mark.parametrize(("marker", "payload"), [(b"\xff\xe1", b"Exif\x00\x00" + bytes(10)), (b"\xff\xe3", b""),
                                                 (b"\xff\xfe", b"comment")])
def test_a_flood_of_jpeg_metadata_is_refused_before_pillow_parses_it(marker: bytes, payload: bytes) -> None:
    # Pillow joins repeated Exif segments, at a cost that grows with their square: 4 MB took 13 s.
    exif = payload.startswith(b"Exif")
    fine = _jpeg_with_segments(marker, payload, 1 if exif else preprocessing.MAX_METADATA_SEGMENTS - 2)
    assert preprocessing.decode(fine).rgb.shape == (240, 320, 3)
    with pytest.raises(ImageDecodeError) as refused:
        preprocessing.read_header(_jpeg_with_segments(marker, payload, 20_000), 25_000_000)
    assert refused.value.reason == "too_much_metadata"


def test_what_real_files_carry_is_taken() -> None:
    # A phone's extended XMP (a depth map) spans about 70 APP1 segments; a JPEG has one Exif segment.
    xmp = _jpeg_with_segments(b"\xff\xe1", b"http://ns.adobe.com/xmp/extension/\x00" + bytes(100), 70)
    assert preprocessing.read_header(xmp, 25_000_000).width == 320
    with pytest.raises(ImageDecodeError) as refused:  # Pillow joins Exif segments: 4 MB of them took 13 s
        preprocessing.read_header(_jpeg_with_segments(b"\xff\xe1", b"Exif\x00\x00" + bytes(10), 5), 25_000_000)
    assert refused.value.reason == "too_much_metadata"
    # Pillow writes text it cannot encode in Latin-1 as iTXt, uncompressed: not counted as compressed.
    text = b"Title\x00\x00\x00\x00\x00" + "プレパラート".encode()
    assert preprocessing.read_header(_png_with_chunks(b"iTXt", text, 8), 25_000_000).width == 320


def test_compressed_chunks_after_the_pixels_count_too() -> None:
    # libpng inflates them as it reads the file: 40 after the pixels took a second.
    text = b"Comment\x00\x00" + zlib.compress(bytes(1 << 20), 9)
    with pytest.raises(ImageDecodeError) as refused:
        preprocessing.read_header(_png_with_chunks(b"zTXt", text, 5, after_pixels=True), 25_000_000)
    assert refused.value.reason == "too_much_metadata"


def _png_with_chunks(kind: bytes, payload: bytes, count: int, after_pixels: bool = False) -> bytes:
    data = cv2.imencode(".png", make_smear(seed=3).rgb)[1].tobytes()
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    at = len(data) - 12 if after_pixels else 8 + 25  # before IEND, or after IHDR
    return data[:at] + chunk * count + data[at:]


def test_a_flood_of_png_chunks_before_the_pixels_is_refused() -> None:
    text = b"Comment\x00hello"
    assert preprocessing.decode(_png_with_chunks(b"tEXt", text, 10)).rgb.shape == (240, 320, 3)
    with pytest.raises(ImageDecodeError) as refused:
        preprocessing.read_header(_png_with_chunks(b"tEXt", text, 5_000), 25_000_000)
    assert refused.value.reason == "too_much_metadata"
    # A few hundred bytes that Pillow inflates to 1 MiB each: 21 in a 32 KiB upload took 86 ms.
    profile = b"icc\x00\x00" + zlib.compress(bytes(1 << 20), 9)
    assert preprocessing.read_header(_png_with_chunks(b"iCCP", profile, 1), 25_000_000).width == 320
    with pytest.raises(ImageDecodeError) as refused:
        preprocessing.read_header(_png_with_chunks(b"iCCP", profile, 21), 25_000_000)
    assert refused.value.reason == "too_much_metadata" and "compressed" in refused.value.message


def test_lossless_jpegs_and_animated_pngs_are_not_taken() -> None:
    # libjpeg decodes a lossless JPEG only at full size, whatever reduction is asked: a 59-byte 5000x5000 one
    # grew a worker by 190 MB. OpenCV holds two frames of an animated PNG: twice the budgeted bytes.
    baseline = cv2.imencode(".jpg", make_smear(seed=3).rgb)[1].tobytes()
    animated = _png_with_chunks(b"acTL", struct.pack(">II", 1, 0), 1)
    for data in (baseline.replace(b"\xff\xc0", b"\xff\xc3", 1), animated):
        with pytest.raises(ImageDecodeError) as refused:
            preprocessing.read_header(data, 25_000_000)
        assert refused.value.reason == "unsupported_format", refused.value.message


def test_scans_are_counted_by_segments_up_to_the_end_of_the_image() -> None:
    image = make_smear(seed=3).rgb
    baseline, progressive, restarts = (cv2.imencode(".jpg", image, flags)[1].tobytes() for flags in
                                       ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], [cv2.IMWRITE_JPEG_RST_INTERVAL, 1]))
    assert [preprocessing.jpeg_layout(data, 101).scans for data in (baseline, progressive, restarts)] == [1, 10, 1]
    # What follows the image (a phone's motion photo appends a video) holds 0xFFDA by chance, ~1 per 64 KB.
    trailing = baseline + np.random.default_rng(0).integers(0, 256, 8_000_000, dtype=np.uint8).tobytes()
    assert trailing.count(b"\xff\xda") > 100 and preprocessing.jpeg_layout(trailing, 101).scans == 1
    assert preprocessing.decode(trailing).rgb.shape == image.shape


def test_a_png_side_libpng_cannot_read_is_unsupported_not_corrupt() -> None:
    from tests.hostile import png_by_hand  # libpng writes no such side either

    assert preprocessing.decode(png_by_hand(1_000_000, 2)).rgb.shape == (2, 1_000_000, 3)
    for height, width in ((1, 1_000_001), (1_000_001, 1)):
        with pytest.raises(ImageDecodeError) as refused:
            preprocessing.decode(png_by_hand(width, height))
        assert refused.value.reason == "unsupported_format", refused.value.message


@pytest.mark.parametrize("depth", [8, 16])
@pytest.mark.parametrize(("colour", "transparency"), [(0, None), (0, b"\x00\x00"), (2, None), (2, bytes(6)),
                                                      (3, None), (3, b"\x00"), (4, None), (6, None)])
def test_a_png_is_budgeted_at_the_bytes_opencv_decodes_it_to(depth: int, colour: int, transparency: bytes | None) -> None:
    from tests.hostile import png_by_hand

    if colour == 3 and depth == 16:
        pytest.skip("a palette PNG has at most 8 bits a sample")
    data = png_by_hand(4, 4, depth, colour, transparency)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded is not None
    decoded_bytes = decoded.dtype.itemsize * (decoded.shape[2] if decoded.ndim == 3 else 1)
    # Grey and alpha, and RGB with a transparent colour, decode to four channels: counted as two and three,
    # a 16-bit one got past the limit at twice the memory it allows.
    assert preprocessing._png_pixel_bytes(data, preprocessing.png_layout(data)) >= decoded_bytes


def test_a_16_bit_grey_and_alpha_png_is_held_to_the_bytes_of_an_8_bit_rgba_one() -> None:
    from tests.hostile import png_by_hand

    with pytest.raises(ImageDecodeError) as refused:
        preprocessing.read_header(png_by_hand(5000, 5000, 16, 4), 25_000_000)
    assert refused.value.reason == "too_many_pixels"


def test_grayscale_rgba_and_16_bit_png_are_converted() -> None:
    smear = make_smear(seed=11)
    bgr = cv2.cvtColor(smear.rgb, cv2.COLOR_RGB2BGR)
    gray = preprocessing.decode_image(cv2.imencode(".png", cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))[1].tobytes())
    assert gray.shape == (240, 320, 3) and np.array_equal(gray[..., 0], gray[..., 2])
    rgba = np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0  # transparent corner composites onto white
    out = preprocessing.decode_image(cv2.imencode(".png", rgba)[1].tobytes())
    assert np.array_equal(out[20:, 20:], smear.rgb[20:, 20:]) and (out[:10, :10] == 255).all()
    deep = preprocessing.decode_image(cv2.imencode(".png", bgr.astype(np.uint16) * 257)[1].tobytes())
    assert deep.dtype == np.uint8 and np.array_equal(deep, smear.rgb)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, this is text and not an image\n" * 10, "not_an_image"),
        (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n" * 20, "not_an_image"),
        (png_bytes(0, 48), "zero_size"),
        (png_bytes(100_000, 100_000, rows=2), "too_many_pixels"),
        (png_bytes(7000, 7000, rows=2), "too_many_pixels"),
    ],
)
def test_bad_bytes_raise_the_typed_error(data: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError) as caught:
        preprocessing.decode_image(data)
    assert caught.value.reason == reason
    assert "send" in caught.value.message  # every message says what to do


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_truncated_files_raise_the_typed_error(ext: str) -> None:
    data = encode(make_smear(seed=12).rgb, ext)
    with pytest.raises(ImageDecodeError) as caught:
        preprocessing.decode_image(data[: len(data) // 2])
    assert caught.value.reason == "corrupt"


def test_unsupported_format_is_named() -> None:
    gif = cv2.imencode(".bmp", make_smear(seed=13).rgb)[1].tobytes()
    with pytest.raises(ImageDecodeError) as caught:
        preprocessing.decode_image(gif)
    assert caught.value.reason == "unsupported_format" and "BMP" in caught.value.message


def test_pixel_limit_is_a_parameter() -> None:
    data = encode(make_smear(seed=14).rgb)
    with pytest.raises(ImageDecodeError) as caught:
        preprocessing.decode_image(data, max_pixels=320 * 240 - 1)
    assert caught.value.reason == "too_many_pixels" and "320x240" in caught.value.message


def test_params_round_trip_and_reject_unknown_keys() -> None:
    assert PreprocessingParams.from_dict(PARAMS.to_dict()) == PARAMS
    with pytest.raises(ValueError, match="unknown preprocessing parameters"):
        PreprocessingParams.from_dict({**PARAMS.to_dict(), "hue": 3})


def test_every_cell_gets_its_own_crop_and_the_first_is_crop_mode_s_input() -> None:
    smear = make_smear(640, 480, wbcs=((120, 110, 24), (480, 330, 36)), n_rbc=40, seed=15)
    out = preprocessing.preprocess(smear.rgb, "crop", (64, 64), PARAMS)
    crops = preprocessing.cell_crops(smear.rgb, out.wbc, (64, 64), PARAMS)
    assert len(crops) == 2
    assert crops[0].window == out.window and np.array_equal(crops[0].model_image, out.model_image)
    assert crops[0].box.x == pytest.approx(480 - 36, abs=2) and crops[1].box.x == pytest.approx(120 - 24, abs=2)
    for crop in crops:
        w, b = crop.window, crop.box
        assert w.x <= b.x and w.y <= b.y and b.x + b.width <= w.x + w.width and b.y + b.height <= w.y + w.height
        centre = crop.model_image[28:36, 28:36].reshape(-1, 3).mean(axis=0)
        assert centre[2] > centre[1] + 60  # the purple cell sits in the middle of its own crop


def test_no_cell_no_crops() -> None:
    smear = make_smear(wbcs=(), seed=16)
    out = preprocessing.preprocess(smear.rgb, "crop", (64, 64), PARAMS)
    assert preprocessing.cell_crops(smear.rgb, out.wbc, (64, 64), PARAMS) == []


# Large images: reduced, never decoded whole where the format allows ---------------------------------

@pytest.mark.parametrize(("width", "height", "limit", "factor"), [
    (320, 240, 4_000_000, 1), (2000, 2000, 4_000_000, 1), (2001, 2000, 4_000_000, 2), (5000, 5000, 4_000_000, 4),
    (20000, 20000, 4_000_000, 8), (640, 480, None, 1),
])
def test_the_reduction_is_the_smallest_power_of_two_within_the_working_pixels(width: int, height: int,
                                                                               limit: int | None, factor: int) -> None:
    assert preprocessing.reduction_for(width, height, limit) == factor


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_a_large_image_is_decoded_reduced_with_the_same_geometry_in_both_formats(ext: str) -> None:
    smear = make_smear(width=1280, height=960, wbcs=((640, 480, 120),), seed=21)
    decoded = preprocessing.decode(encode(smear.rgb, ext), max_working_pixels=400_000)
    assert decoded.reduction == 2 and (decoded.width, decoded.height) == (1280, 960)
    assert decoded.rgb.shape == (480, 640, 3)
    reference = cv2.resize(smear.rgb, (640, 480), interpolation=cv2.INTER_AREA)
    assert np.abs(decoded.rgb.astype(int) - reference.astype(int)).mean() < 4


def test_an_image_within_the_working_pixels_decodes_as_before() -> None:
    data = encode(make_smear(seed=22).rgb, ".jpg")
    assert np.array_equal(preprocessing.decode(data, max_working_pixels=4_000_000).rgb,
                          preprocessing.decode_image(data))


def test_mpo_multi_picture_jpegs_are_accepted_as_jpeg() -> None:
    import io

    from PIL import Image

    first, second = (Image.fromarray(make_smear(seed=seed).rgb) for seed in (23, 24))
    buffer = io.BytesIO()
    first.save(buffer, "MPO", save_all=True, append_images=[second])
    data = buffer.getvalue()
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert preprocessing.read_header(data, 10**7) == ("JPEG", 320, 240)
    decoded = preprocessing.decode_image(data)
    assert decoded.shape == (240, 320, 3)
    assert np.abs(decoded.astype(int) - np.asarray(first).astype(int)).mean() < 4  # the first picture


def test_damaged_png_headers_are_corrupt() -> None:
    from tests.hostile import png_with_bad_crc, png_with_text_chunk

    for data in (png_with_bad_crc(), png_with_text_chunk(2_000_000)):
        with pytest.raises(ImageDecodeError) as caught:
            preprocessing.read_header(data, 10**7)
        assert caught.value.reason == "corrupt"


def test_a_platelet_clump_beside_a_white_cell_is_not_a_second_white_cell() -> None:
    # Radius 14: 615 px, over min_cell_area (400) but under a white cell's size; radius 22: 1,520 px.
    clump = make_smear(wbcs=((200, 120, 34), (60, 60, 14)), seed=5)
    found = preprocessing.locate_wbc(preprocessing.stain_mask(clump.rgb, PARAMS), PARAMS)
    assert found.found and len(found.cells) == 1
    two = make_smear(wbcs=((200, 120, 34), (60, 60, 22)), seed=5)
    found = preprocessing.locate_wbc(preprocessing.stain_mask(two.rgb, PARAMS), PARAMS)
    assert len(found.cells) == 2


@pytest.mark.parametrize("size", [3, 5, 9, 15])
def test_the_row_by_row_closing_is_opencvs_bit_for_bit(size: int) -> None:
    rng = np.random.default_rng(size)
    for _ in range(300):
        height, width = (int(v) for v in rng.integers(1, 48, 2))  # shorter and narrower than the kernel too
        mask = ((rng.random((height, width)) < rng.random()) * 255).astype(np.uint8)
        expected = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
        assert np.array_equal(preprocessing.close_ellipse(mask, size), expected), (height, width)


def _random_masks(seed: int, count: int, most: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(count):
        height, width = (int(v) for v in rng.integers(1, most, 2))
        noise = rng.random((height, width)) < rng.random() * 0.6
        # Blobs as well as noise: large components, the white cells' size, next to specks.
        blobs = cv2.GaussianBlur(rng.random((height, width)), (0, 0), 3) > 0.52
        masks.append(((noise | blobs) * 255).astype(np.uint8))
    return masks


@pytest.mark.parametrize("most", [64, 400, 800])  # 800: large enough for 32-bit labels
def test_component_labels_and_areas_are_opencvs(most: int) -> None:
    for mask in _random_masks(most, 30 if most < 800 else 4, most):
        count, labels, areas, with_labels = preprocessing._components(mask)
        expected_count, expected_labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8,
                                                                                   ltype=cv2.CV_32S)
        assert count == expected_count
        assert np.array_equal(labels, expected_labels)
        assert np.array_equal(areas, stats[:, cv2.CC_STAT_AREA])
        few = np.arange(1, min(count, preprocessing.BOXES_ONE_BY_ONE + 1))  # one region at a time
        many = np.arange(1, count)[::-1]  # past BOXES_ONE_BY_ONE: from OpenCV's statistics, in the order asked
        if labels.dtype == np.uint16:
            assert with_labels is None
        else:
            assert with_labels is not None and np.array_equal(with_labels, stats)
        for chosen in (few, many):
            assert preprocessing._boxes(mask, labels, chosen) == [tuple(stats[label, :4]) for label in chosen]
            assert preprocessing._boxes(mask, labels, chosen, stats) == [tuple(stats[label, :4]) for label in chosen]


def test_many_large_regions_cost_one_pass_not_one_per_region(monkeypatch: pytest.MonkeyPatch) -> None:
    # A crafted image: a grid of stained squares each above min_cell_area, every one a region to box.
    mask = np.zeros((1000, 1000), np.uint8)
    for y in range(0, 1000, 40):
        for x in range(0, 1000, 40):
            mask[y:y + 24, x:x + 24] = 255
    params = PreprocessingParams(locate_close_kernel=3)
    found = preprocessing.locate_wbc(mask, params)
    assert found.found and found.box is not None and (found.box.width, found.box.height) == (24, 24)
    scans = []
    in_range = cv2.inRange

    def counted(src: np.ndarray, low: int, high: int) -> np.ndarray:
        scans.append(low)
        return np.asarray(in_range(src, low, high))

    monkeypatch.setattr(cv2, "inRange", counted)
    assert preprocessing.locate_wbc(mask, params) == found
    assert not scans  # 625 regions: their boxes come from one pass of OpenCV's statistics, not 625 scans
