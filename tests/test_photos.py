"""Source photos found from the images: copies of one photo together, different photos apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.synthetic import make_smear
from training import data, photos


def test_a_photos_flips_and_quarter_turn_share_its_features_and_another_photo_does_not() -> None:
    smear = make_smear(wbcs=((160, 120, 30),), seed=1)
    other = make_smear(wbcs=((160, 120, 34),), seed=1)
    base = photos.features(smear.rgb)
    for view in (smear.rgb[:, ::-1], smear.rgb[::-1], np.ascontiguousarray(np.rot90(smear.rgb))):
        assert np.all(np.abs(photos.features(np.ascontiguousarray(view)) - base) <= photos.TOLERANCE)
    assert np.any(np.abs(photos.features(other.rgb) - base) > photos.TOLERANCE)


def test_the_black_fill_of_a_shifted_copy_is_not_background() -> None:
    smear = make_smear(wbcs=((160, 120, 30),), seed=2)
    shifted = np.zeros_like(smear.rgb)
    shifted[:, 20:] = smear.rgb[:, :-20]
    assert np.all(np.abs(photos.features(shifted) - photos.features(smear.rgb)) <= photos.TOLERANCE)


def test_close_images_chain_into_one_photo_and_the_smallest_groups_join_until_the_names_count() -> None:
    cell = np.array([50.0, 150, 160, 84, 195, 132, 128])
    step = 0.9 * photos.TOLERANCE
    other = cell + [20, 5, 0, 0, 0, 2, 0]  # another photo: a larger cell, another stain
    rows = [cell, cell + step, cell + 2 * step,  # a chain: each within tolerance of the next
            other, other + 0.1,
            cell + [-8, 0.2, 0, 0, 0, 0.1, 0]]  # a copy with its cell cut at the frame's edge: same colours
    free = photos.group(np.array(rows), ["a", "b", "c", "d", "e", "f"])  # names without _N_M: nothing merged
    assert free.tolist() == [0, 0, 0, 1, 1, 2]
    merged = photos.group(np.array(rows), ["_0_1", "_0_2", "_1_3", "_1_4", "_0_5", "_1_6"])  # two photos by name
    assert merged.tolist() == [0, 0, 0, 1, 1, 0]


def test_load_split_finds_the_photos_of_the_synthetic_set_whatever_their_names(synthetic_dataset: Path,
                                                                              tmp_path: Path) -> None:
    # Rename the files so that the _N_ no longer follows the photo, as in the real data set.
    photo_of = {}
    for folder in (synthetic_dataset / "images" / "TRAIN").iterdir():
        for index, path in enumerate(sorted(folder.glob("*.jpeg"))):
            new = path.with_name(f"_{index % 3}_{100 + index}.jpeg")
            photo_of[f"{folder.name}/{new.name}"] = f"{folder.name}/{path.stem.split('_')[1]}"
            path.rename(new)
    arrays = data.load_split(synthetic_dataset, "TRAIN", ("crop",), (64, 64), cache_dir=tmp_path, progress=False,
                             photos="appearance")["crop"]
    truth = np.array([photo_of[str(Path(p).relative_to("TRAIN"))] for p in arrays.paths])
    assert len(set(arrays.sources)) == len(set(truth)) == 12
    for source in set(arrays.sources):
        assert len(set(truth[arrays.sources == source])) == 1  # every group is one photo
    named = data.load_split(synthetic_dataset, "TRAIN", ("crop",), (64, 64), cache_dir=tmp_path, progress=False)
    assert any(len(set(truth[named["crop"].sources == source])) > 1 for source in set(named["crop"].sources))
    again = data.load_split(synthetic_dataset, "TRAIN", ("crop",), (64, 64), cache_dir=tmp_path, progress=False,
                            photos="appearance")["crop"]
    assert again.sources.tolist() == arrays.sources.tolist() and list(tmp_path.glob("photos-TRAIN-*.json"))
