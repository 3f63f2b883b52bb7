"""The ``bloodcells`` command line: help, dispatch, option defaults from TrainConfig, the cache command,
and a terminal left clean by the training commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app.cli import build_parser, main
from tests.conftest import REPO
from training import cache
from training import cli as training_cli
from training.config import INPUT_SIZES, MODELS, TrainConfig

COMMANDS = ("train", "experiment", "export", "evaluate", "card", "cache", "serve", "classify")
TRAINING_LIBRARIES = ("tensorflow", "keras", "tf2onnx")


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("argv", [["--help"], *([command, "--help"] for command in COMMANDS)])
def test_help_of_the_command_and_every_subcommand(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: bloodcells")
    if argv == ["--help"]:
        assert all(command in out for command in COMMANDS)


def test_help_serve_and_classify_import_no_training_library() -> None:
    """The service's commands and every --help build the whole parser: none may load TensorFlow."""
    script = f"""
import contextlib, io, json, sys
from app.cli import build_parser, main
parser = build_parser()
parser.parse_args(["serve", "--port", "9"])
parser.parse_args(["classify", "a.jpeg"])
for command in {list(COMMANDS)!r}:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main([command, "--help"])
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {TRAINING_LIBRARIES!r})))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_train_options_default_to_train_config() -> None:
    """Nothing is restated in the parser: no option given, TrainConfig's own defaults."""
    assert training_cli.train_configs(parse("train")) == [TrainConfig()]
    assert training_cli.DEFAULTS == TrainConfig()


def test_given_options_set_their_fields_and_only_those() -> None:
    args = parse("train", "--model", "sepnet", "--epochs", "3", "--lr", "0.01", "--schedule", "cosine",
                 "--augment", "flips+jitter", "--threads", "1", "--time-budget", "60",
                 "--param", "crop_min_side=128", "--param", "crop_scale=2")
    (config,) = training_cli.train_configs(args)
    expected = replace(TrainConfig(), model="sepnet", epochs=3, learning_rate=0.01, schedule="cosine",
                       augment="flips+jitter", threads=1, time_budget_s=60.0,
                       params=replace(TrainConfig().params, crop_min_side=128, crop_scale=2.0))
    assert config == expected


def test_input_size_follows_the_mode_unless_given() -> None:
    configs = training_cli.train_configs(parse("train", "--mode", "all"))
    assert {c.mode: c.input_size for c in configs} == {"original": (60, 80), "color": (60, 80), "crop": (64, 64)}
    assert INPUT_SIZES["crop"][0] == INPUT_SIZES["crop"][1], "the crop window is square"
    (crop,) = training_cli.train_configs(parse("train", "--mode", "crop", "--input-size", "80x80"))
    assert crop.input_size == (80, 80)
    assert TrainConfig(mode="crop").input_size == (64, 64)


def test_the_experiment_keeps_one_input_size_for_every_mode() -> None:
    """Table 1 is one protocol: the paper's 60x80 for crop too (so finished runs still match and resume)."""
    args = parse("experiment", "--mode", "all")
    assert args.variants == list(training_cli.paper.VARIANTS) and args.modes == ("original", "color", "crop")
    base = training_cli.experiment_config(args)
    assert replace(base, mode="crop").input_size == (60, 80)
    assert training_cli.experiment_config(parse("experiment", "--input-size", "64x64")).input_size == (64, 64)


@pytest.mark.parametrize("argv", [["train", "--param", "nope=1"], ["train", "--param", "crop_min_side=big"],
                                  ["train", "--model", "resnet"], ["train", "--input-size", "20x20"],
                                  ["train", "--recipe", "nope"]])
