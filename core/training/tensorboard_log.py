"""TensorBoard event files beside every run, so ``tensorboard --logdir workspace/runs`` shows every run



Writing is best-effort: the run's own records (metrics.jsonl) are what the app reads. The first failure
(no tensorboard package, a full disk, a read-only folder) is said once on stderr (the console, or the
worker's log) and events stop; the run goes on.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..spec.records import Batch, Epoch, Final, Record, Resumed, Start


def _scalar_hparams(config: dict) -> dict:
    """What the hparams plugin can show: numbers, strings and booleans (lists as text)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif value is None:
            out[key] = "none"
        elif isinstance(value, (list, tuple)):
            out[key] = f"{len(value)} item(s)"
    return out


class TensorBoardLog:
    """Feed it the run's records (``write``); it writes events into ``folder``."""

    def __init__(self, folder: str | Path, config: dict, start: Start | None = None):
        self.folder, self.config = Path(folder), config
        self.writer: Any = None  # a SummaryWriter from the run's first record on
        self.failed = False
        self.batches_per_epoch = start.batches_per_epoch if isinstance(start, Start) else 1

    def write(self, record: Record) -> None:
        if self.failed:
            return
        try:
            self._write(record)
        except Exception as exc:  # best-effort: never fail the run for its events
            self.failed = True
            print(f"note: TensorBoard events are no longer written for this run ({type(exc).__name__}: "
                  f"{str(exc)[:200]}); the run goes on", file=sys.stderr, flush=True)
            self.close()

    def _write(self, record: Record) -> None:
        if isinstance(record, (Start, Resumed)):
            # deferred: TensorBoard takes about a second to import; only a run's event log needs it
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.folder), flush_secs=10)  # a resume adds an event file
            if isinstance(record, Start):
                self.batches_per_epoch = max(1, record.batches_per_epoch)
                self.writer.add_text("run", f"{record.arch} on {record.device_name} ({record.feature_path}); "
                                            f"{record.train_size} train / {record.test_size} test images", 0)
            return
        if self.writer is None:
            return
        if isinstance(record, Batch):
            step = (record.epoch - 1) * self.batches_per_epoch + record.batch
            self.writer.add_scalar("loss/batch", record.loss, step)
        elif isinstance(record, Epoch):
            for tag, value in (("loss/train", record.train_loss), ("loss/validation", record.val_loss),
                               ("accuracy/validation", record.val_acc), ("loss/test", record.test_loss),
                               ("accuracy/test", record.test_acc), ("learning_rate", record.lr)):
                if value is not None:
                    self.writer.add_scalar(tag, value, record.epoch)
            self.writer.flush()
        elif isinstance(record, Final):
            metrics = {"hparam/val_acc": record.val_acc, "hparam/test_acc": record.test_acc,
                       "hparam/test_ci_low": record.test_ci_low, "hparam/test_ci_high": record.test_ci_high,
                       "hparam/best_acc": record.best_acc}  # best_acc: runs from before validation
            self.writer.add_hparams(_scalar_hparams(self.config), {k: v for k, v in metrics.items() if v is not None}
                                    or {"hparam/test_acc": 0.0}, run_name=".")
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass
            self.writer = None
