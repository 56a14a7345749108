"""The records a training run emits, one JSON object per line of ``metrics.jsonl``.

Each kind is a small frozen dataclass. ``to_json`` gives the line's object (with its
``"type"``), ``parse_record`` turns an object back into a record and says precisely what
is wrong with one that is not a record, so a damaged file is reported, never crashed on.
The page, the CLI, the run listing and the tests read attributes, not string keys.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, TypeVar, Union

from .states import Phase, RunState

T = TypeVar("T")
R = TypeVar("R")
Y = TypeVar("Y")


class RecordError(ValueError):
    """A line of metrics.jsonl that is not a valid record; the message says why."""


@dataclass(frozen=True)
class Prediction:
    """One test image's prediction, as predictions.json stores it: its index in the test list, its true class
    (``label``), the predicted class (``pred``) and that class's probability; ``path`` once written."""
    index: int
    label: int
    pred: int
    prob: float
    path: str = ""

    @property
    def wrong(self) -> bool:
        return self.label != self.pred

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(record, name: str, kind: type[Enum]) -> None:
    """A field read from JSON as a plain string becomes its enum; a value that is none of them does not fit."""
    try:
        object.__setattr__(record, name, kind(getattr(record, name)))
    except ValueError:
        raise TypeError(f"{name} {getattr(record, name)!r} is not one of {', '.join(k.value for k in kind)}") from None


