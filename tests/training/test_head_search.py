"""The head search: Optuna over cached training features, cross-validated on the training split only."""
import json
import math
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

from core.data.split import split_dataset, write_split
from core.runs.rundir import RunDir, load_config
from core.spec.config import TrainConfig
from core.spec.records import follow
from core.training.optim import make_schedule
from core.training.tune import SEARCH_SPACE, run_rates, train_head, tune_head
from tests.conftest import ROOT, make_colour_dataset


@pytest.mark.parametrize("optimizer,schedule", [("sgd", "none"), ("adamw", "none"), ("adamw", "one_cycle"),
                                                ("sgd", "one_cycle"), ("sgd", "cosine"), ("adamw", "step")])
def test_the_hand_written_head_step_is_torchs_linear_optimiser_and_schedule(optimizer, schedule):
    torch.manual_seed(0)
    x, y = torch.randn(37, 12), torch.randint(0, 3, (37,))
    params = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "label_smoothing": 0.1, "epochs": 3}
    cfg = TrainConfig(optimizer=optimizer, schedule=schedule, lr=0.05, momentum=0.9, weight_decay=1e-3, epochs=3,
                      step_size=1, gamma=0.5)
    weight, bias = train_head(x, y, 3, params, batch_size=8, seed=4, optimizer=optimizer, rates=run_rates(cfg))
    generator = torch.Generator().manual_seed(4)  # the same draws, through nn.Linear and torch's optimiser
    head = nn.Linear(12, 3)
    with torch.no_grad():
        bound = 1 / math.sqrt(12)
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.uniform_(-bound, bound, generator=generator)
    torch_optimizer = (torch.optim.AdamW(head.parameters(), lr=0.05, betas=(0.9, 0.999), weight_decay=1e-3)
                       if optimizer == "adamw" else
                       torch.optim.SGD(head.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3))
    sched = make_schedule(cfg, torch_optimizer, cfg.schedule, 3, math.ceil(37 / 8))
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    for _ in range(3):
        order = torch.randperm(37, generator=generator)
        for start in range(0, 37, 8):
            batch = order[start:start + 8]
            torch_optimizer.zero_grad()
            criterion(head(x[batch]), y[batch]).backward()
            torch_optimizer.step()
            if sched is not None and cfg.schedule.per_batch:
                sched.step()
        if sched is not None and not cfg.schedule.per_batch:
            sched.step()
    torch.testing.assert_close(weight, head.weight.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bias, head.bias.detach(), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def train_only(tmp_path_factory):
    """List files of a small dataset whose test.txt is gone: the search must not need it."""
    root = tmp_path_factory.mktemp("tune")
    data = make_colour_dataset(root / "c", per_class=10, classes=("blue", "green", "red"))
    lists = write_split(split_dataset(data, 0.6, 0), root / "lists")
    (lists / "test.txt").unlink()
    return lists


def test_the_search_never_reads_the_test_split(train_only, lite0_file, tmp_path):
    cfg = TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), lists_dir=str(train_only), num_workers=0)
    records = []
    result = follow(tune_head(cfg, cache_dir=tmp_path / "cache", trials=12), records.append)
    assert not (train_only / "test.txt").exists()
    assert len(result.trials) == 12 and result.train_images == 18 and 0 <= result.best_score <= 1
    for name, (low, high, _) in SEARCH_SPACE.items():
        assert low <= result.best[name] <= high
    assert [r.phase.value for r in records][-1] == "trials"
    assert result.folds == 5 and not result.notes  # 6 training images per class: 5 folds


def test_the_search_after_a_check_computes_no_feature(lite0_file, tmp_path):
    """The search cross-validates on training + validation, one list the check computed as two: it reads both."""
    from core.analysis.datacheck import check_data
    from core.spec.records import Progress

    data = make_colour_dataset(tmp_path / "c", per_class=8, classes=("blue", "red"))
    follow(check_data(split_dataset(data, 0.6, 0), arch="efficientnet_lite0", weights=str(lite0_file),
                      cache_dir=tmp_path / "cache"))
    cfg = TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(data), num_workers=0)
    records = []
    follow(tune_head(cfg, cache_dir=tmp_path / "cache", trials=2), records.append)
    assert records and not [r for r in records if isinstance(r, Progress) and r.phase == "features"]


