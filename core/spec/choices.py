"""The named choices of a run's settings, each one enum: the fine-tune mode, the recipe (one stage or two), the
optimiser, the learning-rate schedule, the augmentation preset and the feature pass's precision.

They are ``str`` enums, like the run states: written to config.json and checkpoints as their plain values
("head", "cosine"), equal to those strings, and formatted as them in messages, so configs written before these
types existed read the same. (The device stays a checked string: "cuda:3" is one of unboundedly many.)
"""
from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A value out of a fixed set that reads and writes as its plain string."""

    def __str__(self) -> str:  # "head", not "Freeze.HEAD", in f-strings and messages
        return self.value

    __format__ = str.__format__  # type: ignore[assignment]  # formats as its value, like a str

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)


class Freeze(Choice):
    """What trains: the new head only (the tutorial's fine-tuning), the body's last stage too, or every layer."""

    HEAD = "head"
    LAST_BLOCK = "last_block"
    ALL = "all"


class Schedule(Choice):
    NONE = "none"
    STEP = "step"  # StepLR: × gamma every step-size epochs
    COSINE = "cosine"  # to 0 over the epochs
    ONE_CYCLE = "one_cycle"  # OneCycleLR: warm up to lr, then anneal to almost 0, stepped every batch

    @property
    def per_batch(self) -> bool:
        """Stepped after every batch (one-cycle) rather than after every epoch."""
        return self is Schedule.ONE_CYCLE


class Optimizer(Choice):
    SGD = "sgd"  # the tutorial's
    ADAMW = "adamw"  # fastai's default: Adam with decoupled weight decay


class Recipe(Choice):
    """How many stages a run trains in."""

    SINGLE = "single"  # one stage: what the freeze mode says trains, for every epoch
    FINE_TUNE = "fine_tune"  # stage 1 the head on cached features, stage 2 the last stage too, on cached activations


class Augment(Choice):
    NONE = "none"
    FLIP = "flip"
    CROP_FLIP = "crop+flip"  # the PyTorch tutorial's RandomResizedCrop + horizontal flip
    LETTERBOX_FLIPS = "letterbox+flips"  # the recipe's letterbox with horizontal and vertical flips


class Precision(Choice):
    FP32 = "fp32"
    BF16 = "bf16"
