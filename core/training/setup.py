"""``Setup``: everything the epoch loop needs, built once from the config by ``train.set_up``.

Its own module so that the feature path and the trainer both name it without importing each other.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..data.split import Split
from ..models.surgery import SurgeryReport
from ..platform.accel import inference_copy
from ..platform.distributed import SINGLE, World, total
from ..runs.rundir import RunDir
from ..spec.archs import get_arch
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
    eval_tf: object
    train_tf: object
    autocast: Callable
    use_cache: bool
    threads: int
    workers: int
    world: World = SINGLE
    _feature_model: nn.Module | None = None

    @property
    def head(self) -> nn.Module:
        return self.model.get_submodule(self.report.head_name)

    @property
    def selects(self) -> bool:
        """A validation split chooses the kept epoch, early stopping and the temperature; without one (val ratio
        0) nothing is chosen: the last epoch is kept and the test split is evaluated every epoch."""
        return bool(self.split.val)

    @property
    def cut(self) -> str:
        """The module whose input the feature pass caches: the head, or with freeze 'last_block' the last stage."""
        return self.report.head_name if self.cfg.freeze == "head" else get_arch(self.cfg.arch).cut

    @property
    def feature_model(self) -> nn.Module:
        """The model with BatchNorm folded, for the feature pass through its frozen part only (it never trains)."""
        if self._feature_model is None:
            self._feature_model = inference_copy(self.model)
        return self._feature_model

    @property
    def feature_precision(self) -> str:
        """bf16 on CUDA (tensor cores; its own cache entries), else what the config asks (fp32 by default)."""
        return "bf16" if self.device.type == "cuda" or self.cfg.precision == "bf16" else "fp32"

    def feature_autocast(self):
        if self.feature_precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def check_stop(self) -> None:
        """Stop when asked. Under torchrun rank 0 reads the STOP file and every rank learns it at the same
        batch (a collective: all ranks call this at the same points)."""
        asked = self.world.main and self.run.stop_requested()
        if self.world.active:
            asked = bool(total(torch.tensor([int(asked)]), self.world).item())
        if asked:
            raise StopRequested()