def test_fewer_images_per_class_than_folds_means_fewer_folds_said(lite0_file, tmp_path):
    data = make_colour_dataset(tmp_path / "c", per_class=5, classes=("blue", "red"))
    cfg = TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(data), num_workers=0)
    result = follow(tune_head(cfg, cache_dir=tmp_path / "cache", trials=3))
    assert result.folds == 3 and "3-fold cross-validation" in result.notes[0]


def test_the_search_refuses_settings_where_the_body_trains(train_only, lite0_file):
    from core.platform.errors import RunError

    cfg = TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), lists_dir=str(train_only), freeze="all")
    with pytest.raises(RunError, match="freeze 'head'"):
        follow(tune_head(cfg, trials=2))


def test_a_run_with_the_best_settings_records_the_search(train_only, lite0_file, tmp_path):
    from core.training.run import train

    lists = tmp_path / "lists"
    shutil.copytree(train_only, lists)
    cfg = TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), lists_dir=str(lists), num_workers=0)
    result = follow(tune_head(cfg, cache_dir=tmp_path / "cache", trials=4))
    tuned = result.apply(cfg)
    assert tuned.lr == pytest.approx(result.best["lr"]) and tuned.epochs == result.best["epochs"]
    assert tuned.tuned_by.startswith("head search: Optuna TPE, 4 trials, 5-fold cross-validation")
    write_split(split_dataset(make_colour_dataset(tmp_path / "d", per_class=4, classes=("blue", "green", "red")),
                              0.5, 0, val_ratio=0), tmp_path / "full")
    shutil.copy(tmp_path / "full" / "test.txt", lists / "test.txt")  # only a normal run looks at the test split
    list(train(TrainConfig.from_dict({**tuned.to_dict(), "epochs": 1}), tmp_path / "run",
               cache_dir=tmp_path / "cache"))
    assert load_config(RunDir(tmp_path / "run")).tuned_by == tuned.tuned_by


@pytest.mark.slow
def test_tune_command(train_only, tmp_path):
    out = subprocess.run([sys.executable, "-m", "core", "tune", "--lists", str(train_only), "--arch",
                          "efficientnet_lite0", "--trials", "5", "--json", str(tmp_path / "t.json"), "--cache-dir",
                          str(tmp_path / "cache")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "t.json").read_text())
    assert len(data["trials"]) == 5 and set(data["best"]) == set(SEARCH_SPACE)
    assert "the test split was not read" in out.stdout and "train with them: python -m core train" in out.stdout


def test_the_first_trial_is_the_current_settings_and_the_finder_centres_the_rates(train_only, lite0_file, tmp_path):
    """The search never prefers settings that scored below the ones it started from, and with the finder's suggestion
    it searches learning rates within ×/÷ 10 of it."""
    cfg = TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), lists_dir=str(train_only), num_workers=0,
                      lr=0.01, epochs=5)
    result = follow(tune_head(cfg, cache_dir=tmp_path / "cache", trials=6, lr_centre=0.0019))
    first = result.trials[0]
    assert first.params == {"lr": 0.0019, "weight_decay": 1e-6, "momentum": 0.9, "epochs": 5, "label_smoothing": 0.0}
    assert result.best_score >= (first.score or 0)
    assert all(0.00019 <= t.params["lr"] <= 0.019 for t in result.trials)
    assert "learning rates searched around the finder's 0.0019: 0.00019 to 0.019" in result.notes
    plain = follow(tune_head(cfg, cache_dir=tmp_path / "cache", trials=2))
    assert plain.trials[0].params["lr"] == 0.01  # without the finder: the settings' own rate first


def test_the_command_line_search_can_centre_on_a_learning_rate(train_only, lite0_file, tmp_path, capsys):
    from core.cli.main import main

    assert main(["tune", "--lists", str(train_only), "--arch", "efficientnet_lite0", "--weights", str(lite0_file),
                 "--trials", "3", "--around-lr",
                 "0.002", "--num-workers", "0", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "note: learning rates searched around the finder's 0.002: 0.0002 to 0.02" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        main(["tune", "--lists", str(train_only), "--around-lr", "inf"])
    assert refused.value.code == 2 and "--around-lr: must be from 1e-07 to 10.0, got inf" in capsys.readouterr().err
