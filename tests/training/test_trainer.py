import json
import math

import pytest
import torch

from core.features.cache import compute_frozen_outputs
from core.inference.predict import Predictor
from core.platform.errors import ConfigError, RunError
from core.runs.files import read_records
from core.runs.rundir import RunDir
from core.spec.archs import ARCHITECTURES
from core.spec.config import TrainConfig
from core.spec.records import Batch, Epoch, Features, Progress
from core.training.run import train


def _config(data, **overrides):
    # val_ratio 0: these tests check the training mechanics on the tutorial's two lists
    # (tests/training/test_validation_chooses.py checks the validation split, the default)
    # (one stage with SGD: the staged recipe, the default, has tests/training/test_recipe.py)
    base = dict(arch="resnet18", data_root=str(data), epochs=2, batch_size=4, lr=0.01, num_workers=0, seed=0,
                log_every=2, val_ratio=0, recipe="single", optimizer="sgd")
    base.update(overrides)
    return TrainConfig(**base)


def test_record_stream_and_run_folder(colour_data, resnet18_file, tmp_path):
    run_dir = tmp_path / "run"
    records = list(train(_config(colour_data, weights=str(resnet18_file)), run_dir))
    kinds = [r.type for r in records if r.type != "progress"]
    assert kinds[0] == "start" and kinds[-1] == "final"
    assert kinds.count("epoch") == 2
    # 12 train images, batch 4 → 3 batches per epoch; a record every 2 batches → 1 per epoch
    batches = [r for r in records if isinstance(r, Batch)]
    assert [(b.epoch, b.batch, b.seen, b.total) for b in batches] == [(1, 2, 8, 12), (2, 2, 8, 12)]
    start = records[0]
    assert start.device == "cpu" and start.device_name == "CPU" and start.feature_path == "cached features"
    epoch = next(r for r in records if isinstance(r, Epoch))
    assert sum(n for _, _, n in epoch.confusion['cells']) == 8 and epoch.tested == 8 and len(epoch.per_class_acc) == 2
    final = records[-1]
    assert final.status == "completed" and final.epochs_completed == 2
    run = RunDir(run_dir)
    assert read_records(run).items == tuple(records)
    summary = json.loads(run.summary.read_text())
    assert summary["status"] == "completed" and summary["test_acc"] == records[-2].acc  # the last epoch's (Test)
    assert summary["chosen_on"] == "last epoch" and summary["test_n"] == 8
    assert json.loads(run.status_file.read_text())["state"] == "completed"
    for path in (run.config, run.last, run.predictions, run.plain_state_dict("resnet18"),
                 run.lists / "train.txt"):
        assert path.is_file(), path
    ckpt = torch.load(run.last, weights_only=True)
    assert ckpt["classes"] == ["blue", "red"] and ckpt["config"]["arch"] == "resnet18" and ckpt["epoch"] == 2
    # the tutorial's way of loading model_resnet18.pth works on the plain file
    from torchvision.models import resnet18
    model = resnet18(weights=None)
    model.fc = torch.nn.Linear(512, 2)
    model.load_state_dict(torch.load(run.plain_state_dict("resnet18"), weights_only=True))


def test_refuses_a_folder_that_already_holds_a_run(colour_data, resnet18_file, tmp_path):
    list(train(_config(colour_data, epochs=1, weights=str(resnet18_file)), tmp_path / "run"))
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(RunError, match="already holds a completed run"):
        list(train(_config(colour_data, epochs=1), tmp_path / "run"))
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before


def test_pretrained_head_training_learns_the_demo_shapes(tmp_path, lite0_file):
    from core.data.demo import generate_demo

    data = generate_demo(tmp_path / "shapes", per_class=(16, 16), seed=1)
    records = list(train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(data),
                                     epochs=5, batch_size=8, num_workers=0, lr=0.01), tmp_path / "run"))
    epochs = [r for r in records if isinstance(r, Epoch)]
    assert epochs[-1].train_loss < epochs[0].train_loss
    assert records[-1].test_acc >= 0.8, [e.val_acc for e in epochs]


@pytest.mark.slow
def test_full_path_loss_goes_down_with_all_layers_training(colour_data, resnet18_file, tmp_path):
    records = list(train(_config(colour_data, weights=str(resnet18_file), freeze="all", epochs=3, lr=0.005),
                         tmp_path / "run"))
    assert records[0].feature_path == "full forward"
    epochs = [r for r in records if isinstance(r, Epoch)]
    assert epochs[-1].train_loss < epochs[0].train_loss
    assert records[-1].status == "completed"


