import json
import os
from pathlib import Path

import pytest
from PIL import Image

from core.data.split import read_split, split_dataset, write_split
from core.platform.errors import DatasetError
from tests.conftest import make_colour_dataset


def test_split_is_stratified_per_class(colour_data):
    split = split_dataset(colour_data, train_ratio=0.6, seed=0)
    assert split.classes == ["blue", "red"]
    counts = {c.name: (c.train, c.val, c.test) for c in split.counts()}
    assert counts == {"blue": (5, 1, 4), "red": (5, 1, 4)}  # 60% of 10 to train, 20% of that to validation
    assert {label for _, label in split.train} == {0, 1}


def test_split_is_deterministic_and_seed_dependent(colour_data):
    a = split_dataset(colour_data, seed=3)
    b = split_dataset(colour_data, seed=3)
    c = split_dataset(colour_data, seed=4)
    assert a.train == b.train and a.test == b.test
    assert a.train != c.train


def test_list_files_round_trip(colour_data, tmp_path):
    split = split_dataset(colour_data, seed=1)
    out = write_split(split, tmp_path / "lists")
    lines = (out / "train.txt").read_text(encoding="utf-8").splitlines()
    path, label = lines[0].split("\t")
    assert Path(path).is_file() and label in {"0", "1"}
    back = read_split(out)
    assert back.classes == split.classes
    assert back.train == split.train and back.test == split.test
    assert json.loads((out / "classes.json").read_text())["classes"] == ["blue", "red"]


def test_write_split_refuses_to_overwrite(colour_data, tmp_path):
    split = split_dataset(colour_data)
    write_split(split, tmp_path / "lists")
    before = (tmp_path / "lists" / "train.txt").read_text()
    with pytest.raises(DatasetError, match="already holds"):
        write_split(split_dataset(colour_data, seed=9), tmp_path / "lists")
    assert (tmp_path / "lists" / "train.txt").read_text() == before


def test_skipped_files_are_reported_with_reasons(colour_data):
    (colour_data / "README.txt").write_text("hello")
    (colour_data / "red" / "notes.csv").write_text("a,b")
    Image.new("RGB", (8, 8)).save(colour_data / "red" / "anim.gif")
    nested = colour_data / "red" / "more" / "deeper"
    nested.mkdir(parents=True)
    (nested / "x.png").write_bytes((colour_data / "red" / "red_00.png").read_bytes())
    split = split_dataset(colour_data)
    reasons = {Path(s.path).name: s.reason for s in split.skipped}
    assert "not inside a class folder" in reasons["README.txt"]
    assert reasons["notes.csv"] == ("CSV is not a supported image type (supported: JPG, JPEG, PNG, PPM, BMP, PGM, TIF, "
                                    "TIFF, WEBP)")
    assert reasons["anim.gif"].startswith("GIF is not a supported image type (supported: JPG")
    assert sum(c.train + c.val + c.test for c in split.counts() if c.name == "red") == 11  # nested image found


def test_tiny_and_empty_classes_are_reported(tmp_path):
    root = make_colour_dataset(tmp_path / "d", per_class=5, classes=("blue", "red"))
    make_colour_dataset(tmp_path / "one", per_class=1, classes=("green",))
    os.rename(tmp_path / "one" / "green", root / "green")
    (root / "empty").mkdir()
    split = split_dataset(root)
    assert split.classes == ["blue", "green", "red"]
    assert any("'green' has 1 image" in w for w in split.warnings)
    assert any("'empty' has no images" in w for w in split.warnings)


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.1])
def test_bad_ratio_is_refused(colour_data, ratio):
    with pytest.raises(DatasetError, match=r"train ratio must be from 0.01 to 0.99"):
        split_dataset(colour_data, train_ratio=ratio)


def test_missing_root_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="is not a folder"):
        split_dataset(tmp_path / "nope")


def test_a_dataset_that_ships_split_into_train_and_val_keeps_its_split(tmp_path):
    from tests.conftest import make_colour_dataset

    root = tmp_path / "hymenoptera"
    make_colour_dataset(root / "train", per_class=6, classes=("blue", "red"))
    make_colour_dataset(root / "val", per_class=3, classes=("blue", "red"), seed=1)
    split = split_dataset(root, 0.6, 0)
    assert split.classes == ["blue", "red"]  # not "train" and "val"
    assert split.given_by == "train/ + val/"
    assert len(split.train) + len(split.val) == 12 and len(split.test) == 6  # val/ is the test split
    assert all("/train/" in p for p, _ in split.train + split.val) and all("/val/" in p for p, _ in split.test)
    assert split_dataset(root, 0.3, 0).train == split.train  # the train ratio does not move images
    assert not split.warnings


def test_a_given_split_whose_class_folders_differ_is_warned_about(tmp_path):
    from tests.conftest import make_colour_dataset

    root = tmp_path / "ds"
    make_colour_dataset(root / "train", per_class=4, classes=("blue", "red", "green"))
    make_colour_dataset(root / "test", per_class=2, classes=("blue", "red"))
    split = split_dataset(root)
    assert split.classes == ["blue", "green", "red"] and split.given_by == "train/ + test/"
    assert any("only in train/: green" in w for w in split.warnings)


def test_train_and_val_with_images_directly_inside_are_two_classes(tmp_path):
    from tests.conftest import make_colour_dataset

    make_colour_dataset(tmp_path / "flat", per_class=3, classes=("blue", "red"))
    (tmp_path / "flat" / "blue").rename(tmp_path / "flat" / "train")
    (tmp_path / "flat" / "red").rename(tmp_path / "flat" / "val")
    split = split_dataset(tmp_path / "flat", val_ratio=0)
    assert split.classes == ["train", "val"] and split.given_by is None


def test_the_image_extensions_are_torchvisions():
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from core.data.split import IMG_EXTENSIONS as ours
    assert ours == IMG_EXTENSIONS
