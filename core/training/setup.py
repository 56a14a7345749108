"""``Setup``: everything the epoch loop needs, built once from the config by ``train.set_up``.

Its own module so that the feature path and the trainer both name it without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..data.datasets import Preprocess
from ..data.split import Split
from ..models.surgery import SurgeryReport
from ..platform.distributed import SINGLE, World, total
from ..runs.rundir import RunDir
from ..spec.config import TrainConfig


class StopRequested(Exception):
    """The user pressed Stop: the epoch loop ends at the next batch and the run is kept as stopped."""


@dataclass
class Setup:
    """Everything the epoch loop needs, built once from the config."""
    cfg: TrainConfig
    run: RunDir
    device: torch.device
    split: Split
    model: nn.Module
    report: SurgeryReport
    eval_tf: Preprocess
    train_tf: Preprocess
    autocast: Callable
    use_cache: bool
    threads: int
    workers: int
    world: World = SINGLE

    @property
    def head(self) -> nn.Module:
        return self.model.get_submodule(self.report.head_name)

    @property
    def selects(self) -> bool:
        """A validation split chooses the kept epoch, early stopping and the temperature; without one (val ratio
        0) nothing is chosen: the last epoch is kept and the test split is evaluated every epoch."""
        return bool(self.split.val)

    def check_stop(self) -> None:
        """Stop when asked. Under torchrun rank 0 reads the STOP file and every rank learns it at the same
        batch (a collective: all ranks call this at the same points)."""
        asked = self.world.main and self.run.stop_requested()
        if self.world.active:
            asked = bool(total(torch.tensor([int(asked)]), self.world).item())
        if asked:
            raise StopRequested()