def test_cached_features_give_the_same_head_as_the_full_forward(colour_data, resnet18_file, tmp_path):
    common = dict(weights=str(resnet18_file), epochs=2, batch_size=4)
    list(train(_config(colour_data, feature_cache=True, **common), tmp_path / "cached", cache_dir=tmp_path / "c"))
    list(train(_config(colour_data, feature_cache=False, **common), tmp_path / "full"))
    cached = torch.load(tmp_path / "cached" / "checkpoint_last.pt", weights_only=True)["model"]
    full = torch.load(tmp_path / "full" / "checkpoint_last.pt", weights_only=True)["model"]
    for key in ("fc.weight", "fc.bias"):
        torch.testing.assert_close(cached[key], full[key], rtol=1e-4, atol=1e-5)
    assert read_records(tmp_path / "cached").start.feature_path == "cached features"
    assert read_records(tmp_path / "full").start.feature_path == "full forward"
    # a second run with the same inputs reads the features from disk
    records = list(train(_config(colour_data, feature_cache=True, **common), tmp_path / "again",
                         cache_dir=tmp_path / "c"))
    features = [r for r in records if isinstance(r, Features)]
    assert len(features) == 2 and all(r.from_disk for r in features)
    assert not any(isinstance(r, Progress) and r.phase == "features" for r in records)


def test_a_changed_image_is_not_read_from_the_cache(colour_data, resnet18_file, tmp_path):
    from core.data.split import split_dataset
    from core.features.cache import FeatureSet, extractor_identity, load_cached_features, store_cached_features

    split = split_dataset(colour_data)
    identity = extractor_identity(arch="resnet18", head_variant="replace", weights=str(resnet18_file), transform="t")
    n = len(split.train)
    stored = FeatureSet(torch.randn(n, 4), torch.tensor([y for _, y in split.train]), torch.arange(n), 0)
    assert store_cached_features(tmp_path, identity, split.train, stored)
    assert torch.equal(load_cached_features(tmp_path, identity, split.train).features, stored.features)
    with open(split.train[0][0], "ab") as f:
        f.write(b"\0")
    assert load_cached_features(tmp_path, identity, split.train) is None
    assert load_cached_features(tmp_path, identity, split.train[1:]) is not None  # the others are still good


def test_augmentation_uses_the_full_path(colour_data, resnet18_file, tmp_path):
    records = list(train(_config(colour_data, weights=str(resnet18_file), flip=True, epochs=1), tmp_path / "r"))
    assert records[0].feature_path == "full forward"


def test_checkpoint_predict_round_trip(colour_data, lite0_file, tmp_path):
    list(train(_config(colour_data, arch="efficientnet_lite0", weights=str(lite0_file), epochs=8, lr=0.05),
               tmp_path / "run"))
    predictor = Predictor.load(tmp_path / "run")
    assert predictor.classes == ["blue", "red"]
    top = predictor.predict(colour_data / "red" / "red_00.png", topk=5)
    assert [c for c, _ in top] == ["red", "blue"] and top[0][1] > 0.5  # topk=5 of 2 classes gives both
    assert predictor.predict(colour_data / "blue" / "blue_01.png", topk=1)[0][0] == "blue"


def test_config_validation_names_allowed_values():
    with pytest.raises(ConfigError, match="allowed: head, last_block, all"):
        TrainConfig(freeze="half", data_root="x")
    with pytest.raises(ConfigError, match="exactly one of"):
        TrainConfig(data_root="x", lists_dir="y")


def test_a_config_is_checked_once_when_made_with_one_sentence_per_wrong_field(tmp_path):
    from core.runs.create import create_run

    with pytest.raises(ConfigError) as caught:
        TrainConfig(epochs=0, lr=float("nan"), momentum=1.5, arch="resnet99", data_root="x")
    assert str(caught.value).split("; ") == [
        "epochs must be a whole number from 1 to 10,000, got 0", "lr must be a number from 1e-08 to 10, got nan",
        "momentum must be a number from 0 to 0.999, got 1.5",
        f"architecture 'resnet99' does not exist (allowed: {', '.join(ARCHITECTURES)})"]
    with pytest.raises(ConfigError, match="exactly one of"):  # a model without data is a config; not a run
        create_run(tmp_path / "run", TrainConfig())
    with pytest.raises(ConfigError, match="epochs must be"):  # a config.json edited by hand is checked too
        TrainConfig.from_dict({**TrainConfig().to_dict(), "epochs": -3})