@dataclass(frozen=True)
class _Record:
    type: ClassVar[str] = ""

    def to_json(self) -> dict:
        return {"type": self.type, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict):
        known = {f.name: f for f in dataclasses.fields(cls)}
        required = [n for n, f in known.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise RecordError(f"a '{cls.type}' record lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Start(_Record):
    type: ClassVar[str] = "start"
    arch: str
    classes: list
    train_size: int
    test_size: int
    epochs: int
    batches_per_epoch: int
    device: str
    device_name: str
    feature_path: str  # "cached features" (the head trains on stored backbone outputs) or "full forward"
    trainable_params: int
    frozen_params: int
    weights: str | None  # where the body's weights came from; None: random initialisation
    time: float
    class_names: str = "given"  # how the class names were found (for list files without classes.json)
    threads: int | None = None
    workers: int | None = None
    world_size: int = 1  # processes training together (torchrun)
    class_weights: list | None = None  # the loss's per-class weights, when they are on
    excluded: int = 0  # training images the config left out (label suspects); see lists/excluded.txt
    decoding: str = ""  # how images are decoded (reduced-scale JPEG decoding, the GPU's share); "" before it was said
    val_size: int = 0  # validation images: every choice reads them; 0: none (val ratio 0, or a run from before)
    validation: str = ""  # where the validation split came from, in one line; "" in runs from before it existed
    unusable: int = 0  # list entries that are missing or not files (a folder, a FIFO, a device): skipped
    unusable_examples: list = field(default_factory=list)  # the first few, each "path (why)"
    stages: list = field(default_factory=list)  # the fine_tune recipe's stages ({number, first, last, trains,
    # schedule}); [] for one stage

    @property
    def pretrained(self) -> bool:
        return self.weights is not None

    def unusable_line(self) -> str:
        """"" when every list entry is a file; else how many are not, named (the first few)."""
        if not self.unusable:
            return ""
        more = self.unusable - len(self.unusable_examples)
        return (f"{self.unusable:,} list entr{'y' if self.unusable == 1 else 'ies'} cannot be images and "
                f"{'is' if self.unusable == 1 else 'are'} skipped: " + "; ".join(self.unusable_examples)
                + (f"; and {more:,} more" if more > 0 else ""))

    @classmethod
    def from_json(cls, data: dict):
        if "feature_path" not in data and "path" in data:  # run folders written before the rename
            data = {**data, "feature_path": data["path"]}
        return super().from_json(data)


@dataclass(frozen=True)
class Progress(_Record):
    """Sign of life inside a long phase: backbone features of one split, or a test pass."""
    type: ClassVar[str] = "progress"
    phase: Phase
    done: int
    total: int
    images_per_s: float
    split: str = "test"
    epoch: int | None = None
    time: float = field(default_factory=time.time)

    def __post_init__(self):
        _coerce(self, "phase", Phase)


@dataclass(frozen=True)
class Features(_Record):
    type: ClassVar[str] = "features"
    split: str
    images: int
    skipped: int
    from_disk: bool
    seconds: float  # this split's own time, not a running total
    time: float = field(default_factory=time.time)
    skipped_examples: list = field(default_factory=list)  # the first few skipped (unreadable) images' paths

    def skipped_line(self) -> str:
        """"" when nothing was skipped; else how many images could not be read, named (the first few)."""
        if not self.skipped:
            return ""
        more = self.skipped - len(self.skipped_examples)
        return (f"{self.skipped:,} unreadable image(s) skipped"
                + (": " + ", ".join(self.skipped_examples) if self.skipped_examples else "")
                + (f" and {more:,} more" if more > 0 and self.skipped_examples else ""))


@dataclass(frozen=True)
class Batch(_Record):
    type: ClassVar[str] = "batch"
    epoch: int
    batch: int
    loss: float
    seen: int
    total: int
    time: float = field(default_factory=time.time)


VALIDATION, TEST = "validation", "test"  # the split an epoch's figures were measured on


def confusion_cells(confusion) -> dict:
    """A confusion matrix (true class rows, predicted columns) as ``{"cells": [[true, pred, count], …]}``, its
    non-zero cells: what an epoch and the test record keep, so a line of metrics.jsonl grows with the images
    evaluated, never with classes² (at 1,000 classes the dense matrix was a million numbers per epoch)."""
    # deferred: this module is used without torch (the split, listing runs, --help); importing it costs seconds
    import torch

    matrix = torch.as_tensor(confusion)
    return {"cells": [[t, p, int(matrix[t, p])] for t, p in matrix.nonzero().tolist()]}


def class_counts(confusion, num_classes: int) -> list[int]:
    """Images of each true class of a recorded confusion matrix."""
    counts = [0] * num_classes
    for t, _, n in cells_of(confusion, num_classes):
        counts[t] += n
    return counts


def cells_of(confusion, num_classes: int) -> list[tuple[int, int, int]]:
    """The non-zero cells ``(true, pred, count)`` of a recorded confusion matrix: ``{"cells": …}``, or the dense
    rows runs wrote before; ValueError when it is neither, for ``num_classes`` classes."""
    if isinstance(confusion, dict) and set(confusion) == {"cells"} and isinstance(confusion["cells"], list):
        cells = confusion["cells"]
        if len(cells) <= num_classes * num_classes and all(
                isinstance(c, list) and len(c) == 3 and all(type(v) is int for v in c)
                and 0 <= c[0] < num_classes and 0 <= c[1] < num_classes and c[2] > 0 for c in cells):
            return [tuple(c) for c in cells]
    elif isinstance(confusion, list) and len(confusion) == num_classes and all(
            isinstance(row, list) and len(row) == num_classes and all(type(v) is int and v >= 0 for v in row)
            for row in confusion):
        return [(t, p, n) for t, row in enumerate(confusion) for p, n in enumerate(row) if n]
    raise ValueError(f"not a confusion matrix of {num_classes} classes")


@dataclass(frozen=True)
class Epoch(_Record):
    """One epoch: its training loss and the figures of the split it was evaluated on (``evaluated``): the
    validation split, which chooses; or, with no validation split (val ratio 0, and runs from before it
    existed), the test split, as the tutorial prints it every epoch. ``per_class_acc``, ``confusion`` (its
    non-zero cells, ``confusion_cells``; runs written before them hold the dense matrix) and ``tested``
    describe that split."""
    type: ClassVar[str] = "epoch"
    epoch: int
    train_loss: float
    test_loss: float | None
    test_acc: float | None
    per_class_acc: list
    confusion: dict | list  # {"cells": [[true, pred, count], …]}; dense rows in older runs
    tested: int
    skipped_images: int
    seconds: float
    best: bool  # the epoch the kept checkpoint comes from, so far (chosen on ``evaluated``)
    images_per_s: float | None = None
    lr: float | None = None  # the learning rate this epoch trained with (after the schedule)
    time: float = field(default_factory=time.time)
    val_loss: float | None = None
    val_acc: float | None = None
    evaluated: str = TEST
    stage: int = 1  # the stage this epoch trained in (the fine_tune recipe's 1 or 2)

    @property
    def score(self) -> tuple[float | None, float | None]:
        """(accuracy, loss) on the split this epoch was evaluated on: what chose."""
        return (self.val_acc, self.val_loss) if self.evaluated == VALIDATION else (self.test_acc, self.test_loss)


@dataclass(frozen=True)
class Test(_Record):
    """The test split's figures for the checkpoint predictions use, measured once per run: after the last
    epoch (or an early stop, or a Stop) on the epoch chosen on validation; with no validation split, the last
    epoch's own test pass. ``per_class_n``: test images of each class."""
    type: ClassVar[str] = "test"
    __test__: ClassVar[bool] = False  # a record, not a test case for pytest to collect
    epoch: int
    chosen_by: str  # "validation" or "last epoch"
    loss: float | None
    acc: float | None
    tested: int
    ci_low: float | None
    ci_high: float | None
    per_class_acc: list
    per_class_n: list
    confusion: dict | list  # as in Epoch
    skipped: int = 0
    val_acc: float | None = None  # the chosen epoch's validation accuracy
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Final(_Record):
    type: ClassVar[str] = "final"
    status: RunState  # completed, stopped or failed
    reason: str
    epochs_completed: int
    final_acc: float | None  # runs from before validation: the last epoch's test accuracy (None now)
    best_acc: float | None  # runs from before validation: the best epoch's test accuracy (None now)
    best_epoch: int | None  # the epoch predictions use
    seconds: float
    device: str | None = None
    device_name: str | None = None
    feature_path: str | None = None
    skipped_images: int = 0
    time: float = field(default_factory=time.time)
    val_acc: float | None = None  # the chosen epoch's validation accuracy
    test_acc: float | None = None  # measured once, on the chosen epoch's checkpoint (None: not evaluated)
    test_ci_low: float | None = None
    test_ci_high: float | None = None
    test_n: int = 0
    chosen_on: str = ""  # "validation", "last epoch", or "test split (older run)"

    def __post_init__(self):
        _coerce(self, "status", RunState)

    @classmethod
    def from_json(cls, data: dict):
        if "feature_path" not in data and "path" in data:
            data = {**data, "feature_path": data["path"]}
        return super().from_json(data)


@dataclass(frozen=True)
class Resumed(_Record):
    """A stopped or failed run continues here, from the checkpoint of ``after_epoch``; the records before it
    stay as they were (the ``final`` of the interrupted part included)."""
    type: ClassVar[str] = "resumed"
    after_epoch: int
    time: float


Record = Union[Start, Progress, Features, Batch, Epoch, Test, Final, Resumed]


KINDS: dict[str, Any] = {k.type: k for k in (Start, Progress, Features, Batch, Epoch, Test, Final, Resumed)}
CHOSEN_ON_TEST = "test split (older run)"  # runs from before the validation split chose their epoch on test


def parse_record(data) -> Record | None:
    """The record ``data`` holds; None for a kind this version does not know (newer writers)."""
    if not isinstance(data, dict):
        raise RecordError(f"expected a JSON object, found {type(data).__name__}")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise RecordError("the object has no 'type'")
    cls = KINDS.get(kind)
    if cls is None:
        return None
    try:
        return cls.from_json(data)
    except TypeError as exc:
        raise RecordError(f"a '{kind}' record does not fit: {exc}") from None


@dataclass(frozen=True)
class Records:
    """A run's records, grouped, with the questions pages ask of them answered once."""
    items: tuple

    @property
    def start(self) -> Start | None:
        return next((r for r in self.items if isinstance(r, Start)), None)

    @property
    def final(self) -> Final | None:
        """The run's end; None while it trains (a resumed run's earlier final no longer holds)."""
        return self._since_resume(Final)

    def _since_resume(self, kind: type[R]) -> R | None:
        """The newest record of ``kind`` written since the run last resumed (a resume measures again)."""
        for record in reversed(self.items):
            if isinstance(record, kind):
                return record
            if isinstance(record, Resumed):
                return None
        return None

    def of(self, kind: type) -> list:
        return [r for r in self.items if isinstance(r, kind)]

    @property
    def epochs(self) -> list[Epoch]:
        return self.of(Epoch)

    @property
    def batches(self) -> list[Batch]:
        return self.of(Batch)

    @property
    def latest_progress(self) -> Progress | None:
        """The newest progress record, if nothing else has happened since."""
        last = self.items[-1] if self.items else None
        return last if isinstance(last, Progress) else None

    @property
    def test(self) -> Test | None:
        """The test figures of the run's kept model; None until measured (a resume measures again at its end)."""
        return self._since_resume(Test)

    @property
    def chosen(self) -> Epoch | None:
        """The epoch whose checkpoint predictions use."""
        return next((e for e in reversed(self.epochs) if e.best), self.epochs[-1] if self.epochs else None)

    @property
    def chosen_on(self) -> str:
        """What chose the kept epoch: "validation", "last epoch", or for runs from before, the test split."""
        if self.test is not None:
            return self.test.chosen_by
        start = self.start
        if start is not None and start.validation:
            return VALIDATION if start.val_size else "last epoch"
        return CHOSEN_ON_TEST if self.epochs else ""

    @property
    def val_acc(self) -> float | None:
        chosen = self.chosen
        return chosen.val_acc if chosen is not None else None

    @property
    def test_acc(self) -> float | None:
        """The run's test accuracy: measured once on the kept model; for a run from before validation existed,
        its kept (best-on-test) epoch's, which ``chosen_on`` marks."""
        if self.test is not None:
            return self.test.acc
        if self.chosen_on == CHOSEN_ON_TEST and self.chosen is not None:
            return self.chosen.test_acc
        return None

    @property
    def test_n(self) -> int:
        if self.test is not None:
            return self.test.tested
        return self.chosen.tested if self.chosen_on == CHOSEN_ON_TEST and self.chosen is not None else 0

    @property
    def best_epoch(self) -> int | None:
        chosen = self.chosen
        return chosen.epoch if chosen is not None else None


# ----------------------------------------------------------------------------- how progress is reported
PROGRESS_EVERY_S = 1.0  # a Progress record at least this often inside a long phase


class ProgressMeter:
    """Turns per-batch counts into Progress records, at most one per PROGRESS_EVERY_S (plus first and last)."""

    def __init__(self, phase: Phase, total: int, split: str = "test", epoch: int | None = None):
        self.phase, self.total, self.split, self.epoch = phase, total, split, epoch
        self.t0 = self.last = time.time()
        self.done = 0

    def first(self) -> Progress:
        return self._record()

    def advance(self, n: int) -> Progress | None:
        self.done = min(self.total, self.done + n)
        now = time.time()
        if now - self.last >= PROGRESS_EVERY_S or self.done >= self.total:
            self.last = now
            return self._record()
        return None

    def _record(self) -> Progress:
        elapsed = time.time() - self.t0
        return Progress(phase=self.phase, split=self.split, epoch=self.epoch, done=self.done, total=self.total,
                        images_per_s=self.done / elapsed if elapsed > 0 and self.done else 0.0)


def relay(stream: Generator[Y, None, T], each: Callable[[Y], Iterable[R]]) -> Generator[R, None, T]:
    """Yield what ``each`` makes of every item ``stream`` yields, and return what ``stream`` returns (a ``for``
    loop would lose it). The stream is closed either way, so a Stop between items ends it at once."""
    try:
        while True:
            try:
                item = next(stream)
            except StopIteration as finished:
                return finished.value
            yield from each(item)
    finally:
        stream.close()


def metered(counts: Generator[int, None, T], meter: ProgressMeter) -> Generator[Progress, None, T]:
    """Relay a generator that yields counts of work done (images, steps) as ``meter``'s Progress records."""
    def records(n: int) -> list[Progress]:
        record = meter.advance(n)
        return [record] if record else []

    return (yield from relay(counts, records))


def follow(stream, on_record=None):
    """Run a generator of records (progress, batches, steps) to its end, handing each to ``on_record``;
    returns the generator's return value (``return report`` in it). The generator is closed either way, so
    an interruption (a page's Stop, Ctrl-C) runs its clean-up at once."""
    def handed(record) -> tuple:
        if on_record is not None:
            on_record(record)
        return ()

    try:
        next(relay(stream, handed))  # nothing is relayed, so the first step runs the stream to its end
    except StopIteration as finished:
        return finished.value
    raise AssertionError("unreachable: relay yields nothing here")
