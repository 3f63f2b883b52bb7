"""Recipes: every shipped model has one, it holds exactly the configuration recorded in the model's metadata,
and ``bloodcells train --recipe NAME`` trains with it, options given on the command line overriding it."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import pytest

from app.cli import build_parser
from tests.conftest import MODELS_DIR
from training import config as training_config
from training.cli import train_configs
from training.config import INPUT_SIZES, RecipeError, TrainConfig, configure, read_recipe, recipe_names

SHIPPED = sorted(path.stem for path in MODELS_DIR.glob("*.onnx"))


def recorded(name: str) -> dict:
    return json.loads((MODELS_DIR / f"{name}.json").read_text())["training"]["config"]


def test_every_shipped_model_has_a_recipe_and_every_recipe_a_model() -> None:
    assert {"color", "crop", "original", "dropout0.3-original", "dropout0.3-color"} <= set(SHIPPED)
    assert recipe_names() == tuple(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_recipe_is_the_configuration_recorded_in_the_metadata_field_by_field(name: str) -> None:
    made = configure(read_recipe(name)).to_dict()
    want = recorded(name)
    assert set(made) == set(want), "TrainConfig's fields and the recorded ones differ: update the recipes"
    for field in (f.name for f in fields(TrainConfig)):
        assert made[field] == want[field], f"{name}: {field} is {made[field]!r} in the recipe, " \
                                           f"{want[field]!r} in models/{name}.json"


@pytest.mark.parametrize("name", SHIPPED)
def test_train_with_a_recipe_trains_the_recorded_configuration(name: str) -> None:
    (config,) = train_configs(build_parser().parse_args(["train", "--recipe", name]))
    assert config.to_dict() == recorded(name)


def test_options_given_with_a_recipe_override_its_values_and_only_those() -> None:
    args = build_parser().parse_args(["train", "--recipe", "crop", "--epochs", "1", "--limit-per-class", "16",
                                      "--threads", "0", "--param", "crop_min_side=128"])
    (config,) = train_configs(args)
    recipe = configure(read_recipe("crop"))
    assert config == replace(recipe, epochs=1, limit_per_class=16, threads=0,
                             params=replace(recipe.params, crop_min_side=128))
    assert recipe.epochs == 40 and recipe.threads == 1  # so the overrides above did change something


def test_mode_given_with_a_recipe_keeps_the_recipes_other_values() -> None:
    configs = train_configs(build_parser().parse_args(["train", "--recipe", "crop", "--mode", "both"]))
    assert [c.mode for c in configs] == ["original", "color"]
    assert {c.input_size for c in configs} == {(64, 64)} and {c.model for c in configs} == {"sepnet"}


def test_the_crop_default_input_is_the_crop_recipes() -> None:
    assert INPUT_SIZES["crop"] == tuple(read_recipe("crop")["input_size"])


def test_a_recipe_with_an_unknown_field_or_value_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training_config, "RECIPES_DIR", tmp_path)
    (tmp_path / "typo.toml").write_text('model = "sepnet"\nepoch = 40\n')
    (tmp_path / "badmode.toml").write_text('model = "sepnet"\nmode = "gray"\n')
    with pytest.raises(RecipeError, match="epoch"):
        read_recipe("typo")
    with pytest.raises(RecipeError, match="badmode.toml: unknown mode 'gray'"):
        read_recipe("badmode")
    with pytest.raises(RecipeError, match="no recipe 'missing'.*badmode, typo"):
        read_recipe("missing")


def test_a_configuration_recorded_before_photos_existed_split_by_names_and_a_new_one_by_appearance() -> None:
    recorded = {key: value for key, value in configure(read_recipe("crop")).to_dict().items() if key != "photos"}
    assert TrainConfig.recorded(recorded).photos == "names"
    assert TrainConfig().photos == "appearance" and configure(None).photos == "appearance"
    with pytest.raises(ValueError, match="unknown photos 'files'"):
        TrainConfig(photos="files")
