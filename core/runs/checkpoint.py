"""A run's checkpoint (``checkpoint_last.pt``, ``checkpoint_best.pt``): one typed record, one writer and one reader.

The trainer writes one after every epoch (``write_checkpoint``); prediction, export, the report's temperature and
resume read it (``read_checkpoint``). The file is what ``torch.save`` makes of ``Checkpoint.to_dict()``: plain
tensors, numbers, strings, lists and dicts, so it loads with ``weights_only`` and older files keep reading. A file
is hostile until read: a foreign or damaged one is a ``RunError`` naming it; the fields a resume needs are kept as
the file holds them, and ``training.run`` checks them against the run before anything starts.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..platform.errors import RunError, UserError
from ..platform.io import atomic_torch_save, foreign_zip, torch_load_tensors
from ..spec.config import TrainConfig

if TYPE_CHECKING:
    import torch

MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]  # the state dict
    epoch: int | None  # the epoch it was written after (None: a file that does not say)
    classes: list[str]
    config: dict  # TrainConfig.to_dict() as written; ``train_config()`` checks it
    metrics: dict = field(default_factory=dict)  # the epoch record
    temperature: float | None = None  # softmax(logits / T) calibrates; None: written before calibration
    temperature_fitted_on: str | None = None
    # What a resume needs to go on exactly as if the run had never stopped; as the file holds them (checked there).
    optimizer: Any = None
    scheduler: Any = None
    rng: Any = None
    inputs: Any = None  # SHA-256 of the run's config and list files when it was written

    def to_dict(self) -> dict:
        calibration = ({"temperature": self.temperature, "temperature_fitted_on": self.temperature_fitted_on}
                       if self.temperature is not None else {})  # none fitted (val ratio 0): no such keys, as before
        return {"model": self.model, "optimizer": self.optimizer, "epoch": self.epoch, "classes": self.classes,
                "config": self.config, "metrics": self.metrics, **calibration, "scheduler": self.scheduler,
                "rng": self.rng, "inputs": self.inputs}

    def train_config(self, path: str | Path = "the checkpoint") -> TrainConfig:
        try:
            return TrainConfig.from_saved(self.config)
        except (UserError, TypeError) as exc:
            raise RunError(f"'{path}' is not a checkpoint written by this tool ({exc})") from None


def write_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    """Written atomically: a reader sees the old file or the new one, never half of one."""
    atomic_torch_save(checkpoint.to_dict(), path)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint at ``path``; RunError naming the file when it is foreign, damaged or not one."""
    foreign = foreign_zip(path)
    if foreign:
        raise RunError(f"'{path}' is {foreign}, not a checkpoint")
    try:
        data = torch_load_tensors(path)
    except Exception as exc:  # torch.load fails in many ways on a damaged or foreign file
        raise RunError(f"'{path}' is damaged or not a checkpoint: it cannot be read ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise RunError(f"'{path}' holds a {type(data).__name__}, not a checkpoint")
    model, classes, config = data.get("model"), data.get("classes", []), data.get("config", {})
    if not isinstance(model, dict) or not isinstance(classes, list) or not isinstance(config, dict):
        raise RunError(f"'{path}' is not a checkpoint written by this tool (no model, classes or config)")
    epoch = data.get("epoch")
    return Checkpoint(model, epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
                      [str(c) for c in classes], config,
                      metrics=data["metrics"] if isinstance(data.get("metrics"), dict) else {},
                      temperature=_temperature(data.get("temperature"), path),
                      temperature_fitted_on=str(data["temperature_fitted_on"])
                      if data.get("temperature_fitted_on") is not None else None,
                      optimizer=data.get("optimizer"), scheduler=data.get("scheduler"), rng=data.get("rng"),
                      inputs=data.get("inputs"))


def checkpoint_damage(path: str | Path) -> str:
    """Why ``path`` cannot be a checkpoint, without loading a tensor ("" when it may be one): the listing of runs
    calls this for every run. torch.save writes a zip archive holding '<name>/data.pkl', whose directory at the end
    is cheap to read and tells a checkpoint from a cut-short file or some other zip renamed .pt."""
    if not zipfile.is_zipfile(path):
        return "it is not a PyTorch checkpoint (damaged or cut short)"
    foreign = foreign_zip(path)
    return f"it is {foreign}, not a PyTorch checkpoint" if foreign else ""


def _temperature(value, path) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            MIN_TEMPERATURE <= float(value) <= MAX_TEMPERATURE):
        raise RunError(f"'{path}' holds a temperature of {value!r}; a calibrating one is a number from "
                       f"{MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g}")
    return float(value)
