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
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ..platform.errors import RunError
from ..runs.rundir import RunDir
from ..spec.config import TrainConfig
from ..spec.records import ProgressMeter
from ..spec.states import Phase

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
          device: torch.device = torch.device("cpu"), stop=lambda: None) -> Iterator:
    """The sweep itself: ``batches`` yields (inputs, labels) forever; each param group's lr is the swept one
    times the group's share of the first group's lr (the body's smaller rate stays smaller). Yields after each
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
            yield step + 1
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
    return lrs, raw, why


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
            end_lr: float = END_LR, num_it: int = NUM_IT, stop=lambda: None, allowed_roots=None) -> Iterator:
    """Sweep the learning rate for the run ``cfg`` describes. A generator of Progress records (the feature
    pass, when needed, then the sweep); returns an LRFindResult. ``stop`` raises to end it early."""
    from ..models.surgery import optimizer_groups, set_train_mode
    from ..platform.accel import SGD, as_input
    from .feature_path import choose_feature_path
    from .train import set_up

    if not 0 < start_lr < end_lr:
        raise RunError(f"the sweep needs 0 < start lr < end lr, got {start_lr:g} and {end_lr:g}")
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="tld-lr-find-") as tmp:
        run = RunDir(Path(tmp) / "run")
        run.path.mkdir()
        s = set_up(cfg, run, allowed_roots)
        path = yield from choose_feature_path(s, Path(cache_dir) if cache_dir else None)
        body_factor = cfg.body_lr_factor if cfg.pretrained else 1.0
        optimizer = SGD(optimizer_groups(s.model, s.report.head_name, cfg.lr, body_factor), lr=cfg.lr,
                        momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        if not any(p.requires_grad for p in s.model.parameters()):
            raise RunError("nothing trains in this configuration, so there is no learning rate to find")
        set_train_mode(s.model, s.report.trained_modules)
        criterion = nn.CrossEntropyLoss()
        meter = ProgressMeter(Phase.LR_SWEEP, num_it, split="train")
        yield meter.first()
        batches = ((as_input(x, s.device), y) for x, y in _forever(path.train_loader))
        steps = sweep(s.model, path.forward, batches, optimizer, criterion, start_lr=start_lr, end_lr=end_lr,
                      num_it=num_it, device=s.device, stop=stop)
        while True:
            try:
                next(steps)
            except StopIteration as finished:
                lrs, raw, why = finished.value
                break
            record = meter.advance(1)
            if record:
                yield record
        feature_path = "cached features" if s.use_cache else "full forward"
    smoothed = smooth(raw)
    result = LRFindResult(lrs, smoothed, raw, valley(lrs, smoothed), steep(lrs, smoothed), why, feature_path,
                          time.time() - t0)
    if len(lrs) < 10:
        result.valley = result.steep = None
        result.notes.append(f"the loss diverged after {len(lrs)} step(s), at once: no learning rate can be "
                            "suggested; check the data, or start the sweep lower")
    return result