@pytest.mark.slow
def test_pretrained_beats_training_from_scratch_on_the_demo(tmp_path, lite0_file):
    from core.data.demo import generate_demo

    data = generate_demo(tmp_path / "shapes", per_class=(12, 12), seed=3)
    common = dict(arch="efficientnet_lite0", data_root=str(data), epochs=3, batch_size=8, num_workers=0)
    pretrained = list(train(TrainConfig(weights=str(lite0_file), lr=0.01, **common), tmp_path / "pt"))[-1]
    scratch = list(train(TrainConfig(weights=None, freeze="all", **common), tmp_path / "scratch"))[-1]
    assert pretrained.test_acc >= 0.8
    assert pretrained.test_acc > scratch.test_acc + 0.3, (pretrained.test_acc, scratch.test_acc)


def test_feature_cache_keeps_the_newest_entries_within_its_size_cap(tmp_path):
    import os

    from core.features.cache import prune_cache

    folder = tmp_path / "features"
    folder.mkdir()
    for i, name in enumerate(("old", "middle", "new")):
        (folder / f"{name}.pt").write_bytes(b"x" * 100)
        os.utime(folder / f"{name}.pt", (1000 + i, 1000 + i))
    removed = prune_cache(folder, max_bytes=250)
    assert [p.name for p in removed] == ["old.pt"]
    assert sorted(p.name for p in folder.iterdir()) == ["middle.pt", "new.pt"]


def _features(model, head, samples, transform):
    gen = compute_frozen_outputs(model, head, samples, transform, device=torch.device("cpu"), batch_size=4)
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0"])
def test_folded_batchnorm_features_match_the_unfolded_model(arch, colour_data, resnet18_file, lite0_file):
    from core.data.datasets import build_transform
    from core.data.split import split_dataset
    from core.models.surgery import adapt_model
    from core.platform.accel import fold_batchnorm, inference_copy
    from core.spec.archs import get_arch

    weights = resnet18_file if arch == "resnet18" else lite0_file
    model, report = adapt_model(arch, 2, weights=weights, freeze="head")
    model.eval()
    fast = inference_copy(model)
    assert fold_batchnorm(inference_copy(model)) == 0  # already folded: nothing left to fold
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules()) == 0
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 0  # the original is untouched
    samples = split_dataset(colour_data).test
    transform = build_transform(get_arch(arch).transforms())
    plain = _features(model, report.head_name, samples, transform)
    folded = _features(fast, report.head_name, samples, transform)
    assert plain.features.shape == folded.features.shape == (8, report.head_in_features)
    torch.testing.assert_close(folded.features, plain.features, rtol=0, atol=1e-4)


