"""Training as a stream of typed records (``core.spec.records``).

``train(config, run_dir)`` creates a run folder and yields a ``Start`` record, ``Progress``
records during every long phase (backbone features, test passes), a ``Batch`` record every
``log_every`` batches, an ``Epoch`` record after each test pass and a ``Final`` record,
appending each to ``metrics.jsonl`` as it happens. ``run_training(run)`` does the same for a
run folder someone else created (the app's worker). The page, the CLI and the tests all
consume this one stream. The training process alone writes ``status.json``, with a
heartbeat. There is no global state, so it can run under torchrun.

The layout follows torchvision's reference ``train.py``: set up, choose the feature path
(cached backbone outputs or the full forward pass), a short epoch loop, a checkpointer.
"""
from __future__ import annotations

import hashlib
import io
import math
import shutil
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.datasets import decoding_line, training_transform
from ..data.split import (
    LIST_FILES,
    MAX_TRAINED_CLASSES,
    Edits,
    Split,
    carve_validation,
    read_list_file,
    read_split,
    split_dataset,
    unusable_entries,
    write_split,
)
from ..features.extractor import FeatureExtractor, evaluation_transform
from ..models.surgery import adapt_model, freeze_model, set_train_mode, trained_modules, trains_in
from ..platform.accel import (
    as_input,
    available_cores,
    configure_device,
    plan_threads,
    resolve_device,
    skip_dynamo_import,
    to_channels_last,
)
from ..platform.distributed import SINGLE, World, barrier, device_line, gather_all, total
from ..platform.errors import RunError
from ..platform.figures import accuracy_of, count, pct
from ..platform.io import (
    MAX_LIST_BYTES,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_regular_bytes,
    torch_load_tensors,
)
from ..runs.checkpoint import Checkpoint, write_checkpoint
from ..runs.rundir import RunDir
from ..spec.archs import get_arch
from ..spec.config import Stage, TrainConfig
from ..spec.records import (
    TEST,
    VALIDATION,
    Batch,
    Epoch,
    Prediction,
    Progress,
    ProgressMeter,
    Record,
    Start,
    Test,
    class_counts,
    confusion_cells,
)
from ..spec.states import Phase
from .calibration import fit_temperature
from .feature_path import FeaturePath
from .optim import make_optimizer, make_schedule
from .setup import Setup, StopRequested


class NonFiniteLoss(Exception):
    pass


class EarlyStop(Exception):
    """The validation accuracy stopped improving: the run ends as completed, with this reason."""


# ----------------------------------------------------------------------------- setup
def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def prepare_lists(cfg: TrainConfig, run: RunDir, allowed_roots=None, world: World = SINGLE,
                  written: bool = False) -> Split:
    """Copy (or make) the list files into the run, so a later re-split cannot change this run.

    ``allowed_roots`` confines a run the app started for a visitor to the folders it may read.
    Under torchrun rank 0 writes them and the other ranks read what it wrote. ``written``: the run has its
    lists already (a resumed run): they are read as they are.
    """
    if world.main and not written:
        _write_lists(cfg, run, allowed_roots)
        if cfg.exclude:
            _leave_out(run, set(cfg.exclude))
    barrier(world)
    split = read_split(run.lists)
    if not split.train:
        raise RunError("the training list is empty; add images or change the split")
    if len(split.classes) > MAX_TRAINED_CLASSES:
        raise RunError(f"the lists name {len(split.classes):,} classes; a run trains at most {MAX_TRAINED_CLASSES:,} "
                       "(each evaluation counts a classes × classes confusion matrix in memory)")
    present = sorted({split.classes[label] for _, label in split.train})
    if len(present) < 2:  # one class: every answer is right, and "100.0%" would mean nothing
        raise RunError(f"the training list holds images of {len(present)} class ({', '.join(present) or 'none'}); a "
                       "classifier needs at least two classes to tell apart, so its accuracy would mean nothing. "
                       "Add a folder (or list lines) for another class")
    return split


CARVED_NOTE = "carved.txt"  # in a run's lists/: how the run carved validation from a train.txt without val.txt