def test_bad_options_are_refused_by_the_parser(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def fill_cache(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    entries = [folder / "TRAIN-crop-0123456789abcdef.npz", folder / "TEST-color-fedcba9876543210.tmp.npz"]
    for index, path in enumerate(entries):
        path.write_bytes(b"\0" * (2_000_000 * (index + 1)))
    return entries


def test_cache_command_shows_the_size_and_clears_only_its_files(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "cache"
    entries = fill_cache(folder)
    foreign = folder / "notes.npz"
    foreign.write_bytes(b"mine")
    assert main(["cache", "--cache-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"decoded-image cache {folder}: 6 MB in 2 files" in out and entries[0].name in out
    assert "notes.npz" not in out
    assert main(["cache", "--cache-dir", str(folder), "--clear"]) == 0
    assert "removed 2 files (6 MB)" in capsys.readouterr().out
    assert not any(path.exists() for path in entries) and foreign.exists()


def test_cache_location_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOODCELLS_CACHE_DIR", str(tmp_path / "elsewhere"))
    fill_cache(tmp_path / "elsewhere")
    assert cache.resolve(None) == tmp_path / "elsewhere" and cache.size_bytes() == 6_000_000


def test_the_cache_entries_data_writes_are_the_ones_cache_counts(synthetic_dataset: Path, tmp_path: Path) -> None:
    from training import data, edges

    data.load_split(synthetic_dataset, "TEST", ("crop",), (64, 64), cache_dir=tmp_path, progress=False)
    edges.load_split(str(synthetic_dataset), "TRAIN", (64, 64), data.PreprocessingParams(), cache_dir=tmp_path,
                     progress=False)
    written = sorted(tmp_path.glob("*.npz"))
    assert len(written) == 2 and cache.entries(tmp_path) == written


def test_evaluate_tells_its_stages_and_the_cache_on_stderr(synthetic_dataset: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """--json keeps stdout pure JSON; what the run did and the cache it filled are told on stderr."""
    code = main(["evaluate", "--model", str(REPO / "models" / "color.onnx"), "--data-dir", str(synthetic_dataset),
                 "--cache-dir", str(tmp_path / "cache"), "--json"])
    captured = capsys.readouterr()
    assert code == 0 and 0.0 <= json.loads(captured.out)["accuracy"] <= 1.0
    # The preprocessed TEST split and the source photos found in it (training.photos).
    assert f"decoded-image cache {tmp_path / 'cache'}: " in captured.err and "2 files " in captured.err
    assert {path.name.split("-")[0] for path in cache.entries(tmp_path / "cache")} == {"TEST", "photos"}
    assert "evaluate: " not in captured.err  # --json: no progress
    assert main(["evaluate", "--model", str(REPO / "models" / "color.onnx"), "--data-dir", str(synthetic_dataset),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    captured = capsys.readouterr()
    assert [line for line in captured.err.splitlines() if line.startswith("evaluate: ")] == [
        "evaluate: color.onnx on TEST: reading the images (preprocessed once, then cached)",
        "evaluate: classifying 24 images"]
    assert captured.out.startswith("color (color) on TEST: accuracy")
    assert main(["evaluate", "--model", str(REPO / "models" / "color.onnx"), "--data-dir", str(synthetic_dataset),
                 "--fullfield"]) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("evaluate: ")] == [
        "evaluate: color.onnx on TEST full-field frames: decoding background patches",
        "evaluate: classifying 24 frames"]


def test_a_missing_data_set_is_one_line_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["evaluate", "--model", str(REPO / "models" / "color.onnx"), "--data-dir", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines()[-1].startswith("bloodcells evaluate: error: data set folder ")
    assert "Traceback" not in err


def test_the_cli_offers_exactly_the_models_the_zoo_builds() -> None:
    pytest.importorskip("tensorflow", reason="the train extra is not installed: pip install -e '.[train]'")
    from training import zoo

    assert tuple(zoo.VARIANTS) == MODELS


ONEDNN = b"I0000 00:00:1795694418.578309    4371 port.cc:153] oneDNN custom operations are on.\n"
THREADPOOL = (b"E0000 00:00:1795694420.916333    4371 node_def_util.cc:682] NodeDef mentions attribute "
              b"use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset>\n")
REAL_ERROR = b"E1126 12:00:01.123456    4371 direct_session.cc:12] Out of memory allocating 1.2 GiB\n"


def test_native_log_filter_drops_tensorflows_notices_and_keeps_errors(capfd: pytest.CaptureFixture) -> None:
    from training.console import native_log_filter

    with native_log_filter():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, ONEDNN)
        os.write(2, b"W0000 00:00:1795694418.6 4371 cpu_feature_guard.cc:227] rebuild TensorFlow\n")
        os.write(2, b"\rtraining:  50%|#####     | 1/2")  # a progress bar, then a record on its line
        os.write(2, THREADPOOL + REAL_ERROR)
        os.write(2, b"Traceback (most recent call last):\n")
    assert capfd.readouterr().err == "\rtraining:  50%|#####     | 1/2" + REAL_ERROR.decode() + \
        "Traceback (most recent call last):\n"
    os.write(2, ONEDNN)  # after the block, file descriptor 2 is the terminal again
    assert capfd.readouterr().err == ONEDNN.decode()


# What TensorFlow, absl and Keras print when left alone: C++ log lines (I0000/W0000 00:00:...), the oneDNN and
# CPU-feature notices, absl's pre-initialisation warning, Python warnings.
NOISE = ("oneDNN", "cpu_feature_guard", "absl::InitializeLog", "UserWarning", "DeprecationWarning",
         "WARNING:tensorflow", "WARNING:absl", "tf2onnx.tfonnx", "E0000 ", "W0000 ", "I0000 ")


@pytest.mark.training
@pytest.mark.slow
def test_train_and_export_leave_the_terminal_clean(synthetic_dataset: Path, tmp_path: Path) -> None:
    """The commands as a user runs them, in a fresh process: stage lines and results, no library noise."""
    pytest.importorskip("tensorflow", reason="the train extra is not installed: pip install -e '.[train]'")
    env = {**os.environ, "BLOODCELLS_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env.pop("PYTHONWARNINGS", None)

    def bloodcells(*argv: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "app.cli", *argv], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done

    trained = bloodcells("train", "--model", "dropout0.3", "--mode", "color", "--epochs", "1", "--val-fraction",
                         "0.34", "--data-dir", str(synthetic_dataset), "--out", str(tmp_path / "runs"), "--quiet")
    assert "dropout0.3 / color: 26,596 parameters, 1 epochs" in trained.stdout
    assert "decoded-image cache" in trained.stderr
    exported = bloodcells("export", "--run", str(tmp_path / "runs" / "dropout0.3" / "color"), "--name", "color",
                          "--out", str(tmp_path / "models"), "--data-dir", str(synthetic_dataset))
    assert "export: converting to ONNX" in exported.stderr and "export: measuring color.onnx on TEST" in exported.stderr
    assert (tmp_path / "models" / "color.onnx").is_file()
    for done in (trained, exported):
        noise = [line for line in done.stderr.splitlines() if any(mark in line for mark in NOISE)]
        assert not noise, noise
    assert np.isfinite(json.loads((tmp_path / "models" / "color.json").read_text())["test"]["loss"])


def test_evaluate_record_writes_the_figures_into_the_models_metadata_and_refuses_a_subset(
        synthetic_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for suffix in (".onnx", ".json"):
        shutil.copyfile(REPO / "models" / f"color{suffix}", tmp_path / f"color{suffix}")
    model = str(tmp_path / "color.onnx")
    common = ["--data-dir", str(synthetic_dataset), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(["evaluate", "--model", model, "--record", "--limit-per-class", "2", *common]) == 2
    assert "--record" in capsys.readouterr().err
    assert main(["evaluate", "--model", model, "--record", "--json", *common]) == 0
    measured = json.loads(capsys.readouterr().out)
    recorded = json.loads((tmp_path / "color.json").read_text())["test"]
    assert recorded["accuracy"] == measured["accuracy"] and recorded["images"] == 24
    assert recorded["ci_method"].endswith("photos found by appearance") and "worst_photos" in recorded
