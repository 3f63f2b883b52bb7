"""`bloodcells classify`: the service's answers without a server, as a table or JSON lines."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.cli import main
from app.labels import CLASSES
from app.model import load_model_dir
from app.offline import classify_files
from tests.api import best_mode, model_metadata, pipeline_probabilities


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(["classify", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_lines_match_the_pipeline(capsys: pytest.CaptureFixture, model_dir: Path,
                                       test_images: dict[str, Path]) -> None:
    paths = [str(test_images[name]) for name in CLASSES]
    model = load_model_dir(model_dir)[model_metadata(model_dir)["original"]["name"]]  # the mode's default
    code, out, _ = run(capsys, *paths, "--json", "--mode", "original", "--model-dir", str(model_dir))
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["image"] for line in lines] == paths
    for path, line in zip(paths, lines):
        expected = pipeline_probabilities(model, Path(path).read_bytes())
        got = np.array([line["probabilities"][name] for name in CLASSES])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert line["label"] == CLASSES[int(expected.argmax())] and line["mode"] == "original"


def test_table_has_one_row_per_image_and_flags_bad_files(capsys: pytest.CaptureFixture, model_dir: Path,
                                                         test_images: dict[str, Path], tmp_path: Path) -> None:
    notes = tmp_path / "notes.jpg"
    notes.write_text("not an image")
    good = test_images["lymphocyte"]
    code, out, _ = run(capsys, str(good), str(notes), str(tmp_path / "missing.png"), "--model-dir", str(model_dir))
    assert code == 1  # some files could not be classified
    header, columns, *rows = out.splitlines()
    assert "mode" in header and all(name.upper()[:10] in columns for name in CLASSES)
    assert len(rows) == 3
    label = rows[0].split()[1]
    assert rows[0].startswith(str(good)) and label in CLASSES
    assert "error: not_an_image" in rows[1] and "error: unreadable" in rows[2]


def test_default_mode_is_the_services(model_dir: Path, test_images: dict[str, Path]) -> None:
    out = io.StringIO()
    assert classify_files([test_images["neutrophil"]], model_dir=model_dir, as_json=True, out=out) == 0
    assert json.loads(out.getvalue())["mode"] == best_mode(model_dir)


def test_unloaded_mode_and_missing_models_exit_2(capsys: pytest.CaptureFixture, model_dir: Path,
                                                 tmp_path: Path) -> None:
    only_original = tmp_path / "only-original"
    only_original.mkdir()
    for suffix in (".onnx", ".json"):
        shutil.copyfile(model_dir / f"original{suffix}", only_original / f"original{suffix}")
    code, _, err = run(capsys, "any.jpg", "--mode", "crop", "--model-dir", str(only_original))
    assert code == 2 and "crop" in err and "original" in err
    code, _, err = run(capsys, "any.jpg", "--model-dir", str(tmp_path))
    assert code == 2 and "no .onnx models" in err


def test_a_model_by_name_answers_and_an_unknown_name_exits_2(capsys: pytest.CaptureFixture, model_dir: Path,
                                                              test_images: dict[str, Path], tmp_path: Path) -> None:
    image = str(test_images["eosinophil"])
    code, out, _ = run(capsys, image, "--json", "--model", "dropout0.3-original", "--model-dir", str(model_dir))
    answer = json.loads(out)
    assert code == 0 and answer["model"]["name"] == "dropout0.3-original" and answer["mode"] == "original"
    assert answer["looks_like_smear"] is True
    code, _, err = run(capsys, image, "--model", "resnet50", "--model-dir", str(model_dir))
    assert code == 2 and "resnet50" in err and "dropout0.3-color" in err


def test_a_non_smear_is_flagged_in_the_table(capsys: pytest.CaptureFixture, model_dir: Path, tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 250, np.uint8))
    code, out, _ = run(capsys, str(blank), "--model-dir", str(model_dir))
    assert code == 0 and "does not look like a stained blood smear" in out.splitlines()[2]
