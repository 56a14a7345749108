"""After training: which mistakes, why, and how sure the model really is.

    python -m core report RUN_DIR [--json OUT.json] [--tta flip|flip+crops]

``run_report`` reads a run folder (its records, the last finished epoch's test logits in
``test_outputs.npz``, its own test list) and returns a ``RunReport``: the confusion matrix and the
images behind each cell, the most confused pairs, per-class precision, recall, F1 and support
(scikit-learn's), the top losses and the least certain test images, and the calibration before and
after temperature scaling (``core.training.calibration``). It never runs the model. ``evaluate_tta`` does: it
measures accuracy and calibration of the checkpoint prediction uses, with and without test-time
augmentation, with progress. The Training page and the command line call the same two functions.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Generator

import numpy as np

from ..data.images import ImageError
from ..data.split import read_list_file, read_split
from ..platform.errors import RunError, not_finite_message
from ..platform.figures import accuracy_of
from ..runs.files import read_predictions, read_records, read_test_outputs
from ..runs.listing import RunInfo, read_run
from ..runs.rundir import RunDir
from ..spec.config import TTA_MODES
from ..spec.records import Records, Start
from ..spec.states import RunState
from ..training.calibration import Calibration, bound_note, calibrate, expected_calibration_error, softmax

SHOWN = 12  # top losses and least certain images listed
MOST_CONFUSED = 10


@dataclass(frozen=True)
class ClassScores:
    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Confused:
    true: str
    predicted: str
    count: int

    def sentence(self) -> str:
        return f"{self.true} taken for {self.predicted}: {self.count}"


@dataclass(frozen=True)
class TestImage:
    """One test image's outcome. ``loss`` and ``margin`` (top class minus runner-up) need the logits."""
    index: int
    path: str
    label: int
    pred: int
    prob: float  # of the predicted class
    loss: float | None = None
    margin: float | None = None

    @property
    def correct(self) -> bool:
        return self.label == self.pred


SHOWN_CLASSES = 30  # what a chart or table of a run draws, whatever the class count


@dataclass(frozen=True)
class ShownClasses:
    indices: list[int]  # the classes drawn, in class order
    total: int

    @property
    def hidden(self) -> int:
        return self.total - len(self.indices)

    def note(self) -> str:
        """"" when every class is drawn; else what is left out and where to see it."""
        if not self.hidden:
            return ""
        return (f"{len(self.indices)} of {self.total:,} classes shown (the ones in the most errors), and "
                f"{self.hidden:,} more: every class is in the report (python -m core report RUN --json FILE).")


@dataclass
class RunReport:
    run: str
    classes: list[str]
    epoch: int  # the epoch whose test pass this is
    state: str  # the run's state when read
    notes: list[str]  # what the figures cover, and what is missing and why
    confusion: list[list[int]]
    accuracy: float
    per_class: list[ClassScores]
    macro: ClassScores
    weighted: ClassScores
    most_confused: list[Confused]
    images: list[TestImage]  # every tested image, in test-list order
    top_losses: list[TestImage] = field(default_factory=list)
    least_certain: list[TestImage] = field(default_factory=list)
    calibration: Calibration | None = None
    temperature: float | None = None  # what the checkpoint prediction uses keeps (None: raw probabilities)
    temperature_epoch: int | None = None
    seconds: float = 0.0
    chosen_on: str = ""  # what chose the epoch: "validation", "last epoch", or the test split (older runs)
    val_accuracy: float | None = None  # the chosen epoch's, on validation

    @property
    def tested(self) -> int:
        return len(self.images)

    def shown_classes(self, limit: int = SHOWN_CLASSES) -> "ShownClasses":
        """The classes a page draws in its per-class chart, confusion matrix and score table: all of them up to
        ``limit``; beyond, the ``limit`` classes in the most errors (as true or predicted class; then the most
        test images), in class order. The report itself keeps every class."""
        n = len(self.classes)
        if n <= limit:
            return ShownClasses(list(range(n)), n)
        matrix = np.asarray(self.confusion)
        errors = matrix.sum(0) + matrix.sum(1) - 2 * np.diag(matrix)
        order = sorted(range(n), key=lambda c: (-int(errors[c]), -self.per_class[c].support, c))
        return ShownClasses(sorted(order[:limit]), n)

    def cell(self, true: int, predicted: int) -> list[TestImage]:
        """The test images of one confusion-matrix cell (true class row, predicted class column), most
        confident first."""
        return sorted((i for i in self.images if i.label == true and i.pred == predicted), key=lambda i: -i.prob)

    @property
    def test(self):
        """The test accuracy with its 95% interval (``core.platform.figures.Accuracy``)."""

        return accuracy_of(self.accuracy, self.tested)

    def to_json(self) -> dict:
        c = self.calibration
        test = self.test
        return {
            "run": self.run, "classes": self.classes, "epoch": self.epoch, "state": self.state, "notes": self.notes,
            "tested": self.tested, "accuracy": self.accuracy, "confusion": self.confusion,
            "accuracy_ci": [test.low, test.high] if test else None, "chosen_on": self.chosen_on,
            "val_accuracy": self.val_accuracy,
            "per_class": [{"class": s.name, "precision": s.precision, "recall": s.recall, "f1": s.f1,
                           "support": s.support} for s in self.per_class],
            "macro": _averages(self.macro), "weighted": _averages(self.weighted),
            "most_confused": [asdict(m) for m in self.most_confused],
            "top_losses": [self._image(i) for i in self.top_losses],
            "least_certain": [self._image(i) for i in self.least_certain],
            "ece": c.ece if c else None, "ece_calibrated": c.ece_calibrated if c else None,
            "temperature": self.temperature, "temperature_epoch": self.temperature_epoch,
            "temperature_fitted_here": c.temperature if c else None,
            "calibration_method": c.method if c else None,
            "reliability": [asdict(b) for b in c.bins] if c else [],
            "reliability_calibrated": [asdict(b) for b in c.bins_calibrated] if c else [],
        }

    def _image(self, i: TestImage) -> dict:
        return {"path": i.path, "true": self.classes[i.label], "predicted": self.classes[i.pred],
                "probability": i.prob, "loss": i.loss, "margin": i.margin}


