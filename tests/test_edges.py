"""Cells cut by the frame's edge (training/edges.py), on synthetic smears whose cell is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app import preprocessing
from app.preprocessing import Mode, PixelBox, PreprocessingParams
from tests.synthetic import make_smear
from training import data, edges
from training.config import TrainConfig

PARAMS = PreprocessingParams()


def _where_cut(rgb: np.ndarray, out: np.ndarray) -> tuple[str, int]:
    """Which side was cut away and where the new border lies, in the uncut image's pixels."""
    height, width = rgb.shape[:2]
    if out.shape[1] < width:
        assert out.shape[0] == height
        if np.array_equal(out, rgb[:, width - out.shape[1]:]):
            return "left", width - out.shape[1]
        assert np.array_equal(out, rgb[:, : out.shape[1]])
        return "right", out.shape[1]
    assert out.shape[1] == width and out.shape[0] < height
    if np.array_equal(out, rgb[height - out.shape[0]:]):
        return "top", height - out.shape[0]
    assert np.array_equal(out, rgb[: out.shape[0]])
    return "bottom", out.shape[0]


def test_the_border_crosses_the_cell_within_the_cut_range_and_leaves_a_whole_window() -> None:
    smear = make_smear(wbcs=((160, 120, 34),), seed=1)
    box = PixelBox(*smear.wbc_boxes[0])
    window = max(PARAMS.crop_min_side, PARAMS.crop_scale * max(box.width, box.height))
    sides = set()
    for seed in range(40):
        out = edges.cut_at_edge(smear.rgb, box, PARAMS, 1.0, np.random.default_rng(seed))
        side, border = _where_cut(smear.rgb, out)
        sides.add(side)
        start, extent = (box.x, box.width) if side in ("left", "right") else (box.y, box.height)
        cut = border - start if side in ("left", "top") else start + extent - border
        assert edges.EDGE_CUT[0] * extent - 1 <= cut <= edges.EDGE_CUT[1] * extent + 1, (side, cut)
        assert (out.shape[1] if side in ("left", "right") else out.shape[0]) >= window
    assert sides == {"left", "right", "top", "bottom"}


def test_no_side_is_cut_where_what_is_left_would_be_narrower_than_the_window() -> None:
    smear = make_smear(width=110, height=110, wbcs=((55, 55, 34),), n_rbc=0, seed=2)
    box = PixelBox(*smear.wbc_boxes[0])
    assert edges.cut_at_edge(smear.rgb, box, PARAMS, 1.0, np.random.default_rng(0)) is smear.rgb


def _purple(image: np.ndarray) -> np.ndarray:
    return image[..., 2].astype(int) - image[..., 1].astype(int) > 60


def test_the_cut_crop_shows_the_cell_against_a_side_of_its_window_the_plain_one_in_the_middle() -> None:
    smear = make_smear(wbcs=((160, 120, 30),), seed=3)
    plain = preprocessing.preprocess(smear.rgb, "crop", (64, 64), PARAMS).model_image
    touching = []
    for seed in range(8):
        cut = edges.edge_crop(smear.rgb, (64, 64), PARAMS, np.random.default_rng(seed))
        assert cut.shape == (64, 64, 3) and cut.dtype == np.uint8
        purple = _purple(cut)
        touching.append(purple[0].any() or purple[-1].any() or purple[:, 0].any() or purple[:, -1].any())
        assert purple.sum() < _purple(plain).sum()  # part of the cell is gone
    border = _purple(plain)
    assert not (border[0].any() or border[-1].any() or border[:, 0].any() or border[:, -1].any())
    assert all(touching)


def test_an_image_without_a_cell_gives_the_plain_crop() -> None:
    blank = np.full((240, 320, 3), 215, np.uint8)
    expected = preprocessing.preprocess(blank, "crop", (64, 64), PARAMS).model_image
    assert np.array_equal(edges.edge_crop(blank, (64, 64), PARAMS, np.random.default_rng(0)), expected)


