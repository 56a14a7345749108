"""``RunDir``: the one place that names a run folder's files.

A run folder holds ``config.json`` (written once, by whoever creates the run), ``status.json`` (written only by the
training process: state, pid, phase, heartbeat; see ``status``), ``metrics.jsonl`` (one record per line, see
``core.spec.records``), ``surgery.json``, ``checkpoint_last.pt``/``checkpoint_best.pt`` (see ``checkpoint``),
``model_<arch>.pth``, ``predictions.json``, ``test_outputs.npz``, ``summary.json``, the copied ``lists/``, the
claims, and, when asked, ``STOP``. Every reader treats every file as possibly damaged or half written by another
process at this moment: a damaged run is reported as ``damaged``, with the file and the reason, and never raises.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..platform.errors import ConfigError, RunError
from ..spec.config import TrainConfig

RESUME_LOCK = ".resume.lock"  # in a run folder: held while a resume looks at and writes its claim


DISPATCH_LOCK = ".dispatch.lock"  # in a runs folder: held while one process counts slots and starts runs


class DamagedRun(RunError):
    """A file of a run folder cannot be read; the message names the file and the reason."""

    def __init__(self, file: str, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason


@dataclass(frozen=True, init=False)
class RunDir:
    """A run's folder and the name of every file in it."""

    path: Path

    def __init__(self, path: str | os.PathLike):
        object.__setattr__(self, "path", Path(path))

    config = property(lambda self: self.path / "config.json")
    status_file = property(lambda self: self.path / "status.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    summary = property(lambda self: self.path / "summary.json")
    surgery = property(lambda self: self.path / "surgery.json")
    predictions = property(lambda self: self.path / "predictions.json")
    test_outputs = property(lambda self: self.path / "test_outputs.npz")  # the last epoch's test logits
    last = property(lambda self: self.path / "checkpoint_last.pt")
    best = property(lambda self: self.path / "checkpoint_best.pt")
    lists = property(lambda self: self.path / "lists")
    stop_flag = property(lambda self: self.path / "STOP")
    claim_file = property(lambda self: self.path / "claimed")  # made once, by whoever starts a queued run
    log = property(lambda self: self.path / "worker.log")
    error = property(lambda self: self.path / "error.txt")

    def resume_claim(self, attempt: int) -> Path:
        """Made by the resume numbered ``attempt`` (the run's count of final records when it began)."""
        return self.path / f"resume-{attempt}.claim"

    def rank_error(self, rank: int) -> Path:
        return self.path / f"error-rank{rank}.txt"  # a failure of another process than rank 0

    def rank_errors(self) -> list[Path]:
        return sorted(self.path.glob("error-rank*.txt"))

    def export_file(self, arch: str, suffix: str) -> Path:
        return self.path / f"model_{arch}{suffix}"  # an exported model (TorchScript .pt, ONNX .onnx)
    name = property(lambda self: self.path.name)

    def plain_state_dict(self, arch: str) -> Path:
        return self.path / f"model_{arch}.pth"  # the tutorial's file: a bare state dict

    def checkpoint(self) -> Path | None:
        """The checkpoint predictions use: the best epoch's, else the last one's."""
        return next((p for p in (self.best, self.last) if p.is_file()), None)

    def stop_requested(self) -> bool:
        return self.stop_flag.exists()

    def request_stop(self) -> None:
        self.stop_flag.touch()

    def holds_run(self) -> bool:
        return any(p.exists() for p in (self.config, self.status_file, self.metrics, self.summary))


def load_config(run: RunDir) -> TrainConfig:
    try:
        return TrainConfig.load(run.config)
    except ConfigError as exc:
        raise DamagedRun(run.config.name, str(exc)) from None