def _averages(s: ClassScores) -> dict:
    return {"precision": s.precision, "recall": s.recall, "f1": s.f1, "support": s.support}


# ----------------------------------------------------------------------------- the figures
def class_scores(labels: np.ndarray, preds: np.ndarray, classes: list[str]) -> tuple[list[ClassScores], ClassScores,
                                                                                      ClassScores]:
    """Per-class precision, recall, F1 and support, and their macro and weighted averages (scikit-learn's;
    a class never predicted has precision 0, one never present recall 0, without warnings)."""
    # deferred: scikit-learn takes about a second to import; only this section needs it
    from sklearn.metrics import precision_recall_fscore_support

    every = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=every, zero_division=0)
    per_class = [ClassScores(name, float(a), float(b), float(c), int(d))
                 for name, a, b, c, d in zip(classes, p, r, f, s)]
    averages = []
    for average in ("macro", "weighted"):
        a, b, c, _ = precision_recall_fscore_support(labels, preds, labels=every, average=average, zero_division=0)
        averages.append(ClassScores(average, float(a), float(b), float(c), int(len(labels))))
    return per_class, averages[0], averages[1]


def most_confused(confusion: np.ndarray, classes: list[str], top: int = MOST_CONFUSED) -> list[Confused]:
    """The off-diagonal cells with images, most first (fastai's ``most_confused``)."""
    pairs = [(int(confusion[t, p]), t, p) for t in range(len(classes)) for p in range(len(classes))
             if t != p and confusion[t, p]]
    pairs.sort(key=lambda x: (-x[0], x[1], x[2]))
    return [Confused(classes[t], classes[p], n) for n, t, p in pairs[:top]]


def _outcomes(index: np.ndarray, labels: np.ndarray, logits: np.ndarray, paths: list[str],
              temperature: float | None = None) -> list[TestImage]:
    """Each tested image's outcome; probabilities (and the loss and margin from them) calibrated by
    ``temperature`` when the run has one, as prediction shows them."""
    probs = softmax(logits, temperature or 1.0)
    order = np.argsort(-probs, axis=1)
    top, second = order[:, 0], order[:, 1] if probs.shape[1] > 1 else order[:, 0]
    rows = np.arange(len(labels))
    loss = -np.log(np.clip(probs[rows, labels], 1e-300, None))
    margin = probs[rows, top] - (probs[rows, second] if probs.shape[1] > 1 else 0.0)
    return [TestImage(int(i), paths[i], int(t), int(p), float(probs[k, p]), float(loss[k]), float(margin[k]))
            for k, (i, t, p) in enumerate(zip(index, labels, top))]


def _test_paths(run: RunDir) -> list[str]:
    try:
        return [path for path, _ in read_list_file(run.lists / "test.txt")]
    except (OSError, RunError, ValueError) as exc:
        raise RunError(f"the run's own test list ({run.lists / 'test.txt'}) cannot be read: {exc}") from None


def _stored_temperature(run: RunDir, notes: list[str]) -> tuple[float | None, int | None]:
    """The temperature of the checkpoint prediction uses, and its epoch (None: a run from before, raw). A
    checkpoint that cannot be read leaves the rest of the report standing, with a note."""
    # deferred: prediction imports torch; the report reads the run's files without it
    from ..inference.predict import read_temperature

    try:
        return read_temperature(run.path)
    except RunError as exc:
        notes.append(f"the checkpoint prediction uses cannot be read, so its temperature is unknown: {exc}")
        return None, None


