"""How a training run reads on a console: one line per record, progress on one line that updates in place.

The command line (``python -m core train``) and the app's training process (``core.jobs.worker``, whose output
is the run's worker.log) print the same stream the same way, through this module.
"""
from __future__ import annotations

import sys
import time

from ..platform.figures import accuracy_of, count, epoch_span, pct
from ..spec.records import VALIDATION, Batch, Epoch, Features, Final, Progress, Resumed, Start, Test
from ..spec.states import Phase


class ConsolePrinter:
    """Prints the record stream: one line per event, and progress as a single line that updates
    in place on a terminal (in a log file, a line every few seconds)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.open_line = False
        self.last_progress = 0.0

    def __call__(self, record) -> None:

        if isinstance(record, Progress):
            self._progress(record)
            return
        line = describe_record(record)
        if line:
            self._end_progress()
            print(line, file=self.stream, flush=True)

    def _progress(self, p) -> None:
        what = (f"features ({p.split})" if p.phase == Phase.FEATURES else
                f"cached features read ({p.split})" if p.phase == Phase.CACHED else
                f"{'validation' if p.split == 'val' else 'test'} pass (epoch {p.epoch})")
        text = f"{what}: {p.done}/{p.total} images, {p.images_per_s:.1f} images/s"
        if self.tty:
            print(f"\r{text}\033[K", end="", file=self.stream, flush=True)
            self.open_line = True
        elif time.time() - self.last_progress >= 5 or p.done >= p.total:
            self.last_progress = time.time()
            print(text, file=self.stream, flush=True)

    def _end_progress(self) -> None:
        if self.open_line:
            print(file=self.stream)
            self.open_line = False


def describe_record(record) -> str | None:
    """The console line for a record (None: nothing to print)."""

    if isinstance(record, Start):
        weights = record.weights or "none: random initialisation (training from scratch)"
        names = {"from folders": " (class names from the image folders)",
                 "numbered": " (class names numbered: the list files name no classes)"}.get(record.class_names, "")
        return (f"training {record.arch} on {record.device_name} ({record.feature_path}): {count(record.train_size)} "
                f"train / {count(record.val_size)} validation / {count(record.test_size)} test images, "
                f"{len(record.classes)} classes{names}\nweights: {weights}"
                + (f"\nvalidation: {record.validation}" if record.validation else "")
                + (f"\n{record.excluded} training image(s) left out as the config asks (lists/excluded.txt)"
                   if record.excluded else "")
                + (f"\ndecoding: {record.decoding}" if record.decoding else "")
                + "".join(f"\nstage {st['number']}: {st['trains']}, {epoch_span(st['first'], st['last'])} "
                          f"({st['schedule']} schedule)" for st in record.stages if isinstance(st, dict)
                          and {"number", "trains", "first", "last", "schedule"} <= set(st))
                + (f"\n{record.unusable_line()}" if record.unusable else ""))
    if isinstance(record, Resumed):
        return f"resumed after epoch {record.after_epoch}, from its checkpoint"
    if isinstance(record, Features):
        origin = "read from the cache" if record.from_disk else "computed"
        return (f"features for {record.split}: {record.images} images {origin} ({record.seconds:.1f}s)"
                + (f", {record.skipped_line()}" if record.skipped else ""))
    if isinstance(record, Batch):
        return f"epoch {record.epoch}  loss: {record.loss:>7f}  [{record.seen:>5d}/{record.total:>5d}]"
    if isinstance(record, Epoch):
        what = "validation" if record.evaluated == VALIDATION else "test"
        acc, loss = record.score
        if acc is None:
            return f"epoch {record.epoch} done: no {what} images"
        stage = f" (stage {record.stage})" if record.stage != 1 else ""
        return (f"epoch {record.epoch}{stage} done: train loss {record.train_loss:.4f}, {what} loss {loss:.4f}, "
                f"{what} accuracy {pct(acc)} ({record.seconds:.1f}s)")
    if isinstance(record, Test):
        return None  # the run's last line says it (the Final record carries the same figures)
    if isinstance(record, Final):
        ended = f"{record.status} after {record.seconds:.1f}s" + (f": {record.reason}" if record.reason else "")
        if record.test_acc is None and record.best_acc is not None:  # a run from before validation
            ended += f"\ntest accuracy {pct(record.best_acc)}, epoch {record.best_epoch} chosen on the test split"
        elif record.test_acc is not None:
            ended += "\n" + test_line(record.test_acc, record.test_n, record.best_epoch, record.chosen_on)
        elif record.epochs_completed:
            ended += "\ntest not evaluated"
        return ended
    return None


def test_line(acc: float | None, n: int, epoch: int | None, chosen_on: str) -> str:
    """``test accuracy 94.1% (95% CI 89.2–96.9%, 153 images), epoch 3 chosen on validation``."""

    interval = accuracy_of(acc, n)
    if interval is None:
        return "test accuracy: no test image could be evaluated"
    chosen = "chosen on validation" if chosen_on == "validation" else "the last epoch (nothing chosen)"
    return f"test accuracy {interval.text()}, epoch {epoch} {chosen}"
    return None


def print_records(stream, printer=None):
    """Print every record of a training stream; return the Final record. The stream is closed either way, so
    a failure here ends the run (its final record, its status) at once, not in the interpreter's teardown,
    where its clean-up could no longer start the threads it needs and the process would hang."""
    printer = printer or ConsolePrinter()
    final = None
    try:
        for record in stream:
            printer(record)
            final = record
    finally:
        stream.close()
    return final
