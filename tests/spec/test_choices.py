"""The choice fields of TrainConfig are enums that read and write as their plain strings; the pages' shared
choices make a run's config one way."""
import json

import pytest

from core.platform.errors import ConfigError
from core.spec.choices import Augment, Freeze, Precision, Schedule
from core.spec.config import Choices, TrainConfig


def test_choice_fields_become_enums_and_write_as_their_strings():
    cfg = TrainConfig(freeze="last_block", schedule="cosine", augment="crop+flip", precision="bf16")
    assert (cfg.freeze, cfg.schedule, cfg.augment, cfg.precision) == (
        Freeze.LAST_BLOCK, Schedule.COSINE, Augment.CROP_FLIP, Precision.BF16)
    assert cfg.freeze == "last_block" and f"{cfg.freeze}" == "last_block" and str(cfg.augment) == "crop+flip"
    saved = cfg.to_dict()
    assert saved["freeze"] == "last_block" and type(saved["freeze"]) is str  # a checkpoint's weights_only load
    assert json.loads(json.dumps(saved))["augment"] == "crop+flip"
    assert TrainConfig.from_dict(saved) == cfg
    assert TrainConfig().augmentation is Augment.NONE and TrainConfig(flip=True).augmentation is Augment.FLIP


def test_a_choice_that_does_not_exist_is_refused_naming_the_allowed_ones():
    allowed = r"freeze mode 'everything' does not exist \(allowed: head, last_block, all\)"
    with pytest.raises(ConfigError, match=allowed):
        TrainConfig(freeze="everything")


def test_the_pages_choices_make_the_config_and_settings_override_them():
    choices = Choices(train_ratio=0.7, val_ratio=0.1, seed=3, freeze="all", letterbox=True, head_variant=None)
    cfg = choices.config(arch="efficientnet_lite0", weights=None, data_root="/data", epochs=2, seed=5)
    assert (cfg.train_ratio, cfg.val_ratio, cfg.freeze, cfg.letterbox) == (0.7, 0.1, "all", True)
    assert cfg.data_root == "/data"
    assert cfg.seed == 5 and cfg.epochs == 2  # the page's own settings win over the shared choices


def test_a_derived_config_is_checked_like_any_other():
    cfg = TrainConfig(weights="/w.pth")
    assert cfg.recipe == "fine_tune"  # the default with freeze head: the staged recipe
    with pytest.raises(ConfigError, match="freeze must be head, got all"):
        cfg.changed(weights=None, freeze=Freeze.ALL)  # a derived config keeps the recipe it had: said, not guessed
    twin = cfg.changed(weights=None, freeze=Freeze.ALL, recipe="single")
    assert twin.freeze is Freeze.ALL and not twin.pretrained and cfg.freeze is Freeze.HEAD
    assert TrainConfig(freeze="last_block").recipe == "single"  # modes that train more train in one stage
    with pytest.raises(ConfigError, match="epochs"):
        cfg.changed(epochs=0)
