"""The learning-rate finder (fastai's ``lr_find``; Leslie Smith, "Cyclical Learning Rates", 2017).

    python -m core lr-find (--data ROOT | --lists DIR) [--freeze head|last_block|all] [--json OUT]

The learning rate grows exponentially from ``start_lr`` to ``end_lr`` over ``num_it`` mini-batches of
the training split while the loss is recorded; the sweep stops once the smoothed loss passes four
times its minimum (it diverged). Two suggestions are read off the smoothed curve, as fastai does:
**valley** (the middle of the longest stretch where the loss keeps falling, fastai's default) and
**steep** (where it falls fastest against log lr). The model is the one a run with the same settings
would train: built, loaded and frozen the same way, fed the same way (cached features when the
body is frozen, so the sweep takes about a second after the feature pass, which fills the same
cache a run reads). Its weights are restored afterwards. The sweep's batches are training images only.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data.datasets import ListDataset, training_transform
from ..features.extractor import FeatureExtractor
from ..models.surgery import set_train_mode
from ..platform.accel import as_input
from ..platform.errors import RunError
from ..spec.archs import get_arch
from ..spec.config import TrainConfig
from ..spec.records import Progress, ProgressMeter, metered
from ..spec.states import Phase
from .feature_path import DeviceBatches, EpochShuffle, image_loader
from .optim import make_optimizer
from .train import training_list

START_LR, END_LR, NUM_IT = 1e-7, 10.0, 100
SMOOTHING = 0.98  # fastai's exponential moving average of the loss, debiased
DIVERGED = 4.0  # the smoothed loss above this × its minimum: stop


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]  # smoothed
    raw_losses: list[float]
    valley: float | None  # the suggestion (fastai's default)
    steep: float | None
    stopped: str  # why the sweep ended
    feature_path: str
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def suggestion(self) -> float | None:
        return self.valley

    def to_json(self) -> dict:
        return {**asdict(self), "suggestion": self.suggestion}


def exponential_lrs(start: float, end: float, num: int) -> list[float]:
    return [start * (end / start) ** (i / max(num - 1, 1)) for i in range(num)]


def smooth(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """fastai's debiased exponential moving average."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** i))
    return out


def valley(lrs: list[float], losses: list[float]) -> float | None:
    """fastai's ``valley``: the longest run of decreasing loss (a longest decreasing subsequence), and a
    point about two thirds down it."""
    n = len(losses)
    if n < 3:
        return None
    runs = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and runs[i] < runs[j] + 1:
                runs[i] = runs[j] + 1
        if runs[end] < runs[i]:
            end = i
            start = end - runs[end]
    if end - start < 2:
        return None
    sections = (end - start) / 3
    return float(lrs[start + int(sections) + int(sections / 2)])