def test_a_split_is_cut_in_load_splits_order_once_and_read_from_the_cache(synthetic_dataset: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    plain = data.load_split(str(synthetic_dataset), "TRAIN", ("crop",), (64, 64), PARAMS, cache_dir=cache,
                            progress=False)["crop"]
    first, paths = edges.load_split(str(synthetic_dataset), "TRAIN", (64, 64), PARAMS, cache_dir=cache,
                                    progress=False)
    assert first.shape == plain.images.shape and first.dtype == np.uint8 and np.array_equal(paths, plain.paths)
    assert len(list(cache.glob("TRAIN-crop-edge-*.npz"))) == 1
    # Each is its own image's cut: the cell of its class's size (training's synthetic classes differ by it).
    images_dir = data.resolve_data_dir(str(synthetic_dataset))
    for index in (0, len(first) - 1):
        rgb = preprocessing.decode_image((images_dir / paths[index]).read_bytes())
        assert np.array_equal(first[index], edges.edge_crop(rgb, (64, 64), PARAMS, edges._rng(paths[index])))
    assert not np.array_equal(first, plain.images)

    def refuse(*args: object) -> np.ndarray:
        raise AssertionError("cut again instead of read from the cache")

    monkeypatch.setattr(edges, "edge_crop", refuse)
    again, again_paths = edges.load_split(str(synthetic_dataset), "TRAIN", (64, 64), PARAMS, cache_dir=cache,
                                          progress=False)
    assert np.array_equal(again, first) and np.array_equal(again_paths, paths)


def test_a_subset_is_cut_in_the_order_of_load_splits_subset(synthetic_dataset: Path, tmp_path: Path) -> None:
    plain = data.load_split(str(synthetic_dataset), "TRAIN", ("crop",), (64, 64), PARAMS, cache_dir=tmp_path,
                            limit_per_class=2, progress=False, photos="appearance")["crop"]
    cut, paths = edges.load_split(str(synthetic_dataset), "TRAIN", (64, 64), PARAMS, cache_dir=tmp_path,
                                  limit_per_class=2, progress=False)
    assert len(cut) == 8 and np.array_equal(paths, plain.paths)
    assert not list(tmp_path.glob("*.npz"))  # a subset is never cached
    images_dir = data.resolve_data_dir(str(synthetic_dataset))
    for index, rel in enumerate(paths):
        rgb = preprocessing.decode_image((images_dir / rel).read_bytes())
        assert np.array_equal(cut[index], edges.edge_crop(rgb, (64, 64), PARAMS, edges._rng(rel)))


def test_a_wide_window_is_left_whole_by_the_cut() -> None:
    smear = make_smear(width=220, height=240, wbcs=((110, 120, 34),), seed=5)
    box = PixelBox(*smear.wbc_boxes[0])
    side = max(PARAMS.crop_min_side, PARAMS.crop_scale * box.width)
    # An input twice as wide as high: crop_window makes the window 2 x 103.5 px wide; no left or right cut
    # leaves that much of a 220 px wide image, a top or bottom one leaves its 103.5 px height.
    assert 2 * side > max(220 - box.x, box.x + box.width)
    for seed in range(20):
        out = edges.cut_at_edge(smear.rgb, box, PARAMS, 2.0, np.random.default_rng(seed))
        assert out.shape[1] == 220 and side <= out.shape[0] < 240


@pytest.mark.parametrize("mode", ["original", "color"])
def test_the_edge_augmentation_is_refused_outside_the_crop_mode(mode: Mode) -> None:
    with pytest.raises(ValueError, match="crop mode"):
        TrainConfig(model="sepnet", mode=mode, augment="flips+jitter+edge")
    assert TrainConfig(model="sepnet", mode="crop", augment="flips+jitter+edge").augment.endswith("+edge")


def _located(rgb: np.ndarray) -> PixelBox:
    box = preprocessing.locate_wbc(preprocessing.stain_mask(rgb, PARAMS), PARAMS).box
    assert box is not None
    return box


def test_a_cell_touches_the_edge_at_the_frame_or_at_a_rotated_copys_black_fill() -> None:
    inside = make_smear(wbcs=((160, 120, 30),), seed=4).rgb
    assert not edges.touches_edge(inside, _located(inside))
    at_frame = make_smear(wbcs=((20, 120, 30),), seed=4).rgb
    assert edges.touches_edge(at_frame, _located(at_frame))
    filled = inside.copy()
    filled[:, 192:] = 0  # a rotated copy's black corner against the cell's right side
    assert edges.touches_edge(filled, _located(filled))


def test_the_summary_counts_each_class_of_a_split(synthetic_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    samples, kinds = edges.where_cells_are(str(synthetic_dataset), "TEST")
    assert len(samples) == 24 and set(kinds) == {"inside"}
    figures = edges.summary(samples, kinds)
    assert figures == {name: {"images": 6, "at_edge": 0, "no_cell": 0} for name in figures} and len(figures) == 4
    assert edges.main(["--data-dir", str(synthetic_dataset)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10 and lines[0] == ("TRAIN eosinophil: 0 of 6 images (0%) have their cell at the edge; "
                                             "no cell found in 0")
    assert lines[4] == "TRAIN photos with no copy showing the cell whole (0 of 12): none"


def test_a_photo_is_listed_when_none_of_its_copies_shows_the_cell_whole() -> None:
    sources = np.array(["eosinophil/p0", "eosinophil/p0", "eosinophil/p1", "eosinophil/p1", "monocyte/p0"])
    kinds = ["at_edge", "inside", "at_edge", "no_cell", "at_edge"]
    assert edges.photos_at_edge(sources, kinds) == {"eosinophil/p1": 2, "monocyte/p0": 1}


@pytest.mark.training
@pytest.mark.slow
def test_a_cross_validation_is_measured_apart_on_cut_and_whole_cells(synthetic_dataset: Path, tmp_path: Path) -> None:
    import json

    pytest.importorskip("tensorflow", reason="the train extra is not installed: pip install -e '.[train]'")
    from training.kfold import cross_validate

    for limit, images in ((None, 24), (4, 16)):  # a subset's folds are dealt from that subset, as kfold deals them
        config = TrainConfig(model="sepnet", mode="crop", epochs=1, start_from_epoch=0, seed=2, max_restarts=0,
                             augment="flips+jitter+edge", limit_per_class=limit)
        report = cross_validate(config, str(synthetic_dataset), tmp_path / f"runs-{limit}", folds=3,
                                cache_dir=tmp_path / "cache", progress=False)
        figures = edges.held_out_by_cell(Path(report["path"]).parent, str(synthetic_dataset), tmp_path / "cache")
        # The synthetic cells lie inside their frames: every image is a whole cell, held out once.
        assert figures["at_edge"]["images"] == 0 and np.isnan(figures["at_edge"]["accuracy"])
        assert figures["whole"]["images"] == images
        written = json.loads(Path(report["path"]).read_text())
        assert sum(run["images"] for run in written["runs"]) == images
        right = sum(run["tta"]["flips"]["accuracy"] * run["images"] for run in written["runs"])
        assert figures["whole"]["accuracy"] * images == pytest.approx(right)
