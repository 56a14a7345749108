"""Reading a run's records and outputs back: ``metrics.jsonl``, ``predictions.json`` and ``test_outputs.npz``, each
checked (bounded sizes, shapes that fit the run, finite logits) before use; a damaged file is a ``DamagedRun``
naming it.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..platform.io import open_regular, parse_json, read_regular_bytes
from ..spec.records import Epoch, Prediction, RecordError, Records, Test, cells_of, parse_record
from .checkpoint import checkpoint_damage
from .rundir import DamagedRun, RunDir
from .status import read_run_json


def read_records(run: RunDir | str | os.PathLike) -> Records:
    """Every complete record of ``metrics.jsonl``; raises DamagedRun naming the line and the reason.

    A last line without its newline is being written right now and is left for the next read.
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    try:
        data = read_regular_bytes(run.metrics, MAX_METRICS_BYTES)
    except FileNotFoundError:
        return Records(())
    except OSError as exc:
        raise DamagedRun(run.metrics.name, f"cannot be read ({exc.strerror})") from None
    items = []
    for number, raw in enumerate(data.split(b"\n")[:-1], 1):
        if not raw.strip():
            continue
        try:
            record = parse_record(parse_json(raw.decode("utf-8")))
        except UnicodeDecodeError:
            raise DamagedRun(run.metrics.name, f"line {number} is not valid UTF-8") from None
        except RecordError as exc:
            raise DamagedRun(run.metrics.name, f"line {number}: {exc}") from None
        except ValueError:
            raise DamagedRun(run.metrics.name, f"line {number} is not JSON") from None
        if record is not None:
            items.append(record)
    if items and items[0].type != "start":
        raise DamagedRun(run.metrics.name, f"the first record is '{items[0].type}', not 'start'")
    if items:
        _check_shapes(run, items)
    return Records(tuple(items))


def _check_shapes(run: RunDir, items: list) -> None:
    """Per-class lists and the confusion matrix index the class list: each must fit the classes."""
    classes = items[0].classes
    if not isinstance(classes, list) or not 0 < len(classes) <= 100_000:
        raise DamagedRun(run.metrics.name, "the start record's class list is not 1 to 100,000 names")
    n = len(classes)
    for item in items:
        if isinstance(item, (Epoch, Test)) and not (
                isinstance(item.per_class_acc, list) and len(item.per_class_acc) == n and _fits(item.confusion, n)):
            what = f"epoch {item.epoch}'s" if isinstance(item, Epoch) else "the test record's"
            raise DamagedRun(run.metrics.name, f"{what} per-class figures are not for {n} classes")


def _fits(confusion, num_classes: int) -> bool:
    try:
        cells_of(confusion, num_classes)
    except ValueError:
        return False
    return True


def _is_prediction(p, num_classes: int | None) -> bool:
    def label(v) -> bool:  # an index into the class list
        return type(v) is int and 0 <= v < (num_classes if num_classes is not None else 10**6)

    return (isinstance(p, dict) and isinstance(p.get("path"), str) and label(p.get("label")) and label(p.get("pred"))
            and type(p.get("index", 0)) is int and p.get("index", 0) >= 0
            and isinstance(p.get("prob"), (int, float)) and 0 <= p["prob"] <= 1)


def read_predictions(run: RunDir, num_classes: int | None = None) -> list[Prediction]:
    """The last epoch's test predictions (path, label, pred, prob, index), each checked: labels are class
    indices (below ``num_classes`` when given), the probability lies in [0, 1]."""
    data = read_run_json(run.predictions, "the test predictions")
    if data is None:
        return []
    if not isinstance(data, list) or not all(_is_prediction(p, num_classes) for p in data):
        raise DamagedRun(run.predictions.name, "it is not a list of this run's test predictions")
    return [Prediction(p.get("index", 0), p["label"], p["pred"], float(p["prob"]), p["path"]) for p in data]


@dataclass(frozen=True)
class TestOutputs:
    """The last finished epoch's test pass as ``test_outputs.npz`` keeps it: for each tested image its index in
    the test list, its true class and the logits (float32, one per class)."""
    epoch: int
    index: "np.ndarray"
    label: "np.ndarray"
    logits: "np.ndarray"


