"""The optimiser and the learning-rate schedule of a run's stage, from its config: torch's own, built one way
for the trainer, the learning-rate finder and a resumed run."""
from __future__ import annotations

import functools
import warnings

import torch
from torch import nn
from torch.optim import Optimizer, lr_scheduler

from ..models.surgery import optimizer_groups
from ..platform.accel import SGD, AdamW
from ..spec.choices import Optimizer as OptimizerChoice
from ..spec.choices import Schedule
from ..spec.config import TrainConfig

# OneCycleLR starts at lr / 25 and ends at lr / (25 × 10^4): torch's defaults, fastai's too
ONE_CYCLE_MOMENTUM = (0.85, 0.95)  # the momentum (AdamW: beta1) cycles between these, as fastai's fit_one_cycle


def make_optimizer(cfg: TrainConfig, model: nn.Module, head_name: str, stage: int = 1) -> Optimizer:
    """SGD or AdamW over the trainable parameters: the head at lr (the fine_tune recipe's stage 2: lr × its
    factor), the body's trainable layers at that × the body factor when they start from pretrained weights
    (fastai's discriminative learning rates)."""
    body_factor = cfg.body_lr_factor if cfg.pretrained else 1.0  # a random body has nothing to protect
    lr = cfg.lr * (cfg.stage2_lr_factor if stage > 1 else 1.0)
    groups = optimizer_groups(model, head_name, lr, body_factor)
    if cfg.optimizer == "adamw":
        return AdamW(groups, lr=lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)
    return SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_schedule(cfg: TrainConfig, optimizer: Optimizer, schedule: Schedule, epochs: int,
                  batches_per_epoch: int):
    """torch's own schedulers: StepLR (the PyTorch tutorial's step 7, gamma 0.1), cosine annealing over the
    stage's epochs, or OneCycleLR over its batches (each group peaks at its own lr); None for none."""
    if schedule == "step":
        return lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if schedule == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if schedule == "one_cycle":
        # momentum cycles only where there is some: SGD without momentum stays without it
        low, high = ONE_CYCLE_MOMENTUM
        steps = max(1, epochs * batches_per_epoch)
        # torch divides by (warm-up steps - 1): a short stage warms up over at least 2 steps (of at most 90%)
        warmup = min(max(cfg.warmup, 2 / steps), 0.9)
        return lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                       total_steps=steps, pct_start=warmup,
                                       cycle_momentum=cfg.momentum > 0, base_momentum=low, max_momentum=high)
    return None


@functools.lru_cache(maxsize=64)
def schedule_factors(schedule: Schedule, optimizer: str, epochs: int, steps_per_epoch: int, warmup: float,
                     step_size: int, gamma: float, cycle_momentum: bool) -> tuple[tuple[float, float | None], ...]:
    """(lr ÷ the peak lr, momentum or None when the schedule leaves it) of every step of ``epochs``, as torch's
    scheduler sets them: the head search trains each trial's head with the very rates a run would. Linear in the
    peak lr for every schedule here, so one sequence serves every trial's learning rate."""
    cfg = TrainConfig(schedule=schedule, optimizer=OptimizerChoice(optimizer), lr=1.0, epochs=max(1, epochs),
                      warmup=warmup, step_size=step_size, gamma=gamma, momentum=0.9 if cycle_momentum else 0.0)
    param = torch.zeros(1, requires_grad=True)
    dummy = (torch.optim.AdamW([param], lr=1.0, betas=(cfg.momentum, 0.999)) if optimizer == "adamw" else
             torch.optim.SGD([param], lr=1.0, momentum=cfg.momentum))
    sched = make_schedule(cfg, dummy, schedule, epochs, steps_per_epoch)
    group = dummy.param_groups[0]
    out = []
    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step()` before", UserWarning)  # no step here
    for step in range(epochs * steps_per_epoch):
        momentum = (group["betas"][0] if optimizer == "adamw" else group["momentum"]) if schedule.per_batch else None
        out.append((group["lr"], momentum if cycle_momentum else None))
        if sched is not None and (schedule.per_batch or (step + 1) % steps_per_epoch == 0):
            sched.step()
    return tuple(out)