def steep(lrs: list[float], losses: list[float]) -> float | None:
    """fastai's ``steep``: where the loss falls fastest against log lr."""
    if len(losses) < 3:
        return None
    slopes = [(losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(len(lrs) - 1)]
    best = min(range(len(slopes)), key=slopes.__getitem__)
    return float(lrs[best]) if slopes[best] < 0 else None


def sweep(model: nn.Module, forward, batches, optimizer: torch.optim.Optimizer, criterion, *,
          start_lr: float = START_LR, end_lr: float = END_LR, num_it: int = NUM_IT,
          device: torch.device = torch.device("cpu"), stop=lambda: None
          ) -> Generator[int, None, tuple[list[float], list[float], str]]:
    """The sweep itself: ``batches`` yields (inputs, labels) forever; each param group's lr is the swept one
    times the group's share of the first group's lr (the body's smaller rate stays smaller). Yields 1 after each
    step (for progress and Stop); returns (lrs, raw losses, why it stopped). ``model``'s weights and the
    optimizer's state are put back afterwards, whatever happens."""
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    factors = [g["lr"] / optimizer.param_groups[0]["lr"] for g in optimizer.param_groups]
    lrs, raw, smoothed_min, why = [], [], math.inf, f"reached {end_lr:g} after {num_it} steps"
    try:
        for step, lr in enumerate(exponential_lrs(start_lr, end_lr, num_it)):
            stop()
            for group, factor in zip(optimizer.param_groups, factors):
                group["lr"] = lr * factor
            inputs, labels = next(batches)
            loss = criterion(forward(inputs.to(device)), labels.to(device))
            value = float(loss.detach())
            if not math.isfinite(value):
                why = f"the loss stopped being a finite number at lr {lr:.3g}"
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lrs.append(lr)
            raw.append(value)
            current = smooth(raw)[-1]
            smoothed_min = min(smoothed_min, current)
            if step > 0 and current > DIVERGED * smoothed_min:
                why = f"the loss diverged at lr {lr:.3g} (over {DIVERGED:g}× its minimum)"
                break
            yield 1  # one step done
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
    return lrs, raw, why


def _training_batches(cfg: TrainConfig, extractor: FeatureExtractor, train: list, stop
                      ) -> Generator[Progress, None, tuple]:
    """(forward, batches) on stored features: the frozen front's output, extracted (or read) as the run's."""
    extracted = yield from extractor.extract({"train": train}, stop=stop)
    features = extracted["train"].features
    if not len(features.labels):
        raise RunError(f"none of the {len(train)} training images could be read; check the data folder")
    loader = DeviceBatches(features, extractor.device, cfg.batch_size, EpochShuffle(len(features.labels), cfg.seed))
    return extractor.forward_after_cut(), loader


def _forever(loader) -> Iterator:
    """(inputs, labels) of the training path's batches, round and round (unreadable images skipped)."""
    while True:
        produced = False
        for inputs, labels, *_ in loader:
            if inputs is not None:
                produced = True
                yield inputs, labels
        if not produced:
            raise RunError("none of the training images could be read; check the data folder")


def find_lr(cfg: TrainConfig, *, cache_dir: str | Path | None = None, start_lr: float = START_LR,
            end_lr: float = END_LR, num_it: int = NUM_IT, stop=lambda: None, allowed_roots=None
            ) -> Generator[Progress, None, LRFindResult]:
    """Sweep the learning rate for the run ``cfg`` describes, on that run's training images. A generator of
    Progress records (the feature pass, when needed, then the sweep); returns an LRFindResult. ``stop`` raises
    to end it early. The model is adapted, and its features extracted, exactly as the run's would be."""
    if not 0 < start_lr < end_lr:
        raise RunError(f"the sweep needs 0 < start lr < end lr, got {start_lr:g} and {end_lr:g}")
    t0 = time.time()
    train, classes = training_list(cfg, allowed_roots)
    extractor = FeatureExtractor.build(cfg, len(classes), cache_dir=cache_dir)
    model, device = extractor.model, extractor.device
    if not any(p.requires_grad for p in model.parameters()):
        raise RunError("nothing trains in this configuration, so there is no learning rate to find")
    on_features = FeatureExtractor.may_train_on_features(cfg)
    if on_features:
        forward, loader = yield from _training_batches(cfg, extractor, train, stop)
    else:  # the full forward pass over the training images, augmented as the run would
        transform = training_transform(get_arch(cfg.arch).transforms(), cfg.augmentation, letterbox=cfg.uses_letterbox)
        forward, loader = model, image_loader(ListDataset(train, transform), cfg.batch_size, device,
                                              sampler=EpochShuffle(len(train), cfg.seed), workers=extractor.workers)
    optimizer = make_optimizer(cfg, model, extractor.head_name)  # the run's own: SGD or AdamW, its groups
    set_train_mode(model, extractor.report.trained_modules)
    meter = ProgressMeter(Phase.LR_SWEEP, num_it, split="train")
    yield meter.first()
    batches = ((as_input(x, device), y) for x, y in _forever(loader))
    steps = sweep(model, forward, batches, optimizer, nn.CrossEntropyLoss(), start_lr=start_lr, end_lr=end_lr,
                  num_it=num_it, device=device, stop=stop)
    lrs, raw, why = yield from metered(steps, meter)
    feature_path = "cached features" if on_features else "full forward"
    smoothed = smooth(raw)
    result = LRFindResult(lrs, smoothed, raw, valley(lrs, smoothed), steep(lrs, smoothed), why, feature_path,
                          time.time() - t0)
    if len(lrs) < 10:
        result.valley = result.steep = None
        result.notes.append(f"the loss diverged after {len(lrs)} step(s), at once: no learning rate can be "
                            "suggested; check the data, or start the sweep lower")
    return result
