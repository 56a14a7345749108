"""Hyperparameters: one dataclass, saved with every checkpoint so a run can rebuild its model."""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import ConfigError

DEFAULT_TRAIN_RATIO = 0.6
SCHEDULES = ("none", "step", "cosine")
AUGMENTATIONS = ("none", "flip", "crop+flip", "letterbox+flips")
FREEZE_MODES = {
    "head": "only the new head trains (the tutorial's fine-tuning)",
    "last_block": "the body's last stage and the head train",
    "all": "every layer trains",
}

# What a person reads about a freeze mode: what trains, never the word "freeze" alone ("freeze all" reads as
# "nothing trains", the opposite of what it does).
TRAINS = {"head": "head only", "last_block": "last stage + head", "all": "every layer"}

DEVICES = ("auto", "cpu", "cuda")


def _opt(default, help: str, flag: str | None = None, **extra):
    """A field with the help text its command-line flag shows (the CLI's train flags are made from these)."""
    return field(default=default, metadata={"help": help, "flag": flag, **extra})


@dataclass
class TrainConfig:
    arch: str = _opt("resnet18", "architecture: resnet18, vgg16 or efficientnet_lite0")
    head_variant: str | None = _opt(None, "how the head is adapted: replace (default), or for vgg16 add_outside / "
                                          "add_inside", aliases=("--vgg-variant",))
    freeze: str = _opt("head", "head: only the new head trains (the tutorial's fine-tuning); last_block: the body's "
                               "last stage and the head train; all: every layer trains",
                       choices=tuple(FREEZE_MODES))
    weights: str | None = _opt(None, "a state-dict file the body starts from; None trains from scratch",
                               flag="")  # the CLI's --weights takes pretrained|none|FILE and resolves it
    epochs: int = _opt(5, "passes over the training list")
    batch_size: int = _opt(8, "images per optimiser step")
    lr: float = _opt(1e-3, "SGD learning rate")
    body_lr_factor: float = _opt(0.1, "the body's layers that train (freeze last_block or all) use lr × this factor "
                                      "when they start from pretrained weights, so fine-tuning does not wreck them "
                                      "(1: one rate for all); from scratch every layer uses lr")
    momentum: float = _opt(0.9, "SGD momentum (the tutorial's SGD has none: 0)")
    weight_decay: float = _opt(0.0, "SGD weight decay")
    schedule: str = _opt("none", "learning-rate schedule: none, step (StepLR: × gamma every step-size epochs, the "
                                 "PyTorch tutorial's 7 and 0.1) or cosine (to 0 over the epochs)",
                         choices=SCHEDULES)
    step_size: int = _opt(7, "epochs between the step schedule's decays")
    gamma: float = _opt(0.1, "the step schedule's factor")
    patience: int = _opt(0, "stop early after this many epochs without a better test accuracy (0: never)")
    class_weights: bool = _opt(False, "weight the loss by inverse class frequency (for imbalanced classes)")
    train_ratio: float = _opt(DEFAULT_TRAIN_RATIO, "share of each class that goes to training (with --data)")
    seed: int = _opt(0, "sets the split, the new head's initialisation and the data order")
    num_workers: int = _opt(-1, "image-decoding worker processes; -1 picks from the machine's cores")
    device: str = _opt("auto", "auto (CUDA when present), cpu, cuda or cuda:N")
    flip: bool = _opt(False, "random horizontal flip while training (needs the full forward pass); "
                             "the same as --augment flip")
    augment: str = _opt("none", "augmentation preset while training: none, flip, crop+flip (the PyTorch tutorial's "
                                "RandomResizedCrop + horizontal flip) or letterbox+flips (the recipe's letterbox with "
                                "horizontal and vertical flips); any but none needs the full forward pass",
                        choices=AUGMENTATIONS)
    letterbox: bool = _opt(False, "the tutorial's preprocessing (whole image on a black square) instead of "
                                  "resize + centre crop")
    feature_cache: bool = _opt(True, "with a frozen body and fixed inputs, compute each image's backbone "
                                     "features once (same result, much faster)")
    precision: str = _opt("fp32", "the frozen feature pass's arithmetic: fp32, or bf16 (fast, approximate: "
                                  "logits differ by up to about 0.4; the benchmark prints its effect on accuracy)",
                          choices=("fp32", "bf16"))
    log_every: int = _opt(10, "a loss line every this many batches")
    processes: int = _opt(1, "training processes (the app starts them with torchrun; on the command line, "
                             "run torchrun yourself): on CUDA one per GPU", flag="")
    data_root: str | None = _opt(None, "a class-folder root, split at start", flag="--data")
    lists_dir: str | None = _opt(None, "a folder with train.txt / test.txt (path<TAB>label) and optionally "
                                       "classes.json", flag="--lists")

    def validate(self) -> "TrainConfig":
        from .archs import get_arch  # torchvision is slow to import; only checking a config needs it

        spec = get_arch(self.arch)
        spec.variant(self.head_variant)
        if self.freeze not in FREEZE_MODES:
            raise ConfigError(f"freeze mode '{self.freeze}' does not exist; allowed: {', '.join(FREEZE_MODES)}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ConfigError(f"device '{self.device}' is not supported; allowed: auto, cpu, cuda, cuda:N")
        for f in fields(self):  # inf and nan pass every comparison below the wrong way: refuse them first
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name.replace('_', ' ')} must be a finite number, got {value}")
        for name, low, high in (("epochs", 1, 10_000), ("batch_size", 1, 65_536), ("log_every", 1, 10**9),
                                ("processes", 1, 1024), ("step_size", 1, 10_000), ("patience", 0, 10_000),
                                ("seed", 0, 2**32 - 1), ("num_workers", -1, 256)):
            if not low <= int(getattr(self, name)) <= high:
                raise ConfigError(f"{name.replace('_', ' ')} must be from {low:,} to {high:,}, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        if not 0 < self.body_lr_factor <= 1:
            raise ConfigError(f"body learning-rate factor must be in (0, 1], got {self.body_lr_factor}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight decay must be ≥ 0, got {self.weight_decay}")
        if not 0 < self.train_ratio < 1:
            raise ConfigError(f"train ratio must be between 0 and 1, got {self.train_ratio}")
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"augmentation '{self.augment}' does not exist; allowed: {', '.join(AUGMENTATIONS)}")
        if self.flip and self.augment not in ("none", "flip"):
            raise ConfigError(f"--flip and --augment {self.augment} say different things; give one of them")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule '{self.schedule}' does not exist; allowed: {', '.join(SCHEDULES)}")
        if int(self.step_size) < 1 or not 0 < self.gamma <= 1 or int(self.patience) < 0:
            raise ConfigError(f"step size must be ≥ 1, gamma in (0, 1] and patience ≥ 0; got {self.step_size}, "
                              f"{self.gamma}, {self.patience}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision '{self.precision}' is not supported; allowed: fp32, bf16")
        if (self.data_root is None) == (self.lists_dir is None):
            raise ConfigError("give exactly one of a data root (class folders) or a lists folder (train.txt/test.txt)")
        return self

    @property
    def augmentation(self) -> str:
        """The preset in effect (``flip`` is the older spelling of ``augment flip``)."""
        return "flip" if self.flip else self.augment

    @property
    def uses_letterbox(self) -> bool:
        return self.letterbox or self.augmentation == "letterbox+flips"

    @property
    def body_partly_fixed(self) -> bool:
        """Part of the body is frozen (freeze head or last_block): its output can be computed once and cached."""
        return self.freeze != "all"

    @property
    def pretrained(self) -> bool:
        """The body starts from a weights file (False: random initialisation, training from scratch)."""
        return self.weights is not None


    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown settings {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"could not read config '{path}': {exc}") from None
