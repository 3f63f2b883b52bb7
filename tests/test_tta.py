"""Test-time augmentation's views: NumPy and TensorFlow make the same ones, and only those an input allows."""

from __future__ import annotations

import numpy as np
import pytest

from training import tta


def test_kinds_follow_the_input_shape() -> None:
    assert tta.kinds_for((64, 64)) == ("none", "flips", "dihedral")
    assert tta.kinds_for((60, 80)) == ("none", "flips")
    assert tta.check("flips", (60, 80)) == "flips"
    with pytest.raises(ValueError, match="quarter turns need a square input"):
        tta.check("dihedral", (60, 80))


def test_dihedral_views_are_the_eight_symmetries_of_a_square() -> None:
    image = np.random.default_rng(0).random((1, 5, 5, 3), dtype=np.float32)
    views = [tta.view_numpy(image, view) for view in tta.VIEWS["dihedral"]]
    assert len({view.tobytes() for view in views}) == 8
    expected = {np.rot90(flipped, k, axes=(1, 2)).tobytes() for flipped in (image, image[:, :, ::-1])
                for k in range(4)}
    assert {view.tobytes() for view in views} == expected
    assert {v.tobytes() for v in views[:4]} == {tta.view_numpy(image, view).tobytes() for view in tta.VIEWS["flips"]}


def test_predict_numpy_averages_over_the_views() -> None:
    image = np.zeros((2, 4, 4, 3), np.float32)
    image[:, 0, 0] = 1.0  # a corner pixel: each view moves it to another corner
    corner = lambda x: np.stack([x[:, 0, 0, 0], 1 - x[:, 0, 0, 0]], axis=1)  # noqa: E731
    assert np.allclose(tta.predict_numpy(corner, image, "none"), [[1, 0], [1, 0]])
    assert np.allclose(tta.predict_numpy(corner, image, "flips"), [[0.25, 0.75], [0.25, 0.75]])
    assert np.allclose(tta.predict_numpy(corner, image, "dihedral"), [[0.25, 0.75], [0.25, 0.75]])


@pytest.mark.training
@pytest.mark.parametrize(("kind", "shape"), [("flips", (6, 8)), ("dihedral", (7, 7))])
def test_tensorflow_makes_the_same_views_and_mean(kind: tta.Kind, shape: tuple[int, int]) -> None:
    tf = pytest.importorskip("tensorflow", reason="the train extra is not installed")
    images = np.random.default_rng(1).random((3, *shape, 3), dtype=np.float32)
    for view in tta.VIEWS[kind]:
        assert np.array_equal(tta.view_tf(tf.constant(images), view).numpy(), tta.view_numpy(images, view))
    weights = np.random.default_rng(2).random((shape[0] * shape[1] * 3, 4), dtype=np.float32)

    def model(x):  # not invariant to any view: a view's answer differs from the image's
        flat = np.asarray(x).reshape(len(x), -1) @ weights
        return np.exp(flat) / np.exp(flat).sum(axis=1, keepdims=True)

    expected = tta.predict_numpy(model, images, kind)
    actual = tta.predict_tf(lambda x: tf.nn.softmax(tf.reshape(x, [tf.shape(x)[0], -1]) @ weights), tf.constant(images),
                            kind).numpy()
    assert actual.shape == (3, 4) and np.allclose(actual, expected, atol=1e-5)