def run_report(run_dir: str | os.PathLike) -> RunReport:
    """The report of a run's last finished epoch; RunError (DamagedRun included) when it cannot be made."""
    t0 = time.time()
    run = RunDir(run_dir)
    info, records = _reportable(run)
    assert records.start is not None  # _reportable refuses a run without its start
    classes, epochs = list(records.start.classes), records.epochs
    paths = _test_paths(run)
    outputs = read_test_outputs(run, len(classes), len(paths))
    temperature_notes: list[str] = []
    temperature, temperature_epoch = _stored_temperature(run, temperature_notes)
    if outputs is not None and len(outputs.index):
        if not np.isfinite(outputs.logits).all():
            raise RunError(not_finite_message(run.path.name).replace("gave outputs", "gave test outputs"))
        images = _outcomes(outputs.index, outputs.label, outputs.logits, paths, temperature)
        epoch = outputs.epoch  # written before the epoch's record: it may be one ahead of the records
    else:
        predictions = read_predictions(run, len(classes))
        if not predictions:
            raise RunError("this run kept no test predictions, so there is nothing to report")
        images = [TestImage(p.index, paths[p.index] if p.index < len(paths) else p.path, p.label, p.pred, p.prob)
                  for p in predictions]
        epoch = epochs[-1].epoch
    notes = _coverage_notes(info.status, epoch, records, outputs)
    images.sort(key=lambda i: i.index)
    labels = np.array([i.label for i in images])
    preds = np.array([i.pred for i in images])
    # deferred: scikit-learn takes about a second to import; only this section needs it
    from sklearn.metrics import confusion_matrix

    confusion = confusion_matrix(labels, preds, labels=list(range(len(classes))))
    per_class, macro, weighted = class_scores(labels, preds, classes)
    report = RunReport(str(run.path), classes, epoch, info.status.value, notes, confusion.tolist(),
                       float((labels == preds).mean()), per_class, macro, weighted, most_confused(confusion, classes),
                       images)
    report.chosen_on, report.val_accuracy = records.chosen_on, records.val_acc
    if outputs is not None and len(outputs.index):
        report.top_losses = sorted(images, key=lambda i: (-(i.loss or 0.0), i.index))[:SHOWN]
        report.least_certain = sorted(images, key=lambda i: (i.margin, i.index))[:SHOWN]
    report.notes += temperature_notes
    report.temperature, report.temperature_epoch = temperature, temperature_epoch
    _add_calibration(report, records.start, outputs, explained=bool(temperature_notes))
    report.seconds = time.time() - t0
    return report


def _reportable(run: RunDir) -> tuple[RunInfo, Records]:
    """The run's listing and records, or RunError saying why it has no report (yet)."""
    info = read_run(run.path)
    if info.status is RunState.DAMAGED:
        raise RunError(f"this run is damaged: {info.reason}")
    records = read_records(run)
    if records.start is None or not records.epochs:
        raise RunError("this run has no finished epoch yet: the report covers the model it keeps")
    if records.start.val_size and records.test is None:
        raise RunError("the test split is evaluated once, when training ends, on the epoch chosen on validation; "
                       "this run's report comes then" if info.status.busy or info.status is RunState.QUEUED else
                       "test not evaluated: the run was stopped before its test pass finished, so there is no test "
                       "report (resume it, and the test pass runs at its end)")
    return info, records


def _add_calibration(report: RunReport, start: Start, outputs, *, explained: bool) -> None:
    """The reliability figures with the stored temperature (fitted on validation) and what to know about them."""
    on_validation = bool(start.val_size) and report.temperature is not None
    if outputs is not None and len(outputs.index):
        order = np.argsort(outputs.index)
        report.calibration = calibrate(outputs.logits[order], outputs.label[order],
                                       temperature=report.temperature if on_validation else None,
                                       fitted_on=f"the {start.val_size:,} validation images")
    if report.temperature is None and not explained:
        report.notes.append("no validation split (val ratio 0): no temperature is fitted, so predictions show raw "
                            "probabilities, labelled as such" if start.validation else
                            "this run's checkpoint keeps no temperature (trained before calibration was added): "
                            "its predictions show raw probabilities, labelled as such")
    if report.temperature_epoch and report.temperature_epoch != report.epoch:
        report.notes.append(f"prediction uses the checkpoint of epoch {report.temperature_epoch}, with its own "
                            f"temperature; this report covers epoch {report.epoch}")
    if report.calibration is not None and report.calibration.at_bound:
        report.notes.append(bound_note(report.calibration.temperature))