def test_jpegs_decoded_by_libjpeg_match_pil_within_one_level(tmp_path):
    import random as _random

    from PIL import Image

    from core.data.datasets import ListDataset, build_transform
    from core.data.demo import draw_shape
    from core.spec.archs import get_arch

    rng = _random.Random(0)
    samples = []
    for k in range(4):
        path = tmp_path / f"{k}.jpg"
        draw_shape(("circle", "star")[k % 2], rng, size=(500, 375)).save(path, quality=90)
        samples.append((str(path), k % 2))
    Image.new("CMYK", (64, 48), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg")  # libjpeg path declines, PIL decodes
    samples.append((str(tmp_path / "cmyk.jpg"), 0))
    transform = build_transform(get_arch("efficientnet_lite0").transforms())
    fast, slow = ListDataset(samples, transform), ListDataset(samples, transform, fast_jpeg=False)
    assert fast.fast_jpeg and not slow.fast_jpeg
    for i in range(len(samples)):
        a, b = fast[i][0], slow[i][0]
        assert a.shape == b.shape == (3, 224, 224)
        assert (a - b).abs().max() <= 2 / 255 / get_arch("efficientnet_lite0").transforms().std[0] + 1e-6
    letterbox = build_transform(get_arch("efficientnet_lite0").transforms(), letterbox=True)
    assert not ListDataset(samples, letterbox).fast_jpeg  # the letterbox needs PIL images


def test_comparison_twin_flips_weights_and_freeze_and_keeps_the_rest():
    from core.jobs.queue import comparison_twin

    pretrained = TrainConfig(arch="resnet18", weights="/w.pth", freeze="head", lr=0.01, epochs=7, data_root="d")
    twin = comparison_twin(pretrained, "/w.pth")
    # the staged run (7 + 3 epochs) against every layer from scratch for as many epochs, in one stage
    assert (twin.weights, twin.freeze, twin.recipe, twin.epochs) == (None, "all", "single", 10)
    changed = ("weights", "freeze", "recipe", "epochs")
    assert {k: v for k, v in twin.to_dict().items() if k not in changed} == \
        {k: v for k, v in pretrained.to_dict().items() if k not in changed}
    back = comparison_twin(twin, "/w.pth")
    assert (back.weights, back.freeze, back.recipe) == ("/w.pth", "head", "single")
    assert comparison_twin(twin, None) is None  # no pretrained weights on the machine: no twin


def test_find_twin_matches_every_saved_setting_but_the_weights_side(tmp_path):
    from core.jobs.queue import comparison_twin, find_twin
    from core.runs.create import create_run
    from core.runs.listing import list_runs

    pretrained = TrainConfig(arch="resnet18", weights="/w.pth", freeze="head", lr=0.01, epochs=7, data_root="d")
    scratch = comparison_twin(pretrained, "/w.pth")
    create_run(tmp_path / "pt", pretrained, queued=True)
    create_run(tmp_path / "other-lr", TrainConfig.from_dict({**scratch.to_dict(), "lr": 0.1}), queued=True)
    assert find_twin(pretrained, list_runs(tmp_path), "/w.pth") is None  # a scratch run, but not with these settings
    create_run(tmp_path / "scratch", scratch, queued=True)
    runs = list_runs(tmp_path)
    assert find_twin(pretrained, runs, "/w.pth").name == "scratch"
    assert find_twin(scratch, runs, "/w.pth").name == "pt"
    assert find_twin(scratch, runs, "/other.pth") is None  # head-only on other weights is not this pair
    assert find_twin(scratch, runs, None) is None


def test_letterbox_training_uses_its_own_cache_entries(colour_data, lite0_file, tmp_path):
    common = dict(arch="efficientnet_lite0", weights=str(lite0_file), epochs=1)
    list(train(_config(colour_data, **common), tmp_path / "plain", cache_dir=tmp_path / "cache"))
    records = list(train(_config(colour_data, letterbox=True, **common), tmp_path / "lb", cache_dir=tmp_path / "cache"))
    assert records[-1].status == "completed"
    assert [r.from_disk for r in records if isinstance(r, Features)] == [False, False]  # not the plain entries
    identities = sorted((tmp_path / "cache" / "features").iterdir())
    assert len(identities) == 2 and all(len(list(folder.glob("*.pt"))) == 2 for folder in identities)


@pytest.mark.slow
def test_vgg16_add_outside_trains_through_the_feature_cache(colour_data, tmp_path):
    records = list(train(_config(colour_data, arch="vgg16", head_variant="add_outside", weights=None, epochs=1,
                                 batch_size=4), tmp_path / "run"))
    start, final = records[0], records[-1]
    assert final.status == "completed", final.reason
    assert start.feature_path == "cached features" and start.trainable_params == 1000 * 2 + 2
    state = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)["model"]
    assert state["add_Linear.weight"].shape == (2, 1000)


@pytest.mark.slow
def test_decoding_workers_give_the_same_run(colour_data, lite0_file, tmp_path):
    common = dict(arch="efficientnet_lite0", weights=str(lite0_file), epochs=2)
    runs = {w: list(train(_config(colour_data, num_workers=w, **common), tmp_path / f"w{w}")) for w in (0, 2)}
    assert runs[2][0].workers == 2
    heads = [torch.load(tmp_path / f"w{w}" / "checkpoint_last.pt", weights_only=True)["model"]["_fc.weight"]
             for w in (0, 2)]
    torch.testing.assert_close(heads[0], heads[1])
    full = list(train(_config(colour_data, num_workers=2, freeze="all", **common), tmp_path / "full"))
    assert full[0].feature_path == "full forward" and full[-1].status == "completed"


