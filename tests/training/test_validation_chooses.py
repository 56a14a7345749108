"""Numbers you can trust: every choice reads the validation split, the test split is looked at once, and every
test figure carries its interval."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.data.split import carve_validation, read_split, split_dataset, write_split
from core.platform.errors import ConfigError
from core.platform.figures import accuracy, paired_difference
from core.runs.files import read_records
from core.runs.listing import read_run
from core.runs.rundir import RunDir
from core.spec.config import TrainConfig
from core.spec.records import Epoch, Progress, Test, cells_of
from core.spec.states import Phase
from core.training.run import train
from tests.conftest import ROOT, make_colour_dataset


def _config(**overrides) -> TrainConfig:
    base = dict(arch="efficientnet_lite0", epochs=4, batch_size=4, lr=0.05, num_workers=0, seed=0, log_every=100)
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture
def hard_data(tmp_path) -> Path:
    """Three colours with heavy noise on small images: learnable, but not perfectly, so epochs differ."""
    return make_colour_dataset(tmp_path / "hard", per_class=15, size=24, classes=("blue", "green", "red"), seed=3)


# ----------------------------------------------------------------------------- the test split never chooses
def _permuted(lists: Path, out: Path) -> Path:
    """The same lists with every test label moved to the next class: a different answer key, same images."""
    out.mkdir()
    for name in ("train.txt", "val.txt", "classes.json"):
        (out / name).write_bytes((lists / name).read_bytes())
    split = read_split(lists)
    n = len(split.classes)
    (out / "test.txt").write_text("".join(f"{p}\t{(y + 1) % n}\n" for p, y in split.test), encoding="utf-8")
    return out


def test_permuting_the_test_labels_changes_only_the_test_figures(hard_data, lite0_file, tmp_path):
    lists = write_split(split_dataset(hard_data, 0.6, 0), tmp_path / "lists")
    permuted = _permuted(lists, tmp_path / "permuted")
    runs = []
    for folder, name in ((lists, "a"), (permuted, "b")):
        cfg = _config(lists_dir=str(folder), weights=str(lite0_file), epochs=6, patience=2)
        list(train(cfg, tmp_path / name))
        runs.append(RunDir(tmp_path / name))
    a, b = (read_records(run) for run in runs)
    assert len(a.epochs) == len(b.epochs)  # early stopping read nothing of the test split
    assert [e.val_acc for e in a.epochs] == [e.val_acc for e in b.epochs]
    assert a.test.epoch == b.test.epoch and a.test.chosen_by == "validation"
    kept = [torch.load(run.best, weights_only=True) for run in runs]
    assert kept[0]["epoch"] == kept[1]["epoch"]
    assert kept[0]["temperature"] == kept[1]["temperature"]
    for key, tensor in kept[0]["model"].items():
        assert torch.equal(tensor, kept[1]["model"][key]), key
    assert a.test.acc != b.test.acc and a.test.tested == b.test.tested  # only the test figures differ
    assert all(e.test_acc is None for e in a.epochs)  # no epoch was ever scored on the test split


def test_val_ratio_0_is_the_tutorial_last_epoch_kept_no_temperature(colour_data, lite0_file, tmp_path):
    records = list(train(_config(data_root=str(colour_data), weights=str(lite0_file), epochs=3, val_ratio=0,
                                 recipe="single", optimizer="sgd"), tmp_path / "run"))  # the tutorial's one stage
    run = RunDir(tmp_path / "run")
    epochs = [r for r in records if isinstance(r, Epoch)]
    assert all(e.evaluated == "test" and e.test_acc is not None for e in epochs)  # printed every epoch, as the seed
    assert not run.best.exists() and run.checkpoint() == run.last
    checkpoint = torch.load(run.last, weights_only=True)
    assert checkpoint["epoch"] == 3 and "temperature" not in checkpoint
    test = next(r for r in records if isinstance(r, Test))
    assert test.epoch == 3 and test.chosen_by == "last epoch" and test.acc == epochs[-1].test_acc
    assert read_records(run).start.validation.startswith("none (val ratio 0)")
    assert (run.lists / "val.txt").read_text() == ""


def test_early_stopping_needs_a_validation_split():
    with pytest.raises(ConfigError, match="patience.*validation split"):
        TrainConfig(val_ratio=0, patience=2)


def test_the_plain_command_ends_with_the_test_figure_and_its_interval(colour_data, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "core", "train", "--data", str(colour_data), "--out",
                           str(tmp_path / "run"), "--epochs", "2"], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"test accuracy \d+\.\d% \(95% CI \d+\.\d–\d+\.\d%, 8 images\), epoch \d chosen on "
                        r"validation", last), last
    assert "validation: 2 images: 20% of each class's training images (seed 0)" in proc.stdout


# ----------------------------------------------------------------------------- the one test pass and Stop
def _train_until(cfg: TrainConfig, run_dir: Path, stop_when) -> list:
    records = []
    for record in train(cfg, run_dir):
        records.append(record)
        if stop_when(record):
            RunDir(run_dir).request_stop()
    return records


def test_stop_ends_training_then_measures_the_kept_epoch_once(hard_data, lite0_file, tmp_path):
    cfg = _config(data_root=str(hard_data), weights=str(lite0_file), epochs=5)
    records = _train_until(cfg, tmp_path / "run", lambda r: isinstance(r, Epoch) and r.epoch == 2)
    final = records[-1]
    assert final.status == "stopped" and final.epochs_completed == 2
    test = next(r for r in records if isinstance(r, Test))
    assert test.epoch in (1, 2) and final.test_acc == test.acc and final.test_n == test.tested
    assert not RunDir(tmp_path / "run").stop_requested()


def test_a_second_stop_skips_the_test_pass(hard_data, lite0_file, tmp_path):
    cfg = _config(data_root=str(hard_data), weights=str(lite0_file), epochs=5)
    records = _train_until(cfg, tmp_path / "run", lambda r: (isinstance(r, Epoch) and r.epoch == 1)
                           or (isinstance(r, Progress) and r.phase == Phase.TEST and r.split == "test"))
    final = records[-1]
    assert final.status == "stopped" and "test not evaluated" in final.reason
    assert not [r for r in records if isinstance(r, Test)] and final.test_acc is None
    info = read_run(tmp_path / "run")
    assert info.test is None and info.val_acc is not None


# ----------------------------------------------------------------------------- the split's three roles
def test_split_carves_validation_per_class_from_the_training_share(colour_data, tmp_path):
    split = split_dataset(colour_data, 0.6, 0, val_ratio=0.2)
    assert {(c.train, c.val, c.test) for c in split.counts()} == {(5, 1, 4)}
    plain = split_dataset(colour_data, 0.6, 0, val_ratio=0)
    assert sorted(split.train + split.val) == sorted(plain.train) and split.test == plain.test  # the seed's split
    assert split_dataset(colour_data, 0.6, 0, val_ratio=0.2).val == split.val  # seeded
    out = write_split(split, tmp_path / "lists")
    again = read_split(out)
    assert again.val == split.val and again.train == split.train and again.has_val_list


def test_a_ratio_that_leaves_a_class_without_validation_says_which_and_what_works(tmp_path):
    samples = [(f"a{i}.png", 0) for i in range(10)] + [(f"b{i}.png", 1) for i in range(3)]
    train_part, val, notes = carve_validation(samples, ["a", "b"], 0.1, 0)
    assert [n for n in notes if "class 'b' (3 training images)" in n and "0.17 or more" in n]
    assert sum(1 for _, y in val if y == 1) == 1 and sum(1 for _, y in val if y == 0) == 1
    train_part, val, notes = carve_validation(samples + [("c0.png", 2)], ["a", "b", "c"], 0.2, 0)
    assert ("c0.png", 2) in train_part and any("class 'c' has one training image" in n for n in notes)
    assert len(val) == 3


def test_train_val_layout_keeps_val_as_the_test_split_and_carves_validation(tmp_path):
    make_colour_dataset(tmp_path / "ds" / "train", per_class=10)
    make_colour_dataset(tmp_path / "ds" / "val", per_class=4, seed=1)
    split = split_dataset(tmp_path / "ds", val_ratio=0.2)
    assert len(split.test) == 8 and len(split.val) == 4 and len(split.train) == 16
    assert all("/val/" in p for p, _ in split.test)


def test_train_val_test_layout_is_read_as_given(tmp_path):
    make_colour_dataset(tmp_path / "ds" / "train", per_class=10)
    make_colour_dataset(tmp_path / "ds" / "val", per_class=3, seed=1)
    make_colour_dataset(tmp_path / "ds" / "test", per_class=4, seed=2)
    split = split_dataset(tmp_path / "ds", val_ratio=0.5)
    assert (len(split.train), len(split.val), len(split.test)) == (20, 6, 8)
    assert all("/test/" in p for p, _ in split.test) and all("/val/" in p for p, _ in split.val)
    assert split.val_ratio is None


def test_lists_without_val_txt_get_validation_carved_in_the_run(colour_data, lite0_file, tmp_path):
    lists = write_split(split_dataset(colour_data, 0.6, 0, val_ratio=0), tmp_path / "lists")
    (lists / "val.txt").unlink()  # the tutorial's lists: train.txt and test.txt only
    records = list(train(_config(lists_dir=str(lists), weights=str(lite0_file), epochs=1), tmp_path / "run"))
    run = RunDir(tmp_path / "run")
    start = records[0]
    assert start.val_size == 2 and start.train_size == 10
    assert start.validation.startswith("2 images carved from train.txt")
    assert len(read_split(run.lists).val) == 2 and not (lists / "val.txt").exists()  # the user's lists untouched


# ----------------------------------------------------------------------------- how sure each figure is
def test_accuracy_interval_is_wilsons():
    interval = accuracy(144, 153)  # statsmodels' proportion_confint(144, 153, method="wilson")
    assert interval.low == pytest.approx(0.891994, abs=1e-5) and interval.high == pytest.approx(0.968747, abs=1e-5)
    assert interval.text() == "94.1% (95% CI 89.2–96.9%, 153 images)"


def test_paired_difference_says_within_noise_and_beyond():
    close = paired_difference([True] * 95 + [False] * 5, [True] * 93 + [False] * 7)
    assert close.within_noise and "within noise" in close.text()
    far = paired_difference([True] * 90 + [False] * 10, [False] * 60 + [True] * 40)
    assert not far.within_noise and far.difference == pytest.approx(0.5) and far.p_value < 1e-6


def test_a_training_list_of_one_class_is_refused_not_reported_as_100_percent(tmp_path, lite0_file):
    make_colour_dataset(tmp_path / "one", per_class=10, classes=("blue",))
    lists = tmp_path / "lists"
    lists.mkdir()
    paths = sorted(str(p) for p in (tmp_path / "one" / "blue").iterdir())
    (lists / "train.txt").write_text("".join(f"{p}\t0\n" for p in paths[:6]))
    (lists / "test.txt").write_text("".join(f"{p}\t0\n" for p in paths[6:]))
    final = list(train(_config(lists_dir=str(lists), weights=str(lite0_file), epochs=1), tmp_path / "run"))[-1]
    assert final.status == "failed" and "at least two classes" in final.reason and "(blue)" in final.reason
    assert final.test_acc is None


def test_a_label_of_3000_trains_two_classes_not_3001(tmp_path, lite0_file):
    """The class count is what the lists hold, not their largest label: nothing grows with a label's value."""
    make_colour_dataset(tmp_path / "d", per_class=10)
    lists = tmp_path / "lists"
    lists.mkdir()
    rows = {"train.txt": range(0, 6), "test.txt": range(6, 10)}
    for name, indices in rows.items():
        (lists / name).write_text("".join(f"{tmp_path / 'd' / colour / f'{colour}_{i:02d}.png'}\t{label}\n"
                                          for colour, label in (("blue", 0), ("red", 3000)) for i in indices))
    records = list(train(_config(lists_dir=str(lists), weights=str(lite0_file), epochs=2), tmp_path / "run"))
    assert records[0].classes == ["blue", "red"] and records[-1].status == "completed"
    assert all(len(e.per_class_acc) == 2 and cells_of(e.confusion, 2) for e in records if isinstance(e, Epoch))
    assert (tmp_path / "run" / "metrics.jsonl").stat().st_size < 50_000


def test_more_classes_than_a_run_trains_are_refused_with_the_limit(tmp_path, lite0_file):
    from core.data.split import MAX_TRAINED_CLASSES

    lists = tmp_path / "lists"
    lists.mkdir()
    n = MAX_TRAINED_CLASSES + 1
    (lists / "train.txt").write_text("".join(f"/nowhere/{i}.png\t{i}\n" for i in range(n)))
    (lists / "test.txt").write_text("/nowhere/t.png\t0\n")
    final = list(train(_config(lists_dir=str(lists), weights=str(lite0_file), epochs=1, val_ratio=0),
                       tmp_path / "run"))[-1]
    assert final.status == "failed" and f"at most {MAX_TRAINED_CLASSES:,}" in final.reason
