"""Hyperparameters: one dataclass, saved with every checkpoint so a run can rebuild its model."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .archs import get_arch
from .errors import ConfigError
from .surgery import FREEZE_MODES

DEVICES = ("auto", "cpu", "cuda")


def default_num_workers() -> int:
    # Decoding JPEGs is the CPU bottleneck; leave one core for the main process.
    return max(0, min(4, (os.cpu_count() or 1) - 1))


@dataclass
class TrainConfig:
    arch: str = "resnet18"
    head_variant: str | None = None  # None: the architecture's first variant ("replace")
    freeze: str = "head"
    weights: str | None = None  # a state-dict file; None trains from scratch
    epochs: int = 5
    batch_size: int = 8
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    train_ratio: float = 0.6
    seed: int = 0
    num_workers: int = -1  # -1: default_num_workers()
    device: str = "auto"
    flip: bool = False  # random horizontal flip while training
    letterbox: bool = False  # the tutorial's preprocessing instead of resize + centre crop
    feature_cache: bool = True  # reuse backbone features when the backbone is frozen and inputs are fixed
    log_every: int = 10  # a batch record every this many batches
    data_root: str | None = None  # a class-folder root, split at start...
    lists_dir: str | None = None  # ...or a folder that already holds train.txt / test.txt / classes.json

    def validate(self) -> "TrainConfig":
        spec = get_arch(self.arch)
        spec.variant(self.head_variant)
        if self.freeze not in FREEZE_MODES:
            raise ConfigError(f"freeze mode '{self.freeze}' does not exist; allowed: {', '.join(FREEZE_MODES)}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ConfigError(f"device '{self.device}' is not supported; allowed: auto, cpu, cuda, cuda:N")
        for name, low in (("epochs", 1), ("batch_size", 1), ("log_every", 1)):
            if int(getattr(self, name)) < low:
                raise ConfigError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight decay must be ≥ 0, got {self.weight_decay}")
        if not 0 < self.train_ratio < 1:
            raise ConfigError(f"train ratio must be between 0 and 1, got {self.train_ratio}")
        if (self.data_root is None) == (self.lists_dir is None):
            raise ConfigError("give exactly one of a data root (class folders) or a lists folder (train.txt/test.txt)")
        return self

    @property
    def workers(self) -> int:
        return default_num_workers() if self.num_workers < 0 else self.num_workers

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
