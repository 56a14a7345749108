"""A search of the head's settings in seconds: with a frozen body the head trains on cached features,
so Optuna (TPE sampler, median pruning) can try dozens of settings while a full run would do one.

    python -m core tune (--data ROOT | --lists DIR) [--trials 50] [--json OUT]

Each trial (learning rate, weight decay, momentum, epochs, label smoothing) is scored by stratified
k-fold cross-validation **on the training split only**: the head is trained as the trainer trains it
(the run's optimiser, SGD or AdamW, and its schedule; mini-batches of the run's batch size, cross-entropy)
on k-1 folds and scored on the held-out one. The test list is never opened (with ``--lists`` it may be
absent); its images are first looked at when the chosen settings train a normal run, which records that
they came from this search.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Generator

import numpy as np
import torch

from ..data.split import Edits, read_training_list, split_dataset
from ..features.extractor import FeatureExtractor
from ..platform.errors import RunError
from ..platform.io import atomic_write_text
from ..spec.config import TrainConfig, field_range
from ..spec.records import Progress, ProgressMeter
from ..spec.states import Phase
from .optim import schedule_factors

SEARCH_SPACE = {  # name: (low, high, log scale); epochs are whole numbers
    "lr": (1e-4, 1.0, True),
    "weight_decay": (1e-6, 1e-2, True),
    "momentum": (0.0, 0.99, False),
    "epochs": (1, 30, False),
    "label_smoothing": (0.0, 0.2, False),
}
MAX_FOLDS = 5


@dataclass
class Trial:
    number: int
    score: float | None  # mean cross-validated accuracy (None: pruned before its first fold ended)
    state: str  # complete, pruned
    params: dict


@dataclass
class TuneResult:
    best: dict  # the best trial's settings
    best_score: float
    folds: int
    trials: list[Trial]
    train_images: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """What a run trained with these settings records (TrainConfig.tuned_by)."""
        return (f"head search: Optuna TPE, {len(self.trials)} trials, {self.folds}-fold cross-validation on the "
                f"{self.train_images} training images, best {100 * self.best_score:.1f}%")

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        """``cfg`` with the best settings, saying where they came from."""
        return cfg.changed(**self.best, tuned_by=self.describe())

    def to_json(self) -> dict:
        return {**asdict(self), "tuned_by": self.describe()}


# ----------------------------------------------------------------------------- the training split's features
def training_features(cfg: TrainConfig, cache_dir: str | Path | None
                      ) -> Generator[Progress, None, tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """The training split's backbone features, by the extractor a run of ``cfg`` uses (its cache: a run, a check
    or an earlier search may have computed them). Reads only the training list; yields Progress; returns
    (features, labels, classes)."""

    if cfg.freeze != "head" or not cfg.pretrained:
        raise RunError("the head search needs pretrained weights and freeze 'head' (only the head trains): then "
                       "each trial trains on cached features in milliseconds")
    if cfg.augmentation != "none":
        raise RunError("the head search trains on cached features, which augmentation would change; use none")
    train, classes = training_images(cfg)
    extractor = FeatureExtractor.build(cfg, len(classes), cache_dir=cache_dir)
    extracted = yield from extractor.extract({"train": train})
    features = extracted["train"].features
    if len(features.labels) == 0:
        raise RunError(f"none of the {len(train)} training images could be read")
    return features.features.float().flatten(1), features.labels, classes


def training_images(cfg: TrainConfig) -> tuple[list[tuple[str, int]], list[str]]:
    """The images the search cross-validates on (training and validation share, the excluded left out) and the
    class names. The test list is never read."""

    if cfg.lists_dir:
        train, classes = read_training_list(cfg.lists_dir)
    else:
        assert cfg.data_root is not None  # a config names one or the other (TrainConfig checks it)
        split = split_dataset(cfg.data_root, cfg.train_ratio, cfg.seed, val_ratio=cfg.val_ratio,
                              keep_together=[list(g) for g in cfg.keep_together], edits=Edits.of_config(cfg))
        train, classes = split.train + split.val, split.classes  # cross-validated on train + validation
    excluded = set(cfg.exclude)
    train = [(p, y) for p, y in train if p not in excluded]
    if not train:
        raise RunError("the training list is empty")
    return train, list(classes)


# ----------------------------------------------------------------------------- one trial
def train_head(x: torch.Tensor, y: torch.Tensor, classes: int, params: dict, *, batch_size: int,
               seed: int, optimizer: str = "sgd", rates: Rates | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The head as the trainer trains it on cached features (a Linear layer, nn.Linear's initialisation; SGD
    with momentum and weight decay as torch.optim.SGD applies them, or AdamW as torch.optim.AdamW does; the
    run's learning-rate schedule, step by step; shuffled mini-batches; cross-entropy with label smoothing), with
    the gradient of softmax cross-entropy written out: thousands of tiny steps per trial cost a tenth of
    autograd's. Returns (weight, bias); tests check it against nn.Linear + torch's SGD and AdamW."""
    generator = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(x.shape[1])
    weight = torch.empty(classes, x.shape[1]).uniform_(-bound, bound, generator=generator)
    bias = torch.empty(classes).uniform_(-bound, bound, generator=generator)
    lr, momentum, decay, smoothing = (params["lr"], params["momentum"], params["weight_decay"],
                                      params["label_smoothing"])
    targets = torch.full((len(y), classes), smoothing / classes)
    targets[torch.arange(len(y)), y] += 1 - smoothing
    epochs, per_epoch = int(params["epochs"]), math.ceil(len(y) / batch_size)
    factors = rates(epochs, per_epoch) if rates is not None else None
    step = _AdamWStep(weight, bias) if optimizer == "adamw" else _SGDStep()
    for epoch in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for k, start in enumerate(range(0, len(y), batch_size)):
            batch = order[start:start + batch_size]
            xb = x[batch]
            grad = (torch.softmax(xb @ weight.T + bias, dim=1) - targets[batch]) / len(batch)
            g_w, g_b = grad.T @ xb, grad.sum(0)
            rate, beta = lr, momentum
            if factors is not None:
                factor, cycled = factors[epoch * per_epoch + k]
                rate, beta = lr * factor, (cycled if cycled is not None else momentum)
            step(weight, bias, g_w, g_b, rate, beta, decay)
    return weight, bias


