"""Predictions on a labelled folder, scored: new images whose sub-folders name the model's classes give the same
figures as a run's test report (accuracy with its 95% interval, per-class precision and recall, the confusion
matrix, the misclassified images), for data the model never saw.

The true class of an image is the nearest folder above it whose name is one of the model's classes (so
``new/ants/a.jpg`` and ``batch.zip → batch/bees/b.png`` both work); images under no such folder are left out of
the figures and counted. ``python -m core predict RUN FOLDER`` and the Prediction page both call
``score_predictions`` on the rows of ``predict_many``.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Collection

import numpy as np

from ..platform.errors import UserError
from ..platform.figures import Accuracy, accuracy
from .report import ClassScores, Confused, class_scores, most_confused

MISCLASSIFIED_KEPT = 1000  # misclassified images kept in the report (the figures count every one)


@dataclass(frozen=True)
class ScoredImage:
    path: str
    name: str  # as the user gave it: the path inside their folder or zip
    label: int
    pred: int
    probability: float

    @property
    def correct(self) -> bool:
        return self.label == self.pred


@dataclass
class FolderScore:
    classes: list[str]
    confusion: list[list[int]]
    correct: int
    scored: int
    per_class: list[ClassScores]
    macro: ClassScores
    weighted: ClassScores
    most_confused: list[Confused]
    misclassified: list[ScoredImage]  # most confident mistakes first, at most MISCLASSIFIED_KEPT
    unlabelled: list[str] = field(default_factory=list)  # names of images under no folder named as a class
    unreadable: int = 0
    seen_in_training: int = 0  # scored images the run trained or chose on (its train and validation lists)

    @property
    def accuracy(self) -> Accuracy:
        result = accuracy(self.correct, self.scored)
        assert result is not None  # a FolderScore is only made with at least one scored image
        return result

    def summary(self) -> str:
        """One line: the accuracy with its interval, and what was left out."""
        left = []
        if self.unlabelled:
            left.append(f"{len(self.unlabelled):,} under no folder named as a class")
        if self.unreadable:
            left.append(f"{self.unreadable:,} unreadable")
        seen = (f". {self.seen_in_training:,} of them are in the run's training or validation list: for them this "
                "is not a test" if self.seen_in_training else "")
        return (f"Accuracy on these labelled images: {self.accuracy.text()}"
                + (f"; left out: {', '.join(left)}" if left else "") + seen)

    def to_json(self) -> dict:
        a = self.accuracy
        return {"classes": self.classes, "scored": self.scored, "accuracy": a.value, "correct": a.correct,
                "accuracy_ci": [a.low, a.high], "interval": "Wilson, 95%", "confusion": self.confusion,
                "per_class": [{"class": s.name, "precision": s.precision, "recall": s.recall, "f1": s.f1,
                               "support": s.support} for s in self.per_class],
                "macro": asdict(self.macro), "weighted": asdict(self.weighted),
                "most_confused": [asdict(m) for m in self.most_confused],
                "misclassified": [{"path": i.name, "true": self.classes[i.label], "predicted": self.classes[i.pred],
                                   "probability": i.probability} for i in self.misclassified],
                "unlabelled": self.unlabelled, "unreadable": self.unreadable,
                "seen_in_training": self.seen_in_training}


def label_of(name: str, classes: list[str]) -> int | None:
    """The class of an image by the nearest folder above it named as one of ``classes`` (exact name first, then
    ignoring case); None when there is none."""
    index = {c: i for i, c in enumerate(classes)}
    folded = {c.casefold(): i for i, c in reversed(list(enumerate(classes)))}
    for folder in reversed(PurePosixPath(name).parts[:-1]):
        if folder in index:
            return index[folder]
        if folder.casefold() in folded:
            return folded[folder.casefold()]
    return None


def score_predictions(rows, names: dict[str, str], classes: list[str], seen: Collection[str] = ()
                      ) -> FolderScore | None:
    """The figures of ``rows`` (``predict_many``'s, in any order) whose ``names`` (path → the name the user knows,
    relative to their folder) place them under a class's folder; None when no image is. ``seen``: the real paths of
    the run's training and validation images (``trained_on``), counted among the scored so the figure says what it
    is."""
    position = {c: i for i, c in enumerate(classes)}
    scored, unlabelled, unreadable = [], [], 0
    for row in rows:
        name = names.get(row.path, row.path)
        label = label_of(name, classes)
        if label is None:
            unlabelled.append(name)
        elif row.error or row.top_class not in position:
            unreadable += 1
        else:
            scored.append(ScoredImage(row.path, name, label, position[row.top_class], float(row.probability)))
    if not scored:
        return None
    labels = np.array([s.label for s in scored])
    preds = np.array([s.pred for s in scored])
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (labels, preds), 1)
    per_class, macro, weighted = class_scores(labels, preds, classes)
    wrong = sorted((s for s in scored if not s.correct), key=lambda s: (-s.probability, s.name))
    known = set(seen)
    seen_count = sum(os.path.realpath(s.path) in known for s in scored) if known else 0
    return FolderScore(list(classes), confusion.tolist(), int((labels == preds).sum()), len(scored), per_class, macro,
                       weighted, most_confused(confusion, classes), wrong[:MISCLASSIFIED_KEPT], unlabelled, unreadable,
                       seen_count)


def trained_on(run_dir: str | os.PathLike) -> set[str]:
    """The real paths of a run's training and validation images (empty for a checkpoint file or unreadable lists)."""
    # deferred: the run folder's reader is only needed when scoring against a run folder
    from ..data.split import read_list_file
    from ..runs.rundir import RunDir

    run = RunDir(run_dir)
    found: set[str] = set()
    for name in ("train.txt", "val.txt", "excluded.txt"):
        try:
            found |= {os.path.realpath(path) for path, _ in read_list_file(run.lists / name)}
        except (UserError, OSError):
            continue
    return found