@pytest.mark.parametrize("schedule, expected", [
    ("none", [0.01, 0.01, 0.01, 0.01]),
    ("step", [0.01, 0.01, 0.001, 0.001]),  # StepLR, step 2, gamma 0.1
    ("cosine", [0.01, 0.01 * (1 + math.cos(math.pi / 4)) / 2, 0.005, 0.01 * (1 + math.cos(3 * math.pi / 4)) / 2]),
])
def test_the_schedule_sets_each_epochs_learning_rate(schedule, expected, colour_data, lite0_file, tmp_path):
    records = list(train(_config(colour_data, arch="efficientnet_lite0", weights=str(lite0_file), epochs=4, lr=0.01,
                                 schedule=schedule, step_size=2, gamma=0.1), tmp_path / "run"))
    assert [e.lr for e in records if isinstance(e, Epoch)] == pytest.approx(expected)


def test_early_stopping_ends_the_run_as_completed_with_the_reason(colour_data, lite0_file, tmp_path):
    records = list(train(_config(colour_data, arch="efficientnet_lite0", weights=str(lite0_file), epochs=30,
                                 lr=0.05, patience=2, val_ratio=0.2), tmp_path / "run"))
    epochs, final = [r for r in records if isinstance(r, Epoch)], records[-1]
    assert final.status == "completed"
    assert final.reason == (f"stopped early at epoch {len(epochs)} of 30: no better validation accuracy for 2 "
                            f"epochs; predictions use epoch {final.best_epoch}")
    assert final.test_acc is not None and final.chosen_on == "validation"  # tested once, after the early stop
    accs = [e.val_acc for e in epochs]
    assert len(epochs) < 30 and final.epochs_completed == len(epochs)
    assert max(accs[-2:]) <= max(accs[:-2])  # the last two epochs brought no better accuracy
    assert (tmp_path / "run" / "model_efficientnet_lite0.pth").is_file()
    assert Predictor.load(tmp_path / "run").epoch == final.best_epoch


def test_a_config_with_an_unknown_schedule_is_refused():
    with pytest.raises(ConfigError, match="allowed: none, step, cosine"):
        TrainConfig(schedule="exponential", data_root="x")


def test_class_weights_are_inverse_frequency_and_shown_in_the_start_record(tmp_path, lite0_file):
    from tests.conftest import make_colour_dataset

    root = make_colour_dataset(tmp_path / "imbalanced", per_class=10, classes=("blue",))
    make_colour_dataset(root, per_class=40, classes=("red",), seed=1)
    records = list(train(_config(root, arch="efficientnet_lite0", weights=str(lite0_file), epochs=1,
                                 class_weights=True), tmp_path / "run"))
    start = records[0]
    assert start.class_weights == pytest.approx([30 / (2 * 6), 30 / (2 * 24)])  # 6 blue and 24 red in train
    assert records[-1].status == "completed"
    plain = list(train(_config(root, arch="efficientnet_lite0", weights=str(lite0_file), epochs=1),
                       tmp_path / "plain"))
    assert plain[0].class_weights is None
    assert records[-1].test_acc is not None


def test_a_strongly_imbalanced_dataset_is_warned_about(tmp_path):
    from core.data.split import split_dataset
    from tests.conftest import make_colour_dataset

    root = make_colour_dataset(tmp_path / "d", per_class=5, classes=("blue",))
    make_colour_dataset(root, per_class=16, classes=("red",), seed=1)
    assert any("strongly imbalanced: 16 images in the largest, 5" in w for w in split_dataset(root).warnings)
    make_colour_dataset(tmp_path / "e", per_class=5, classes=("blue",))
    make_colour_dataset(tmp_path / "e", per_class=15, classes=("red",), seed=1)
    assert not any("imbalanced" in w for w in split_dataset(tmp_path / "e").warnings)  # 3× is not over 3×


@pytest.mark.parametrize("preset", ["flip", "crop+flip", "letterbox+flips"])
def test_augmentation_presets_train_through_the_full_forward_pass(preset, colour_data, lite0_file, tmp_path):
    records = list(train(_config(colour_data, arch="efficientnet_lite0", weights=str(lite0_file), epochs=1,
                                 augment=preset), tmp_path / "run"))
    assert records[0].feature_path == "full forward" and records[-1].status == "completed"