TEST_OUTPUT_KEYS = ("epoch", "index", "label", "logits")


def read_test_outputs(run: RunDir, num_classes: int, test_images: int) -> TestOutputs | None:
    """The stored test logits, each array checked (shapes agree, labels and indices in range, logits finite);
    None when the run has none (a run from before they were kept, or one too large to keep them)."""

    name = run.test_outputs.name
    try:
        _check_array_headers(run.test_outputs, num_classes, test_images)  # before anything is decompressed
        with open_regular(run.test_outputs) as f, np.load(f, allow_pickle=False) as data:
            arrays = {key: data[key] for key in TEST_OUTPUT_KEYS}
    except FileNotFoundError:
        return None
    except DamagedRun:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise DamagedRun(name, f"it cannot be read as this run's test outputs ({type(exc).__name__})") from None
    epoch, index, label, logits = (arrays[key] for key in TEST_OUTPUT_KEYS)
    n = len(index) if index.ndim == 1 else -1
    problem = (
        "the epoch is not one whole number" if epoch.shape != () or epoch.dtype.kind not in "iu" else
        "the indices are not one list of whole numbers" if n < 0 or index.dtype.kind not in "iu" else
        f"the logits are not {n} rows of {num_classes} classes" if logits.shape != (n, num_classes)
        or logits.dtype.kind != "f" else
        "the labels do not match the indices" if label.shape != (n,) or label.dtype.kind not in "iu" else
        f"a label is not one of the {num_classes} classes" if n and (label.min() < 0 or label.max() >= num_classes) else
        f"an index lies outside the {test_images} test images" if n and (index.min() < 0 or index.max() >= test_images)
        else "an index appears twice" if len(np.unique(index)) != n else
        "a logit is not a finite number" if not np.isfinite(logits).all() else "")
    if problem:
        raise DamagedRun(name, problem)
    return TestOutputs(int(epoch), index, label, logits.astype(np.float32, copy=False))


MAX_METRICS_BYTES = 1024**3  # a run of 10,000 epochs writes a small fraction of this


def _check_array_headers(path: Path, num_classes: int, test_images: int) -> None:
    """Every array's shape and type from its .npy header, and every member's declared size, checked against what
    this run can hold (at most ``test_images`` rows of ``num_classes`` logits) before any array is loaded, so a
    crafted file (a zip bomb, a header promising 10^12 rows) costs nothing to refuse."""

    limits = {"epoch": 1, "index": test_images, "label": test_images, "logits": test_images * num_classes}
    with open_regular(path) as f, zipfile.ZipFile(f) as archive:
        for key, most in limits.items():
            info = archive.getinfo(f"{key}.npy")
            with archive.open(info) as f:
                version = np.lib.format.read_magic(f)
                reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)
                shape, _, dtype = reader(f)
            cells = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if dtype.hasobject or dtype.itemsize > 8 or cells > most or info.file_size > most * 8 + 4096:
                raise DamagedRun(path.name, f"its {key} array ({shape}, {dtype}, {info.file_size:,} bytes) is larger "
                                            f"than this run's {test_images:,} test images × {num_classes:,} classes")


def check_test_outputs(run: RunDir) -> None:
    # a glance, as for the checkpoints: a zip holding the arrays; the report checks them in full
    if not run.test_outputs.is_file():
        return
    try:
        with zipfile.ZipFile(run.test_outputs) as archive:
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        raise DamagedRun(run.test_outputs.name, "it is not this run's test outputs (damaged or cut short)") from None
    missing = [key for key in TEST_OUTPUT_KEYS if f"{key}.npy" not in names]
    if missing:
        raise DamagedRun(run.test_outputs.name, f"it lacks {', '.join(missing)}")


def check_checkpoints(run: RunDir) -> None:
    for path in (run.best, run.last):
        if path.is_file():
            damage = checkpoint_damage(path)
            if damage:
                raise DamagedRun(path.name, damage)