def validation_line(cfg: TrainConfig, run: RunDir, split: Split) -> str:
    """Where this run's validation split came from, in one line (the Start record and the console say it)."""
    if not split.val:
        return ("none (val ratio 0): the last epoch is kept, nothing is chosen, and the test split is evaluated "
                "after every epoch, as the tutorial does")
    n = count(len(split.val), "image")
    carved = run.lists / CARVED_NOTE
    if carved.is_file():
        return read_regular_bytes(carved, 4096).decode("utf-8", "replace").strip()[:300]
    if cfg.data_root and split.val_ratio is not None:
        return (f"{n}: {pct(split.val_ratio, 0)} of each class's training images (seed {cfg.seed}); every choice "
                "reads them, the test split is evaluated once at the end")
    return f"{n} as given ({split.given_by or 'val.txt'}); every choice reads them, the test split is evaluated once"


def _carved(cfg: TrainConfig, folder: Path) -> tuple[list, list, list[str], dict[int, str]]:
    """Validation carved from the train.txt of ``folder`` (which has no val.txt), seeded: (train, val, notes, the
    class name of each label as the files write it)."""
    # the labels as the files write them (without classes.json, read_split renumbers them: the carved lists must
    # keep the user's numbers, as test.txt does)
    given = read_list_file(folder / "train.txt")
    split = read_split(folder)
    if (folder / "classes.json").is_file():
        names = dict(enumerate(split.classes))
    else:  # split.classes name the labels that occur in any list, in label order
        labels = {label for _, label in given + read_list_file(folder / "test.txt")}
        names = dict(zip(sorted(labels), split.classes))
    train, val, notes = carve_validation(given, names, cfg.val_ratio, cfg.seed)
    return train, val, notes, names


def training_list(cfg: TrainConfig, allowed_roots=None) -> tuple[list[tuple[str, int]], list[str]]:
    """The images a run of ``cfg`` trains on (its validation share and the excluded images left out) and the
    class names, as ``prepare_lists`` would make them, without a run folder (the learning-rate finder's)."""
    if cfg.data_root:
        split = split_dataset(cfg.data_root, cfg.train_ratio, cfg.seed, val_ratio=cfg.val_ratio,
                              allowed_roots=allowed_roots, keep_together=[list(g) for g in cfg.keep_together],
                              edits=Edits.of_config(cfg))
        train, classes = split.train, split.classes
    else:
        assert cfg.lists_dir is not None  # a config names one or the other (TrainConfig checks it)
        split = read_split(cfg.lists_dir)
        train, classes = split.train, split.classes
        if not split.has_val_list and cfg.val_ratio > 0:
            carved, _, _, names = _carved(cfg, Path(cfg.lists_dir))
            position = {label: i for i, label in enumerate(sorted(names))}  # as read_split numbers them
            train = [(path, position[label]) for path, label in carved]
    excluded = set(cfg.exclude)
    train = [(path, label) for path, label in train if path not in excluded]
    if not train:
        raise RunError("the training list is empty; add images or change the split")
    return train, list(classes)


def _carve_for_old_lists(cfg: TrainConfig, run: RunDir) -> None:
    """List files without val.txt (the tutorial's): carve validation from the copied train.txt, seeded, and keep
    the lists the run used in its own folder, saying so."""
    train, val, notes, _ = _carved(cfg, run.lists)
    atomic_write_text(run.lists / "train.txt", "".join(f"{p}\t{label}\n" for p, label in train))
    atomic_write_text(run.lists / "val.txt", "".join(f"{p}\t{label}\n" for p, label in val))
    line = (f"{count(len(val), 'image')} carved from train.txt, which has no val.txt: {pct(cfg.val_ratio, 0)} of "
            f"each class (seed {cfg.seed}); the lists this run used are in its lists/ folder")
    atomic_write_text(run.lists / CARVED_NOTE, "\n".join([line, *notes]) + "\n")


def _write_lists(cfg: TrainConfig, run: RunDir, allowed_roots) -> None:
    if cfg.data_root:
        split = split_dataset(cfg.data_root, cfg.train_ratio, cfg.seed, val_ratio=cfg.val_ratio,
                              allowed_roots=allowed_roots, keep_together=[list(g) for g in cfg.keep_together],
                              edits=Edits.of_config(cfg))
        write_split(split, run.lists, overwrite=True)
    else:
        assert cfg.lists_dir is not None  # a config names one or the other (TrainConfig checks it)
        given = read_split(cfg.lists_dir)  # validates before copying
        run.lists.mkdir(parents=True, exist_ok=True)
        for name in LIST_FILES:
            if (Path(cfg.lists_dir) / name).is_file():
                shutil.copyfile(Path(cfg.lists_dir) / name, run.lists / name)
        if not given.has_val_list and cfg.val_ratio > 0:
            _carve_for_old_lists(cfg, run)


