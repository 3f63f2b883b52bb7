"""benchmarks.stages: each step timed in a fresh process, for this tree and for a git revision's code."""

from __future__ import annotations

from pathlib import Path

from benchmarks.stages import STEPS, compare, image_bytes, run_round


def test_both_trees_get_every_step_on_the_same_image() -> None:
    result = compare(rounds=1, calls=3, against="HEAD")
    assert set(result["median_ms"]) == {"this tree", "HEAD"}
    for figures in result["median_ms"].values():
        assert list(figures) == list(STEPS) and all(ms > 0 for ms in figures.values())
        assert figures["header"] < figures["classify()"]  # a part of the whole
    assert result["image"]


def test_a_round_imports_app_from_its_tree_alone(tmp_path: Path) -> None:
    # A tree whose app says so: the round must fail on it, not fall back to this repository's app.
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("raise ImportError('the tree under test was imported')\n")
    image = tmp_path / "image"
    image.write_bytes(b"not used")
    try:
        run_round(tmp_path, image, 1)
    except SystemExit as exc:
        assert "the tree under test was imported" in str(exc)
    else:
        raise AssertionError("the round ran on another tree's app")


def test_the_crafted_image_is_a_large_png_of_many_cells() -> None:
    data, source = image_bytes("blobs")
    assert data.startswith(b"\x89PNG") and "1089 stained blobs" in source
