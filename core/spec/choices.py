"""The named choices of a run's settings, each one enum: the fine-tune mode, the learning-rate schedule, the
augmentation preset and the feature pass's precision.

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


class Augment(Choice):
    NONE = "none"
    FLIP = "flip"
    CROP_FLIP = "crop+flip"  # the PyTorch tutorial's RandomResizedCrop + horizontal flip
    LETTERBOX_FLIPS = "letterbox+flips"  # the recipe's letterbox with horizontal and vertical flips


class Precision(Choice):
    FP32 = "fp32"
    BF16 = "bf16"
