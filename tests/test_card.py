"""The model card and the README's results are what `bloodcells card` makes of the committed metadata."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import REPO
from training import card


def test_model_card_is_up_to_date_with_the_metadata() -> None:
    expected = card.render_folder(REPO / "models")
    assert (REPO / "models" / "README.md").read_text() == expected, "run `bloodcells card` and commit the result"


def test_readme_results_are_up_to_date_with_the_metadata(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text((REPO / "README.md").read_text())
    assert card.update_readme(readme, REPO / "models")
    assert readme.read_text() == (REPO / "README.md").read_text(), "run `bloodcells card` and commit the result"


def test_card_numbers_come_from_the_metadata() -> None:
    block = card.results_block(REPO / "models")
    for meta in card.load_models(REPO / "models"):
        assert f"{meta['test']['accuracy']:.3f}" in block


def test_card_links_every_shipped_model_to_its_recipe() -> None:
    text = (REPO / "models" / "README.md").read_text()
    for meta in card.load_models(REPO / "models"):
        name = meta["name"]
        link = f"[`training/recipes/{name}.toml`](../training/recipes/{name}.toml)"
        assert link in text and (REPO / "models" / f"../training/recipes/{name}.toml").is_file()
        config = meta["training"]["config"]
        run = f"runs/{config['model']}/{config['mode']}"
        kind = meta["export"].get("test_time_augmentation", "none")
        views = "" if kind == "none" else f" --tta {kind}"
        if meta["export"].get("temperature", 1.0) == 1.0:
            commands = f"`bloodcells train --recipe {name}`, then `bloodcells export --run {run} --name {name}{views}`"
        else:  # the temperature comes from the recipe's own folds
            commands = (f"`bloodcells train --recipe {name}` and `bloodcells kfold --recipe {name}`, then `bloodcells "
                        f"export --run {run} --name {name}{views} --calibration runs/kfold/{run[5:]}/kfold.json`")
        assert commands in text


def test_card_links_no_recipe_to_a_model_the_recipe_did_not_make() -> None:
    (meta,) = [m for m in card.load_models(REPO / "models") if m["name"] == "crop"]
    assert "Recipe:" in card._training(meta)
    meta["training"]["config"] = {**meta["training"]["config"], "epochs": 39}
    assert "Recipe:" not in card._training(meta)
