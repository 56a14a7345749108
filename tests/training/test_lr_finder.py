"""The learning-rate finder: fastai's sweep, its suggestions, the model put back, divergence said."""
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from core.spec.config import TrainConfig
from core.spec.records import follow
from core.training.lr_find import exponential_lrs, find_lr, smooth, steep, sweep, valley
from tests.conftest import ROOT, make_colour_dataset


def _drain(stream):
    records = []
    return records, follow(stream, records.append)


def test_the_sweep_puts_the_model_and_optimizer_back():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))

    def batches():
        while True:
            for i in range(0, 64, 16):
                yield x[i:i + 16], y[i:i + 16]

    steps, (lrs, losses, why) = _drain(sweep(model, model, batches(), optimizer, nn.CrossEntropyLoss(), num_it=50))
    assert len(lrs) == len(losses) == len(steps) > 10 and lrs == sorted(lrs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # restored exactly
    assert optimizer.state_dict()["state"] == {} and optimizer.param_groups[0]["lr"] == 0.01
    assert "diverged" in why or "reached" in why


def test_suggestions_sit_on_the_falling_part_of_a_curve():
    lrs = exponential_lrs(1e-6, 1.0, 100)
    # flat, then falling between 1e-4 and 1e-2, then blowing up
    losses = [2.0 if lr < 1e-4 else 2.0 - 1.5 * (torch.tensor(lr).log10().item() + 4) / 2 if lr < 1e-2 else
              0.5 + 10 * (lr - 1e-2) for lr in lrs]
    assert 1e-4 <= valley(lrs, losses) <= 1e-2
    assert 1e-4 <= steep(lrs, losses) <= 1e-2
    assert valley(lrs[:2], losses[:2]) is None
    assert smooth([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])  # debiased: no pull towards 0


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return make_colour_dataset(tmp_path_factory.mktemp("lr") / "c", per_class=8, classes=("blue", "green", "red"))


def test_finder_on_cached_features_suggests_a_rate(colours, lite0_file, tmp_path):
    cfg = TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(colours), num_workers=0)
    records, result = _drain(find_lr(cfg, cache_dir=tmp_path / "cache"))
    assert result.feature_path == "cached features" and len(result.lrs) > 10
    assert result.suggestion is not None and 1e-7 < result.suggestion < 10
    assert [r.phase.value for r in records if hasattr(r, "phase")][-1] == "lr sweep"
    assert len(result.raw_losses) == len(result.lrs) == len(result.losses)
    again, _ = _drain(find_lr(cfg, cache_dir=tmp_path / "cache"))  # the features are the training run's cache
    assert not any(getattr(r, "phase", None) and r.phase.value == "features" for r in again)


def test_a_sweep_that_diverges_at_once_says_so_and_suggests_nothing(colours, lite0_file, tmp_path):
    cfg = TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(colours), num_workers=0)
    _, result = _drain(find_lr(cfg, cache_dir=tmp_path / "cache", start_lr=1e4, end_lr=1e9, num_it=50))
    assert result.suggestion is None and result.steep is None
    assert any("no learning rate can be suggested" in n for n in result.notes)


@pytest.mark.slow
def test_lr_find_command_writes_the_curve(colours, tmp_path):
    out = subprocess.run([sys.executable, "-m", "core", "lr-find", "--data", str(colours), "--arch",
                          "efficientnet_lite0", "--json", str(tmp_path / "lr.json"), "--cache-dir",
                          str(tmp_path / "cache")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "lr.json").read_text())
    assert len(data["lrs"]) == len(data["losses"]) and data["suggestion"] == data["valley"]
    assert "suggested learning rate" in out.stdout