EXCLUDED_LIST = "excluded.txt"


def _leave_out(run: RunDir, exclude: set[str]) -> None:
    """Drop the config's excluded paths from the run's own train list, and keep the dropped lines beside it
    (``excluded.txt``), so the run says what it left out. The test list stays whole."""
    lines = read_regular_bytes(run.lists / "train.txt", MAX_LIST_BYTES).decode("utf-8").splitlines(keepends=True)
    kept = [line for line in lines if line.rpartition("\t")[0] not in exclude]
    dropped = [line for line in lines if line.rpartition("\t")[0] in exclude]
    atomic_write_text(run.lists / "train.txt", "".join(kept))
    atomic_write_text(run.lists / EXCLUDED_LIST, "".join(dropped))


def excluded_count(run: RunDir) -> int:
    try:
        return sum(1 for line in read_regular_bytes(run.lists / EXCLUDED_LIST, MAX_LIST_BYTES).decode("utf-8")
                   .splitlines() if line)
    except (OSError, UnicodeDecodeError):
        return 0


def set_up(cfg: TrainConfig, run: RunDir, allowed_roots=None, world: World = SINGLE, phase=lambda text: None,
           resuming: bool = False) -> Setup:
    """Everything a run needs before its first record; ``phase`` hears each step's name (for the status)."""
    if world.active and cfg.staged and not FeatureExtractor.may_train_on_features(cfg):
        raise RunError("the fine_tune recipe trains in several processes on cached features only: give augment "
                       "none and the feature cache, run one process, or give --recipe single")
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world.active:
        device = torch.device("cuda", world.local_rank)  # one GPU per local rank
    configure_device(device)
    threads, workers = plan_threads(cfg.num_workers, cuda=device.type == "cuda", cores=_cores_per_rank(world))
    torch.set_num_threads(threads)
    phase("scanning the images and copying the list files")
    split = prepare_lists(cfg, run, allowed_roots, world, written=resuming)
    phase(f"building {cfg.arch}" + (" and loading its weights" if cfg.weights else ""))
    model, report = adapt_model(cfg.arch, len(split.classes), weights=cfg.weights, head_variant=cfg.head_variant,
                                freeze=cfg.freeze, seed=cfg.seed)
    if world.main:
        atomic_write_json(run.surgery, report.to_dict())
    to_channels_last(model.to(device))
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext
    return Setup(cfg, run, device, split, model, report, eval_tf=evaluation_transform(cfg),
                 train_tf=training_transform(get_arch(cfg.arch).transforms(), cfg.augmentation,
                                             letterbox=cfg.uses_letterbox),
                 autocast=autocast, use_cache=FeatureExtractor.may_train_on_features(cfg),
                 threads=threads, workers=workers, world=world)


