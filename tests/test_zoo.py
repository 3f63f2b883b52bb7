"""``training.zoo``: every variant of Table 1 builds, within the parameter budget, and takes a training
step (Keras refuses some model names only then: 'ridge+dropout0.1' failed an 80-epoch experiment)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the train extra is not installed: pip install -e '.[train]'")

from training import zoo  # noqa: E402

pytestmark = pytest.mark.training


@pytest.mark.parametrize("name", list(zoo.VARIANTS))
def test_every_variant_builds_and_trains_a_step(name: str) -> None:
    shape = (32, 32, 3) if name == "vgg16" else (60, 80, 3)
    model = zoo.build(name, shape)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (4, *shape)).astype(np.float32)
    history = model.fit(images, np.arange(4) % zoo.NUM_CLASSES, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert model.output_shape == (None, zoo.NUM_CLASSES)
    budget = zoo.BUDGETS.get(name, zoo.PARAMETER_BUDGET)
    if budget is not None:
        assert model.count_params() <= budget


def test_an_unknown_variant_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="choose one of basic"):
        zoo.build("resnet", (60, 80, 3))