Rates = Callable[[int, int], "tuple[tuple[float, float | None], ...]"]


class _SGDStep:
    """torch.optim.SGD's update: L2 decay added to the gradient, then momentum (dampening 0, no Nesterov)."""

    def __init__(self) -> None:
        self.buf_w: torch.Tensor | None = None
        self.buf_b: torch.Tensor | None = None

    def __call__(self, weight, bias, g_w, g_b, lr: float, momentum: float, decay: float) -> None:
        g_w, g_b = g_w + decay * weight, g_b + decay * bias
        if momentum:
            self.buf_w = g_w if self.buf_w is None else self.buf_w.mul_(momentum).add_(g_w)
            self.buf_b = g_b if self.buf_b is None else self.buf_b.mul_(momentum).add_(g_b)
            g_w, g_b = self.buf_w, self.buf_b
        weight -= lr * g_w
        bias -= lr * g_b


class _AdamWStep:
    """torch.optim.AdamW's update (beta1 the momentum, beta2 0.999, eps 1e-8): decoupled decay, then Adam's
    bias-corrected step."""

    BETA2, EPS = 0.999, 1e-8

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        self.moments = [(torch.zeros_like(weight), torch.zeros_like(weight)),
                        (torch.zeros_like(bias), torch.zeros_like(bias))]
        self.t = 0

    def __call__(self, weight, bias, g_w, g_b, lr: float, beta1: float, decay: float) -> None:
        self.t += 1
        for param, grad, (m, v) in zip((weight, bias), (g_w, g_b), self.moments):
            param.mul_(1 - lr * decay)
            m.lerp_(grad, 1 - beta1)
            v.mul_(self.BETA2).addcmul_(grad, grad, value=1 - self.BETA2)
            denom = (v.sqrt() / math.sqrt(1 - self.BETA2 ** self.t)).add_(self.EPS)
            param.addcdiv_(m, denom, value=-lr / (1 - beta1 ** self.t))


def run_rates(cfg: TrainConfig) -> Rates | None:
    """The learning rate (and, one-cycle, the momentum) of each step of a trial, as the run's schedule sets them;
    None for a constant rate. With the fine_tune recipe the head search tunes stage 1, whose schedule this is."""
    if cfg.schedule == "none":
        return None
    return lambda epochs, per_epoch: schedule_factors(cfg.schedule, cfg.optimizer.value, epochs, per_epoch,
                                                      cfg.warmup, cfg.step_size, cfg.gamma, cfg.momentum > 0)


def _folds(labels: np.ndarray, seed: int) -> tuple[list, str | None]:
    # deferred: scikit-learn takes about a second to import; only this section needs it
    from sklearn.model_selection import StratifiedKFold

    smallest = int(np.bincount(labels)[np.bincount(labels) > 0].min())
    k = min(MAX_FOLDS, smallest)
    if k < 2:
        raise RunError("the head search needs at least 2 training images in every class (for 2 folds); "
                       "a class has 1")
    note = None if k == MAX_FOLDS else (f"{k}-fold cross-validation: the smallest class has {smallest} training "
                                        f"images, fewer than the {MAX_FOLDS} folds asked for")
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)), note


