"""`bloodcells classify`: the service's answers without a server, as a table or JSON lines."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
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


def test_fifos_devices_and_oversized_files_are_errors_of_their_own(capsys: pytest.CaptureFixture, model_dir: Path,
                                                                   test_images: dict[str, Path], tmp_path: Path) -> None:
    # A FIFO blocked the command before any answer; /dev/zero filled the memory; every file was held at once.
    fifo = tmp_path / "fifo.jpeg"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.jpeg"
    zero.symlink_to("/dev/zero")
    large = tmp_path / "large.jpeg"
    large.write_bytes(bytes(2048))
    good = test_images["lymphocyte"]
    env = {"BLOODCELLS_MAX_UPLOAD_BYTES": "1024"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        code, out, _ = run(capsys, str(fifo), str(zero), str(large), str(tmp_path), "--model-dir", str(model_dir),
                           "--json")
    errors = [json.loads(line)["error"]["code"] for line in out.splitlines()]
    assert code == 1 and errors == ["not_a_file", "not_a_file", "upload_too_large", "not_a_file"]
    code, out, _ = run(capsys, str(good), str(fifo), "--model-dir", str(model_dir))
    assert code == 1 and out.splitlines()[2].split()[1] in CLASSES


def test_control_characters_in_a_file_name_do_not_reach_the_terminal(capsys: pytest.CaptureFixture, model_dir: Path,
                                                                     test_images: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    named = tmp_path / "esc\x1b[31mRED\x1b]0;title\x07\nline.jpeg"
    shutil.copyfile(test_images["lymphocyte"], named)
    code, out, _ = run(capsys, str(named), "--model-dir", str(model_dir))
    assert code == 0 and "\x1b" not in out and "\x07" not in out and len(out.splitlines()) == 3
    assert "\\x1b[31mRED" in out and "\\n" in out


def test_invalid_settings_are_a_message_not_a_traceback(capsys: pytest.CaptureFixture, model_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOODCELLS_THREADS", "0")
    code, _, err = run(capsys, "any.jpg", "--model-dir", str(model_dir))
    assert code == 2 and "invalid settings" in err and "threads" in err


def test_a_reader_that_goes_away_gets_no_traceback(model_dir: Path, test_images: dict[str, Path]) -> None:
    # `bloodcells classify ... | head -0`: Python printed a BrokenPipeError traceback.
    reader, writer = os.pipe()
    os.close(reader)
    done = subprocess.run([sys.executable, "-m", "app.cli", "classify", str(test_images["monocyte"]), "--model-dir",
                           str(model_dir)], stdout=writer, stderr=subprocess.PIPE, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    os.close(writer)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr


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