def _coverage_notes(state: RunState, last_epoch: int, records, outputs) -> list[str]:
    notes, start = [], records.start
    if records.test is not None:  # the one test pass, on the kept model: whatever the state, it covers that
        chosen = ("chosen on validation" if records.test.chosen_by == "validation"
                  else "the last one (nothing is chosen without a validation split)")
        notes.append(f"the test split's one pass, on the model of epoch {records.test.epoch}, {chosen}")
    elif state.busy:
        notes.append(f"the run is still training: this covers epoch {last_epoch}, the last finished one")
    elif state is RunState.STOPPED:
        notes.append(f"the run was stopped: this covers epoch {last_epoch}, the last one it finished")
    elif state is RunState.FAILED:
        notes.append(f"the run failed: this covers epoch {last_epoch}, the last one it finished")
    if not start.validation and records.epochs:
        notes.append("an older run: its kept epoch was chosen on the test split, so its test figures are optimistic")
    if outputs is None:
        notes.append("no test logits were kept for this run (a run from before they were, or more test images × "
                     "classes than are kept): top losses, least certain and calibration need them")
    if start.test_size < 2:
        notes.append(f"{start.test_size} test image(s): every figure here rests on almost nothing")
    return notes


# ----------------------------------------------------------------------------- test-time augmentation
@dataclass(frozen=True)
class TTAResult:
    mode: str
    epoch: int  # of the checkpoint evaluated (the one prediction uses)
    images: int
    accuracy: float
    ece: float
    tta_accuracy: float
    tta_ece: float
    calibrated: bool  # the ECEs are of probabilities scaled by the checkpoint's temperature
    unreadable: int
    seconds: float
    note: str = ""  # when the views differ from what the mode's name says (a letterboxed run's flip+crops)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TTAProgress:
    done: int
    total: int


def evaluate_tta(run_dir: str | os.PathLike, mode: str = "flip", *, device: str = "auto",
                 batch_images: int = 4) -> Generator[TTAProgress, None, TTAResult]:
    """Accuracy and ECE of the checkpoint prediction uses on the run's test images, plain and with test-time
    augmentation ``mode``, in one pass (the plain view is one of the augmented views). A generator of
    TTAProgress; returns a TTAResult. Runs the model: seconds to minutes on a CPU."""
    # deferred: the report reads the run's files without torch; only test-time augmentation runs the model
    import torch

    from ..inference.predict import Predictor  # deferred too: prediction imports torch

    if mode not in TTA_MODES:
        raise RunError(f"test-time augmentation '{mode}' does not exist; allowed: {', '.join(TTA_MODES)}")
    t0 = time.time()
    run = RunDir(run_dir)
    predictor = Predictor.load(run.path, device=device)
    samples = read_split(run.lists).test  # labels as the run trained them (list files without classes.json: dense)
    if not samples:
        raise RunError("the run's test list is empty: nothing to evaluate")
    plain, augmented, labels, unreadable = [], [], [], 0
    yield TTAProgress(0, len(samples))
    for start in range(0, len(samples), batch_images):
        views, kept = [], []
        for path, label in samples[start:start + batch_images]:
            try:
                views.append(predictor.views(predictor.open(path), mode))
                kept.append(label)
            except ImageError:
                unreadable += 1
        if views:
            per_image = views[0].shape[0]
            probs = predictor.batch_probabilities(torch.cat(views)).view(len(views), per_image, -1)
            plain.append(probs[:, 0])
            augmented.append(probs.mean(1))
            labels += kept
        yield TTAProgress(min(start + batch_images, len(samples)), len(samples))
    if not labels:
        raise RunError("none of the run's test images could be read")
    y = np.array(labels)
    p_plain, p_tta = torch.cat(plain).numpy(), torch.cat(augmented).numpy()
    return TTAResult(mode, predictor.epoch, len(y), float((p_plain.argmax(1) == y).mean()),
                     expected_calibration_error(p_plain, y), float((p_tta.argmax(1) == y).mean()),
                     expected_calibration_error(p_tta, y), predictor.temperature is not None, unreadable,
                     time.time() - t0, predictor.transform.tta_note(mode))


def report_stamp(run_dir: str | os.PathLike) -> tuple:
    """What the report depends on, for a cache: sizes and times of the run's files."""
    run = RunDir(run_dir)
    stamp = []
    for path in (run.metrics, run.test_outputs, run.predictions, run.best, run.last, run.status_file,
                 run.lists / "test.txt"):
        try:
            st = path.stat()
            stamp.append((path.name, st.st_size, st.st_mtime_ns))
        except OSError:
            stamp.append((path.name, None, None))
    return tuple(stamp)