def tune_head(cfg: TrainConfig, *, cache_dir: str | Path | None = None, trials: int = 50, seed: int = 0,
              stop=lambda: None, lr_centre: float | None = None) -> Generator[Progress, None, TuneResult]:
    """Search the head's settings for the run ``cfg`` describes. A generator of Progress records (the feature
    pass when the cache lacks it, then one per trial); returns a TuneResult.

    The first trial is ``cfg``'s own settings, so the best is never one that scored below them. ``lr_centre`` (the
    learning-rate finder's suggestion): learning rates are searched within ×/÷ 10 of it instead of the whole
    range."""
    import optuna  # deferred: it takes about a second to import, and only the search needs it

    t0 = time.time()
    x, y, classes = yield from training_features(cfg, cache_dir)
    folds, note = _folds(y.numpy(), seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0))
    low_epochs, high_epochs = field_range("epochs")
    rates = run_rates(cfg)
    space = search_space(lr_centre)
    study.enqueue_trial(_within(space, {"lr": cfg.lr if lr_centre is None else lr_centre,
                                        "weight_decay": cfg.weight_decay, "momentum": cfg.momentum,
                                        "epochs": cfg.epochs, "label_smoothing": cfg.label_smoothing}))

    def objective(trial: "optuna.Trial") -> float:
        params = {name: (trial.suggest_int(name, max(low, low_epochs), min(high, high_epochs)) if name == "epochs"
                         else trial.suggest_float(name, low, high, log=log))
                  for name, (low, high, log) in space.items()}
        return _cross_validated(trial, x, y, len(classes), folds, params, batch_size=cfg.batch_size, seed=seed,
                                optimizer=cfg.optimizer.value, rates=rates)

    meter = ProgressMeter(Phase.TRIALS, trials, split="train")
    yield meter.first()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steps of a few thousand numbers: a second thread only adds hand-overs
    try:
        for _ in range(trials):
            stop()
            study.optimize(objective, n_trials=1)
            record = meter.advance(1)
            if record:
                yield record
    finally:
        torch.set_num_threads(threads)
    result = _result(study, len(folds), len(y), time.time() - t0)
    if note:
        result.notes.append(note)
    if lr_centre is not None:
        low, high, _ = space["lr"]
        result.notes.append(f"learning rates searched around the finder's {lr_centre:.3g}: {low:.3g} to {high:.3g}")
    return result


def _cross_validated(trial, x: torch.Tensor, y: torch.Tensor, classes: int, folds: list, params: dict, *,
                     batch_size: int, seed: int, optimizer: str = "sgd", rates: Rates | None = None) -> float:
    """One trial's mean held-out accuracy over the folds, reported fold by fold so the pruner can stop it."""
    import optuna  # deferred: it takes about a second to import, and only the search needs it

    scores = []
    for k, (fit, held) in enumerate(folds):
        weight, bias = train_head(x[fit], y[fit], classes, params, batch_size=batch_size, seed=seed + k,
                                  optimizer=optimizer, rates=rates)
        scores.append(float(((x[held] @ weight.T + bias).argmax(1) == y[held]).float().mean()))
        trial.report(float(np.mean(scores)), k)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return float(np.mean(scores))


def _result(study, folds: int, images: int, seconds: float) -> TuneResult:
    import optuna  # deferred: it takes about a second to import, and only the search needs it

    if not [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]:
        raise RunError("no trial of the head search completed")
    rows = [Trial(t.number, t.value if t.value is not None else
                  (max(t.intermediate_values.values()) if t.intermediate_values else None),
                  t.state.name.lower(), dict(t.params)) for t in study.trials]
    return TuneResult(dict(study.best_params), float(study.best_value), folds, rows, images, seconds)


def search_space(lr_centre: float | None = None) -> dict:
    """SEARCH_SPACE, with the learning rate narrowed to ×/÷ 10 around ``lr_centre`` (within the full range)."""
    if lr_centre is None or not lr_centre > 0:
        return dict(SEARCH_SPACE)
    low, high, log = SEARCH_SPACE["lr"]
    return {**SEARCH_SPACE, "lr": (max(low, lr_centre / 10), min(high, max(lr_centre * 10, low * 10)), log)}


def _within(space: dict, params: dict) -> dict:
    """``params`` clipped into ``space`` (a setting outside the search's range is tried at its nearest edge)."""
    clipped = {}
    for name, (low, high, _) in space.items():
        value = min(max(params[name], low), high)
        clipped[name] = int(round(value)) if name == "epochs" else float(value)
    return clipped


def save_result(result: TuneResult, path: str | Path) -> None:

    atomic_write_text(path, json.dumps(result.to_json(), indent=1))