def _cores_per_rank(world: World) -> int:
    """Processes on one machine share its cores."""

    return max(1, available_cores() // world.local_size)


def start_record(s: Setup) -> Start:
    unusable, examples = unusable_entries([*s.split.train, *s.split.val, *s.split.test])
    return Start(arch=s.cfg.arch, classes=s.split.classes, train_size=len(s.split.train),
                 test_size=len(s.split.test), epochs=s.cfg.total_epochs,
                 stages=[stage_line(stage, s.report) for stage in s.cfg.stages()] if s.cfg.staged else [],
                 batches_per_epoch=math.ceil(len(s.split.train) / s.cfg.batch_size), device=str(s.device),
                 device_name=device_line(s.device, device_name(s.device), s.world), world_size=s.world.size,
                 feature_path="cached features" if s.use_cache else "full forward",
                 trainable_params=s.report.trainable_count, frozen_params=s.report.frozen_count,
                 weights=s.cfg.weights, time=time.time(), class_names=s.split.class_names,
                 threads=s.threads, workers=s.workers,
                 class_weights=class_weights(s.split) if s.cfg.class_weights else None,
                 excluded=excluded_count(s.run),
                 decoding=decoding_line(s.eval_tf, gpu=s.device.type == "cuda"),
                 val_size=len(s.split.val), validation=validation_line(s.cfg, s.run, s.split),
                 unusable=unusable, unusable_examples=examples)


# ----------------------------------------------------------------------------- one epoch
@dataclass
class EpochTotals:
    loss: float
    seen: int
    skipped: int
    seconds: float


def _finite_or_stop(loss_sum: torch.Tensor, epoch: int, batch: int, world: World = SINGLE) -> float:
    """The loss summed so far (over all ranks under torchrun, so every rank stops together on a NaN)."""
    value = total(loss_sum.clone(), world).item()  # the one CPU-GPU sync of a logging step
    if not math.isfinite(value):
        raise NonFiniteLoss(f"the loss became {value} by epoch {epoch}, batch {batch}; lower the learning rate")
    return value


def train_one_epoch(s: Setup, path: FeaturePath, optimizer, criterion, epoch: int, batch_schedule=None
                    ) -> Generator[Batch, None, EpochTotals]:
    """Yield Batch records; return the epoch's totals (``totals = yield from train_one_epoch(…)``). A
    ``batch_schedule`` (one-cycle) is stepped after every batch.

    The loss is summed on the device and read back once per logging step and once at the end, not
    every batch: on a GPU each read waits for all queued work. A non-finite loss still ends the run
    at the next logging step.
    """
    loss_sum = torch.zeros((), device=s.device)
    seen = skipped = batch = 0
    t0 = time.time()
    for batch, (inputs, labels, _, n_skipped) in enumerate(path.train_loader, 1):
        skipped += n_skipped
        s.check_stop()
        if inputs is None:
            continue
        inputs, labels = as_input(inputs, s.device), labels.to(s.device, non_blocking=True)
        with s.autocast():
            loss = criterion(path.forward(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if batch_schedule is not None:  # one-cycle: stepped every batch
            batch_schedule.step()
        seen += len(labels)
        loss_sum += loss.detach().float() * len(labels)
        if batch % s.cfg.log_every == 0:
            _finite_or_stop(loss_sum, epoch, batch, path.world)
            yield Batch(epoch=epoch, batch=batch, loss=loss.item(), seen=min(seen * path.world.size,
                                                                              len(s.split.train)),
                        total=len(s.split.train))
    summed = _finite_or_stop(loss_sum, epoch, batch, path.world)
    seen = int(total(torch.tensor([seen]), path.world).item())
    return EpochTotals(summed / max(seen, 1), seen, skipped, time.time() - t0)


@dataclass
class EvalResult:
    """One evaluation pass over the validation or the test split."""
    loss: float | None
    acc: float | None
    per_class_acc: list
    confusion: dict  # confusion_cells
    tested: int
    skipped: int
    predictions: list[Prediction]
    logits: torch.Tensor | None = None  # (tested, classes) on the CPU, in the predictions' order; None: too large


# The test logits are kept for the after-training report (top losses, calibration) while tested × classes stays
# below this (80 MB of float32): a 100,000-class head over a large test list keeps only the predictions.
MAX_KEPT_LOGITS = 20_000_000


class EvalAccumulator:
    """Loss, confusion matrix, predictions (and the logits, when ``keep_logits``) of a test pass, kept on the
    device; read back once."""

    def __init__(self, num_classes: int, device: torch.device, keep_logits: bool = False):
        self.c = num_classes
        self.loss = torch.zeros((), device=device)
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
        self.parts: list[tuple] = []
        self.logits: list[torch.Tensor] | None = [] if keep_logits else None

    def add(self, logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        self.loss += nn.functional.cross_entropy(logits, labels, reduction="sum")
        conf, pred = logits.softmax(1).max(1)
        self.confusion += torch.bincount(labels * self.c + pred, minlength=self.c * self.c)
        self.parts.append((indices, labels, pred, conf))
        if self.logits is not None:
            self.logits.append(logits.detach())

    def _gathered_logits(self, world: World) -> torch.Tensor | None:
        """Every rank's logits in the order of ``indices`` gathered the same way (rank order, then batches)."""
        if self.logits is None:
            return None
        mine = torch.cat(self.logits).cpu() if self.logits else torch.zeros(0, self.c)
        return torch.cat(gather_all(mine, world))

    def result(self, skipped: int, world: World = SINGLE) -> EvalResult:
        """The figures of the whole test list: under torchrun summed over the ranks' shares."""
        confusion = total(self.confusion, world).view(self.c, self.c).cpu()
        total(self.loss, world)
        n = int(confusion.sum())
        rows = [torch.cat(column).tolist() for column in zip(*self.parts)] if self.parts else [[], [], [], []]
        rows = [sum(column, []) for column in zip(*gather_all(rows, world))]
        logits = self._gathered_logits(world)
        skipped = int(total(torch.tensor([skipped]), world).item())
        order = sorted(range(len(rows[0])), key=lambda k: rows[0][k])
        predictions = [Prediction(*(column[k] for column in rows)) for k in order]
        per_class = [(confusion[i, i] / confusion[i].sum()).item() if confusion[i].sum() else None
                     for i in range(self.c)]
        return EvalResult(self.loss.item() / n if n else None, confusion.diag().sum().item() / n if n else None,
                          per_class, confusion_cells(confusion), n, skipped, predictions,
                          None if logits is None else logits[torch.tensor(order, dtype=torch.long)])


def evaluate(s: Setup, path: FeaturePath, epoch: int, split: str = "test") -> Generator[Progress, None, EvalResult]:
    """Loss averaged per sample, accuracy, per-class accuracy, confusion matrix and predictions of ``split``
    ("val" or "test").

    Yields Progress records (phase 'test', split named); returns an EvalResult.
    """
    samples = s.split.val if split == "val" else s.split.test
    loader, positions = path.evaluation(split)
    totals = EvalAccumulator(len(s.split.classes), s.device,
                             keep_logits=len(samples) * len(s.split.classes) <= MAX_KEPT_LOGITS)
    skipped = 0
    meter = ProgressMeter(Phase.TEST, len(samples), split=split, epoch=epoch)
    yield meter.first()
    sharded = path.world.active  # the shares differ in length: Stop is agreed on before the pass, not per batch
    if sharded:
        s.check_stop()
    with torch.inference_mode():
        for inputs, labels, indices, n_skipped in loader:
            if not sharded:
                s.check_stop()
            skipped += n_skipped
            if inputs is not None:
                inputs, labels = as_input(inputs, s.device), labels.to(s.device, non_blocking=True)
                with s.autocast():
                    logits = path.forward(inputs).float()
                if positions is not None:
                    indices = positions[indices]
                totals.add(logits, labels, indices.to(s.device))
            record = meter.advance((n_skipped + (0 if inputs is None else len(labels))) * path.world.size)
            if record:
                yield record
    return totals.result(skipped, path.world)


# ----------------------------------------------------------------------------- checkpoints
class Checkpointer:
    """Writes checkpoint_last.pt every epoch and checkpoint_best.pt on a new best on validation (with no
    validation split, nothing is chosen: only the last), and at the end the tutorial's bare state dict. The
    test predictions are written by the test pass (``test_once``), never by a validation pass."""

    def __init__(self, s: Setup, optimizer, schedule=None):  # a stage sets its own (``begin_stage``)
        self.s, self.optimizer, self.schedule = s, optimizer, schedule
        self.best: tuple | None = None  # (accuracy, -loss) on validation of the best epoch so far
        self.best_epoch: int | None = None
        self.last_epoch: int | None = None

    def replay(self, history: list[Epoch]) -> None:
        """The best so far, from the records of the epochs before a resume."""
        for record in history:
            self.last_epoch = record.epoch
            if record.best:
                self._keep(record)

    def _keep(self, record: Epoch) -> None:
        acc, loss = record.score
        self.best = (acc if acc is not None else -1.0, -(loss if loss is not None else float("inf")))
        self.best_epoch = record.epoch

    def is_best(self, acc: float | None, loss: float | None) -> bool:
        """Best = highest validation accuracy; on a tie (common on small splits) the lower validation loss.
        With no validation split every epoch is 'best': the last one is kept."""
        if not self.s.selects or acc is None:
            return not self.s.selects or self.best is None
        score = (acc, -(loss if loss is not None else float("inf")))
        return self.best is None or score > self.best

    def save_epoch(self, record: Epoch, result: EvalResult) -> None:
        self.last_epoch = record.epoch
        if record.best:
            self._keep(record)
        if not self.s.world.main:  # under torchrun only rank 0 writes; the others only keep score
            return
        calibration = epoch_temperature(result) if self.s.selects else None  # fitted on validation only
        self._save(self.s.run.last, record, calibration)
        if record.best and self.s.selects:
            self._save(self.s.run.best, record, calibration)
        if not self.s.selects:  # the tutorial's way: this epoch's pass was over the test split
            write_test_predictions(self.s, record.epoch, result)

    def save_final(self) -> None:
        if not self.s.world.main:
            return
        atomic_torch_save(self.s.model.state_dict(), self.s.run.plain_state_dict(self.s.cfg.arch))

    def _save(self, path: Path, record: Epoch, calibration: dict | None) -> None:
        write_checkpoint(path, Checkpoint(
            self.s.model.state_dict(), record.epoch, list(self.s.split.classes), self.s.cfg.to_dict(),
            record.to_json(), **(calibration or {}),
            # what a resume needs to go on exactly as if it had never stopped
            optimizer=self.optimizer.state_dict(),
            scheduler=self.schedule.state_dict() if self.schedule is not None else None,
            rng=torch.get_rng_state(), inputs=run_inputs(self.s.run)))


def epoch_temperature(result: EvalResult) -> dict | None:
    """The temperature that calibrates this epoch's model, fitted on its validation logits (so the report
    judges it on test images it never saw), as the checkpoint keeps it; None without logits."""


    if result.logits is None or not len(result.predictions):
        return None
    labels = [p.label for p in result.predictions]
    return {"temperature": fit_temperature(result.logits.numpy(), np.asarray(labels)),
            "temperature_fitted_on": f"the {count(len(labels), 'validation image')}' logits"}


def write_test_predictions(s: Setup, epoch: int, result: EvalResult) -> None:
    """The test pass's predictions (predictions.json) and logits (test_outputs.npz), for the report."""
    test = s.split.test
    if result.logits is not None:
        write_test_outputs(s.run, epoch, result.predictions, result.logits)
    atomic_write_json(s.run.predictions, [{**p.to_json(), "path": test[p.index][0]} for p in result.predictions])


def test_record(epoch: int, chosen_by: str, loss, acc, tested: int, per_class_acc: list, confusion: dict | list,
                skipped: int = 0, val_acc: float | None = None) -> Test:
    interval = accuracy_of(acc, tested)
    return Test(epoch=epoch, chosen_by=chosen_by, loss=loss, acc=acc, tested=tested,
                ci_low=interval.low if interval else None, ci_high=interval.high if interval else None,
                per_class_acc=per_class_acc, per_class_n=class_counts(confusion, len(per_class_acc)),
                confusion=confusion,
                skipped=skipped, val_acc=val_acc)


def write_test_outputs(run: RunDir, epoch: int, predictions: list[Prediction], logits: torch.Tensor) -> None:
    """The test pass's logits beside predictions.json, for the after-training report (core.analysis.report)."""


    buffer = io.BytesIO()
    np.savez(buffer, epoch=np.array(epoch), index=np.array([p.index for p in predictions], dtype=np.int64),
             label=np.array([p.label for p in predictions], dtype=np.int64), logits=logits.numpy().astype(np.float32))
    atomic_write_bytes(run.test_outputs, buffer.getvalue())


# ----------------------------------------------------------------------------- the run
def class_weights(split: Split) -> list[float]:
    """Inverse class frequency in the training list, scaled so a balanced list gets 1 for every class
    (n / (classes × count), as scikit-learn's "balanced"); a class with no training image gets 0."""
    counts = torch.bincount(torch.tensor([label for _, label in split.train]), minlength=len(split.classes))
    n, k = int(counts.sum()), len(split.classes)
    return [n / (k * int(c)) if c else 0.0 for c in counts]


def run_inputs(run: RunDir) -> dict[str, str]:
    """SHA-256 of what a run trains from (its config and its list files): a resume refuses when they changed."""

    files = [run.config, *sorted(p for p in run.lists.glob("*") if p.is_file())] if run.lists.is_dir() else [run.config]
    out = {}
    for path in files:
        try:
            out[str(path.relative_to(run.path))] = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            out[str(path.relative_to(run.path))] = "unreadable"
    return out


@dataclass
class ResumePoint:
    """Where a stopped or failed run goes on: its last checkpoint and the epochs recorded before it."""
    checkpoint: Checkpoint  # checked by training.run.resume_point: an epoch, optimizer state and rng are there
    history: list[Epoch]

    @property
    def epoch(self) -> int:
        return int(self.checkpoint.epoch or 0)

    def restore(self, s: Setup, checkpointer: "Checkpointer") -> None:
        """Model, RNG and the best so far as they were after ``epoch``."""
        s.model.load_state_dict(self.checkpoint.model)
        torch.set_rng_state(self.checkpoint.rng)
        checkpointer.replay(self.history)

    def restore_stage(self, optimizer, schedule, stage: Stage) -> None:
        """The optimiser and schedule as they were after ``epoch``, which is inside ``stage`` (a resume at a
        stage's start begins that stage's afresh, as the straight run did)."""
        optimizer.load_state_dict(self.checkpoint.optimizer)
        if schedule is not None and self.checkpoint.scheduler is not None:
            schedule.load_state_dict(self.checkpoint.scheduler)
            if not stage.schedule.per_batch:
                schedule.step()  # the checkpoint was written before that epoch's step


def stage_line(stage: Stage, report) -> dict:
    """A stage as the Start record keeps it (the pages draw its epochs and say what trained, and how much)."""
    modules = report.modes[stage.freeze.value]
    return {"number": stage.number, "first": stage.first, "last": stage.last, "trains": stage.trains,
            "schedule": stage.schedule.value,
            "trainable": sum(p.numel for p in report.parameters if trains_in(modules, p.name))}


@dataclass
class StageTraining:
    """One stage's optimiser, schedule and what trains in it."""
    stage: Stage
    optimizer: Any
    schedule: Any
    modules: list[str]  # the modules that train (in training mode during its epochs)

    @property
    def batch_schedule(self):
        return self.schedule if self.stage.schedule.per_batch else None


def begin_stage(s: Setup, stage: Stage, path: FeaturePath, checkpointer: "Checkpointer",
                resume: ResumePoint | None) -> StageTraining:
    """What ``stage`` trains, unfrozen, its optimiser and schedule; a later stage starts from the epoch chosen
    on validation so far, not the last one (a resume inside the stage restores the optimiser and schedule)."""
    modules = trained_modules(s.cfg.arch, s.report.head_name, stage.freeze)
    freeze_model(s.model, modules)
    resumed_inside = resume is not None and resume.epoch >= stage.first
    if stage.number > 1 and not resumed_inside and checkpointer.best_epoch not in (None, checkpointer.last_epoch):
        _load_kept_model(s)
    optimizer = make_optimizer(s.cfg, s.model, s.report.head_name, stage.number)
    schedule = make_schedule(s.cfg, optimizer, stage.schedule, stage.epochs, len(path.train_loader))
    if resumed_inside:
        assert resume is not None
        resume.restore_stage(optimizer, schedule, stage)
    checkpointer.optimizer, checkpointer.schedule = optimizer, schedule
    return StageTraining(stage, optimizer, schedule, modules)


def keep_statistics(model: nn.Module) -> None:
    """BatchNorm layers in eval mode: a later stage's unfrozen layers keep their pretrained running statistics
    (their scale and shift still train). In training mode, batch statistics would replace the ones stage 1's head
    was fitted to, and its loss jumps back up at the stage's first batch (measured: 0.36 to 1.12 on real photos)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


PathForStage = Callable[[Stage], Generator[Any, None, FeaturePath]]


def epoch_loop(s: Setup, path_for: PathForStage, resume: ResumePoint | None = None) -> Iterator[Record]:
    """Each stage's epochs, then the one test pass (``test_once``): also after an early stop or a Stop.
    ``path_for(stage)`` gives the feature path a stage trains through (its records first)."""
    skip_dynamo_import()
    weights = class_weights(s.split) if s.cfg.class_weights else None
    criterion = nn.CrossEntropyLoss(weight=torch.tensor(weights, device=s.device) if weights else None,
                                    label_smoothing=s.cfg.label_smoothing)
    checkpointer = Checkpointer(s, None)
    history = list(resume.history) if resume is not None else []  # every epoch record, the new ones appended
    if resume is not None:
        resume.restore(s, checkpointer)
    path: FeaturePath | None = None
    try:
        for stage in s.cfg.stages():
            if resume is not None and resume.epoch >= stage.last:
                continue  # trained before the stop
            path = yield from path_for(stage)
            training = begin_stage(s, stage, path, checkpointer, resume)
            yield from _epochs(s, path, training, criterion, checkpointer, resume, history)
        checkpointer.save_final()
        ending = None
    except (StopRequested, EarlyStop) as exc:
        ending = exc
    if path is not None:
        try:
            yield from test_once(s, path, checkpointer, history, stopped=isinstance(ending, StopRequested))
        except StopRequested:
            raise StopRequested("test not evaluated: stopped again during the test pass") from None
    if ending is not None:
        raise ending


def _epochs(s: Setup, path: FeaturePath, training: StageTraining, criterion, checkpointer: Checkpointer,
            resume: ResumePoint | None, history: list[Epoch]) -> Iterator[Record]:
    """Train and evaluate a stage's epochs (on validation, or with none on test), appending to ``history``."""
    stage, optimizer = training.stage, training.optimizer
    last_stage = stage.number == len(s.cfg.stages())
    split = "val" if s.selects else "test"
    first = max(stage.first, resume.epoch + 1) if resume else stage.first
    since_best = _since_best(history, stage.first)  # early stopping watches the validation accuracy alone
    for epoch in range(first, stage.last + 1):
        t_epoch = time.time()
        path.sampler.set_epoch(epoch)
        set_train_mode(s.model, training.modules)
        if stage.number > 1:
            keep_statistics(s.model)
        totals = yield from train_one_epoch(s, path, optimizer, criterion, epoch, training.batch_schedule)
        if totals.seen == 0:  # every training image was unreadable: nothing was learned, say so
            raise RunError(f"none of the {len(s.split.train)} training images could be read (all were skipped as "
                           "unreadable: empty, not images, or damaged); check the data folder")
        s.model.eval()
        result = yield from evaluate(s, path, epoch, split)
        figures: dict[str, Any] = (dict(val_loss=result.loss, val_acc=result.acc, test_loss=None, test_acc=None,
                                         evaluated=VALIDATION) if s.selects else
                                    dict(test_loss=result.loss, test_acc=result.acc, evaluated=TEST))
        record = Epoch(epoch=epoch, train_loss=totals.loss, **figures,
                       per_class_acc=result.per_class_acc, confusion=result.confusion, tested=result.tested,
                       skipped_images=totals.skipped + result.skipped + path.fixed_skips,
                       seconds=time.time() - t_epoch, best=checkpointer.is_best(result.acc, result.loss),
                       images_per_s=totals.seen / totals.seconds if totals.seconds > 0 else None,
                       lr=optimizer.param_groups[0]["lr"], stage=stage.number)
        checkpointer.save_epoch(record, result)
        history.append(record)
        yield record
        if training.schedule is not None and not stage.schedule.per_batch:
            training.schedule.step()
        since_best = 0 if record.best else since_best + 1
        if (last_stage and s.selects and s.cfg.patience and since_best >= s.cfg.patience
                and epoch < stage.last):
            checkpointer.save_final()
            raise EarlyStop(f"stopped early at epoch {epoch} of {s.cfg.total_epochs}: no better validation accuracy "
                            f"for {since_best} epoch{'s' if since_best > 1 else ''}; predictions use epoch "
                            f"{checkpointer.best_epoch}")


def _since_best(history: list[Epoch], first: int = 1) -> int:
    """Epochs from ``first`` on since the last best one (a stage's early stopping counts its own epochs)."""
    since = 0
    for record in history:
        if record.epoch >= first:
            since = 0 if record.best else since + 1
    return since


def test_once(s: Setup, path: FeaturePath, checkpointer: Checkpointer, history: list[Epoch],
              stopped: bool = False) -> Iterator[Record]:
    """The test split's figures for the checkpoint predictions use, measured once: yields Progress records and
    one ``Test`` record. After a Stop the STOP request is cleared first, so a second Stop skips the pass. With
    no validation split the last epoch's own test pass is the figure: no pass is needed."""
    if checkpointer.best_epoch is None:
        return  # no epoch finished: there is no model to test
    if not s.selects:
        last = next(e for e in reversed(history) if e.epoch == checkpointer.last_epoch)
        yield test_record(last.epoch, "last epoch", last.test_loss, last.test_acc, last.tested, last.per_class_acc,
                          last.confusion)
        return
    if stopped and s.world.main:
        s.run.stop_flag.unlink(missing_ok=True)  # the first Stop ended training; a second one skips the test
    chosen = checkpointer.best_epoch
    if chosen != checkpointer.last_epoch:
        _load_kept_model(s)
    s.model.eval()
    result = yield from evaluate(s, path, chosen, "test")
    if s.world.main:
        write_test_predictions(s, chosen, result)
    val_acc = next((e.val_acc for e in history if e.epoch == chosen), None)
    yield test_record(chosen, VALIDATION, result.loss, result.acc, result.tested, result.per_class_acc,
                      result.confusion, result.skipped, val_acc)


def _load_kept_model(s: Setup) -> None:
    """The chosen epoch's weights, from checkpoint_best.pt (every rank reads what rank 0 wrote)."""

    barrier(s.world)
    s.model.load_state_dict(torch_load_tensors(s.run.best)["model"])