def test_augmentation_presets_draw_different_inputs_of_the_right_size():
    from PIL import Image

    from core.data.datasets import training_transform
    from core.spec.archs import get_arch

    image = Image.new("RGB", (300, 200))
    image.paste((255, 0, 0), (0, 0, 150, 200))  # left half red: a flip or a crop changes what is where
    pre = get_arch("efficientnet_lite0").transforms()
    for preset in ("flip", "crop+flip", "letterbox+flips"):
        transform = training_transform(pre, preset)
        draws = [transform(image) for _ in range(12)]
        assert all(d.shape == (3, 224, 224) for d in draws)
        assert len({round(float(d[0].mean()), 3) for d in draws} | {tuple(d[0, 112, :5].tolist()) for d in draws}) > 1
    still = training_transform(pre, "none")
    assert torch.equal(still(image), still(image))
    with pytest.raises(ConfigError, match="say different things"):
        TrainConfig(flip=True, augment="crop+flip", data_root="x")


@pytest.mark.slow
def test_last_block_trains_on_cached_stage_inputs_exactly_as_the_full_forward(colour_data, resnet18_file, tmp_path):
    """freeze last_block: layer4 + fc train; the frozen front's output is computed once and cached."""
    common = dict(weights=str(resnet18_file), epochs=2, batch_size=4, freeze="last_block", body_lr_factor=0.5)
    list(train(_config(colour_data, feature_cache=True, **common), tmp_path / "cached", cache_dir=tmp_path / "c"))
    list(train(_config(colour_data, feature_cache=False, **common), tmp_path / "full"))
    cached = torch.load(tmp_path / "cached" / "checkpoint_last.pt", weights_only=True)
    full = torch.load(tmp_path / "full" / "checkpoint_last.pt", weights_only=True)
    start = torch.load(resnet18_file, weights_only=True)
    for key in ("fc.weight", "layer4.1.conv2.weight", "layer4.0.bn1.running_mean"):
        # float noise of the folded front, grown by two epochs of training: small against the tensor's scale
        scale = full["model"][key].abs().max().item()
        torch.testing.assert_close(cached["model"][key], full["model"][key], rtol=0, atol=1e-3 * scale)
    assert not torch.equal(cached["model"]["layer4.1.conv2.weight"], start["layer4.1.conv2.weight"])  # it trained
    torch.testing.assert_close(cached["model"]["layer3.1.conv2.weight"], start["layer3.1.conv2.weight"])  # frozen
    # two learning rates: the head at lr, the trained body at lr × body_lr_factor
    assert [g["lr"] for g in cached["optimizer"]["param_groups"]] == [0.01, 0.005]
    records = read_records(tmp_path / "cached")
    assert records.start.feature_path == "cached features"
    assert records.start.trainable_params > 512 * 2 + 2
    again = list(train(_config(colour_data, feature_cache=True, **common), tmp_path / "again",
                       cache_dir=tmp_path / "c"))
    assert all(r.from_disk for r in again if isinstance(r, Features))
    head_run = list(train(_config(colour_data, feature_cache=True, weights=str(resnet18_file), epochs=1),
                          tmp_path / "head", cache_dir=tmp_path / "c"))
    assert not any(r.from_disk for r in head_run if isinstance(r, Features))  # another cut, another cache entry


@pytest.mark.parametrize("arch", ["resnet18", "vgg16"])
def test_preprocessing_gives_what_the_weights_own_transforms_give_a_photo(arch):
    """torchvision's recipe feeds ``weights.transforms()`` PIL images (ImageFolder), which PIL resizes.
    The CPU's uint8 resize agrees with that up to one pixel level at a few pixels; the float resize
    the project used before was one level off at a sixth of them."""
    import numpy as np
    from PIL import Image

    from core.data.datasets import build_transform
    from core.spec.archs import get_arch

    theirs = get_arch(arch).weights.resolve().transforms()
    ours = build_transform(get_arch(arch).transforms())
    pixels = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    photo = Image.fromarray(pixels)
    expected = theirs(photo)
    got = ours(photo)
    assert got.shape == expected.shape == (3, 224, 224)
    level = 1 / 255 / min(theirs.std)
    difference = (got - expected).abs()
    assert difference.max() <= level + 1e-5
    assert difference.mean() < 0.01 * level
    torch.testing.assert_close(ours(torch.from_numpy(pixels).permute(2, 0, 1).contiguous()), got, rtol=0, atol=0)
