"""Training as a stream of typed records (``core.records``).

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

import math
import os
import shutil
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from .accel import (as_input, configure_device, inference_batch_size, inference_copy, plan_threads, resolve_device,
                    SGD, skip_dynamo_import, to_channels_last)
from .archs import get_arch
from .config import TrainConfig
from .data import ListDataset, build_transform, collate_skipping_unreadable, training_transform
from .split import LIST_FILES, Split, read_split, split_dataset, write_split
from .states import Phase, RunState
from .errors import RunError, UserError
from .images import load_jpeg_decoder
from .features import Features as HeadInputs
from .features import (ForwardFromCut, compute_frozen_outputs, feature_cache_key, load_cached_features,
                       store_cached_features)
from .io import append_jsonl, atomic_torch_save, atomic_write_json, atomic_write_text
from .records import Batch, Epoch, Final, Prediction, Progress, Record, Records, Start
from .records import Features as FeaturesRecord
from .distributed import SINGLE, Terminated, World, barrier, broadcast, device_line, gather_all, shard, total
from .rundir import Heartbeat, RunDir, create_run, load_config, summarise, write_summary
from .surgery import SurgeryReport, adapt_model, optimizer_groups, set_train_mode

PROGRESS_EVERY_S = 1.0  # a Progress record at least this often inside a long phase


class StopRequested(Exception):
    pass


class NonFiniteLoss(Exception):
    pass


class EarlyStop(Exception):
    """The test accuracy stopped improving: the run ends as completed, with this reason."""


# ----------------------------------------------------------------------------- setup
def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def prepare_lists(cfg: TrainConfig, run: RunDir, allowed_roots=None, world: World = SINGLE) -> Split:
    """Copy (or make) the list files into the run, so a later re-split cannot change this run.

    ``allowed_roots`` confines a run the app started for a visitor to the folders it may read.
    Under torchrun rank 0 writes them and the other ranks read what it wrote.
    """
    if world.main:
        _write_lists(cfg, run, allowed_roots)
    barrier(world)
    split = read_split(run.lists)
    if not split.train:
        raise RunError("the training list is empty; add images or change the split")
    return split


def _write_lists(cfg: TrainConfig, run: RunDir, allowed_roots) -> None:
    if cfg.data_root:
        split = split_dataset(cfg.data_root, cfg.train_ratio, cfg.seed, allowed_roots=allowed_roots)
        write_split(split, run.lists, overwrite=True)
    else:
        read_split(cfg.lists_dir)  # validates before copying
        run.lists.mkdir(parents=True, exist_ok=True)
        for name in LIST_FILES:
            if (Path(cfg.lists_dir) / name).is_file():
                shutil.copyfile(Path(cfg.lists_dir) / name, run.lists / name)


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


def set_up(cfg: TrainConfig, run: RunDir, allowed_roots=None, world: World = SINGLE, phase=lambda text: None
           ) -> Setup:
    """Everything a run needs before its first record; ``phase`` hears each step's name (for the status)."""
    cfg.validate()
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world.active:
        device = torch.device("cuda", world.local_rank)  # one GPU per local rank
    configure_device(device)
    threads, workers = plan_threads(cfg.num_workers, cuda=device.type == "cuda", cores=_cores_per_rank(world))
    torch.set_num_threads(threads)
    phase("scanning the images and copying the list files")
    split = prepare_lists(cfg, run, allowed_roots, world)
    phase(f"building {cfg.arch}" + (" and loading its weights" if cfg.weights else ""))
    model, report = adapt_model(cfg.arch, len(split.classes), weights=cfg.weights, head_variant=cfg.head_variant,
                                freeze=cfg.freeze, seed=cfg.seed)
    if world.main:
        atomic_write_json(run.surgery, report.to_dict())
    to_channels_last(model.to(device))
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext
    weights_tf = get_arch(cfg.arch).transforms()
    return Setup(cfg, run, device, split, model, report,
                 eval_tf=build_transform(weights_tf, letterbox=cfg.uses_letterbox),
                 train_tf=training_transform(weights_tf, cfg.augmentation, letterbox=cfg.uses_letterbox),
                 autocast=autocast,
                 use_cache=cfg.feature_cache and cfg.body_partly_fixed and cfg.augmentation == "none",
                 threads=threads, workers=workers, world=world)


def _cores_per_rank(world: World) -> int:
    """Processes on one machine share its cores."""
    from .accel import available_cores

    local = int(os.environ.get("LOCAL_WORLD_SIZE", world.size)) if world.active else 1
    return max(1, available_cores() // local)


def start_record(s: Setup) -> Start:
    return Start(arch=s.cfg.arch, classes=s.split.classes, train_size=len(s.split.train),
                 test_size=len(s.split.test), epochs=s.cfg.epochs,
                 batches_per_epoch=math.ceil(len(s.split.train) / s.cfg.batch_size), device=str(s.device),
                 device_name=device_line(s.device, device_name(s.device), s.world), world_size=s.world.size,
                 feature_path="cached features" if s.use_cache else "full forward",
                 trainable_params=s.report.trainable_count, frozen_params=s.report.frozen_count,
                 weights=s.cfg.weights, time=time.time(), class_names=s.split.class_names,
                 threads=s.threads, workers=s.workers,
                 class_weights=class_weights(s.split) if s.cfg.class_weights else None)


# ----------------------------------------------------------------------------- progress
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


# ----------------------------------------------------------------------------- the feature path
@dataclass
class FeaturePath:
    """What the epoch loop trains through: the head on stored features, or the whole model on images."""
    forward: Callable[[torch.Tensor], torch.Tensor]
    train_loader: DataLoader | DeviceBatches
    test_loader: DataLoader | DeviceBatches
    sampler: "EpochShuffle"
    fixed_skips: int  # unreadable images left out once, when the features were computed
    world: World = SINGLE  # ranks whose figures add up (the full forward path under torchrun); else one
    test_positions: torch.Tensor | None = None  # this rank's test images, as positions in the test list


class EpochShuffle(Sampler):
    """A permutation that depends only on (seed, epoch), like DistributedSampler.set_epoch.

    The cached-feature and the full path draw the very same order from it, whatever the
    DataLoader does with its own generator (persistent workers draw differently).
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


def _image_loader(dataset, batch_size: int, device, *, sampler=None, workers: int = 0):
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_skipping_unreadable, pin_memory=device.type == "cuda",
                      persistent_workers=workers > 0, prefetch_factor=4 if workers and device.type == "cuda" else None)


class DeviceBatches:
    """Batches of cached features that live on the training device: moved there once, not every epoch,
    and cut by index (no DataLoader, no collate). Yields what the image loaders yield."""

    def __init__(self, features, device: torch.device, batch_size: int, sampler: Sampler | None = None):
        self.x = features.features.to(device)
        self.y = features.labels.to(device)
        self.i = features.indices.to(device)
        self.batch_size, self.sampler = batch_size, sampler

    def __iter__(self):
        n = len(self.y)
        order = torch.tensor(list(self.sampler), dtype=torch.long) if self.sampler is not None else torch.arange(n)
        for idx in order.to(self.x.device).split(self.batch_size):
            yield self.x[idx], self.y[idx], self.i[idx], 0

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)


def _split_features(features, first: int, total: int) -> tuple:
    """Cut the features of train + test (one pass) back into the two splits, with their own indices;
    an image missing from the output was unreadable, and counts as skipped in its own split."""
    in_first = features.indices < first

    def part(mask, offset, size):
        kept = int(mask.sum())
        return HeadInputs(features.features[mask], features.labels[mask], features.indices[mask] - offset,
                          size - kept)
    return part(in_first, 0, first), part(~in_first, first, total - first)


def _prepare_decoding(s: Setup, samples: list) -> None:
    """Import libjpeg's decoder before a pass that will use it (not when every feature comes from the
    cache): its import is set-up, not part of the pass's images per second."""
    if not s.cfg.uses_letterbox and any(path.lower().endswith((".jpg", ".jpeg")) for path, _ in samples):
        load_jpeg_decoder()  # the letterbox decodes with PIL, and so do other formats


def _compute_both(s: Setup, todo: dict[str, list], timings: dict[str, float]):
    """Backbone features of the splits in ``todo`` in one pass with one set of workers; yields Progress
    records per split (the first at once), returns {split: HeadInputs}."""
    names = list(todo)
    samples = [sample for name in names for sample in todo[name]]
    # Under torchrun each rank computes its share (padded, so all run the same number of batches)
    # and the shares are gathered back into list order; progress counts rank 0's share × ranks.
    positions = shard(len(samples), s.world, pad=True) if s.world.active else list(range(len(samples)))
    scale, global_first = s.world.size, len(todo[names[0]])
    first = sum(p < global_first for p in positions)
    meter = ProgressMeter(Phase.FEATURES, global_first, split=names[0])
    yield meter.first()  # the page shows the feature phase from here, also while the decoder loads
    _prepare_decoding(s, samples)
    batches = compute_frozen_outputs(s.feature_model, s.cut, [samples[p] for p in positions], s.eval_tf,
                                  device=s.device, batch_size=inference_batch_size(s.device), num_workers=s.workers,
                                  autocast=s.feature_autocast)
    done, t0 = 0, time.time()
    try:
        while True:
            try:
                n = next(batches)
            except StopIteration as finished:
                features = finished.value
                break
            s.check_stop()
            before, done = done, done + n
            in_first = max(0, min(done, first) - before)
            record = meter.advance(in_first * scale) if in_first else None
            if record:
                yield record
            if n > in_first:  # this batch reached the second split
                if meter.split == names[0]:
                    timings[names[0]], t0 = time.time() - t0, time.time()
                    meter = ProgressMeter(Phase.FEATURES, len(samples) - global_first, split=names[1])
                    yield meter.first()
                record = meter.advance((n - in_first) * scale)
                if record:
                    yield record
    finally:
        batches.close()
    timings[meter.split] = time.time() - t0
    if s.world.active:
        features = _gathered(features, positions, len(samples), s.world)
    if len(names) == 1:
        return {names[0]: features}
    return dict(zip(names, _split_features(features, global_first, len(samples))))


def _gathered(local, positions: list[int], n: int, world: World):
    """Every rank's share of the features, in list order, each image once (the padding dropped)."""
    mine = (local.features, local.labels, torch.tensor(positions, dtype=torch.long)[local.indices])
    parts = gather_all(mine, world)
    x, y, idx = (torch.cat([p[k] for p in parts]) for k in range(3))
    idx, order = torch.sort(idx, stable=True)
    first_time = torch.ones_like(idx, dtype=torch.bool)
    first_time[1:] = idx[1:] != idx[:-1]
    return HeadInputs(x[order][first_time], y[order][first_time], idx[first_time], n - int(first_time.sum()))


def extract_features(s: Setup, cache_dir: Path | None):
    """Backbone features of both splits: from the cache where it has them, the rest computed in one pass.

    Yields Progress and Features records; returns (train, test) HeadInputs.
    """
    # A random body is never cached: its features depend on the seed, not on a file on disk.
    cache = cache_dir if s.cfg.pretrained else None
    splits = {"train": s.split.train, "test": s.split.test}
    keys = {name: feature_cache_key(arch=s.cfg.arch, head_variant=s.report.head_variant, weights=s.cfg.weights,
                                    transform=repr(s.eval_tf), samples=samples, precision=s.feature_precision,
                                    cut=None if s.cut == s.report.head_name else s.cut)
            for name, samples in splits.items()}
    t0 = time.time()
    found = {name: load_cached_features(cache, keys[name]) for name in splits} if s.world.main else None
    found = broadcast({name: f for name, f in found.items() if f is not None} if found else {}, s.world)
    timings = {name: time.time() - t0 for name in found}
    todo = {name: samples for name, samples in splits.items() if name not in found}
    computed = (yield from _compute_both(s, todo, timings)) if todo else {}
    for name, features in computed.items():
        if s.world.main:
            store_cached_features(cache, keys[name], features)
    for name in splits:
        features = found.get(name) or computed[name]
        yield FeaturesRecord(split=name, images=len(features.labels), skipped=features.skipped,
                             from_disk=name in found, seconds=timings.get(name, 0.0))
    return found.get("train") or computed["train"], found.get("test") or computed["test"]


def choose_feature_path(s: Setup, cache_dir: Path | None):
    """Cached features when the front of the model is frozen and inputs are fixed, else the full forward
    pass. With freeze 'head' the head alone runs on them; with 'last_block' the model from its last stage on."""
    cfg, split = s.cfg, s.split
    if s.use_cache:
        train_feats, test_feats = yield from extract_features(s, cache_dir)
        sampler = EpochShuffle(len(train_feats.labels), cfg.seed)
        forward = s.head if s.cut == s.report.head_name else ForwardFromCut(s.model, s.cut)
        return FeaturePath(forward, DeviceBatches(train_feats, s.device, cfg.batch_size, sampler),
                           DeviceBatches(test_feats, s.device, max(cfg.batch_size, 256)), sampler,
                           train_feats.skipped + test_feats.skipped)
    _prepare_decoding(s, split.train)
    if s.world.active:
        return _distributed_full_path(s)
    sampler = EpochShuffle(len(split.train), cfg.seed)
    return FeaturePath(s.model,
                       _image_loader(ListDataset(split.train, s.train_tf), cfg.batch_size, s.device,
                                     sampler=sampler, workers=s.workers),
                       _image_loader(ListDataset(split.test, s.eval_tf), cfg.batch_size, s.device,
                                     workers=s.workers), sampler, 0)


def _distributed_full_path(s: Setup) -> FeaturePath:
    """Each rank trains on its share (DistributedSampler, padded to equal length) through DDP, and tests
    its share of the test list (not padded: every test image counted once, the figures summed)."""
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data.distributed import DistributedSampler

    cfg, split = s.cfg, s.split
    train_set = ListDataset(split.train, s.train_tf)
    sampler = DistributedSampler(train_set, num_replicas=s.world.size, rank=s.world.rank, shuffle=True, seed=cfg.seed)
    forward = s.model
    if s.report.trainable_count:
        forward = DistributedDataParallel(s.model, device_ids=[s.device.index] if s.device.type == "cuda" else None)
    positions = shard(len(split.test), s.world, pad=False)
    test_set = ListDataset([split.test[p] for p in positions], s.eval_tf)
    return FeaturePath(forward, _image_loader(train_set, cfg.batch_size, s.device, sampler=sampler, workers=s.workers),
                       _image_loader(test_set, cfg.batch_size, s.device, workers=s.workers), sampler, 0,
                       world=s.world, test_positions=torch.tensor(positions, dtype=torch.long))


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


def train_one_epoch(s: Setup, path: FeaturePath, optimizer, criterion, epoch: int) -> Iterator[Batch]:
    """Yield Batch records; return the epoch's totals (``totals = yield from train_one_epoch(…)``).

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
    test_loss: float | None
    test_acc: float | None
    per_class_acc: list
    confusion: list
    tested: int
    skipped: int
    predictions: list[Prediction]


class EvalAccumulator:
    """Loss, confusion matrix and predictions of a test pass, kept on the device; read back once."""

    def __init__(self, num_classes: int, device: torch.device):
        self.c = num_classes
        self.loss = torch.zeros((), device=device)
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
        self.parts: list[tuple] = []

    def add(self, logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        self.loss += nn.functional.cross_entropy(logits, labels, reduction="sum")
        conf, pred = logits.softmax(1).max(1)
        self.confusion += torch.bincount(labels * self.c + pred, minlength=self.c * self.c)
        self.parts.append((indices, labels, pred, conf))

    def result(self, skipped: int, world: World = SINGLE) -> EvalResult:
        """The figures of the whole test list: under torchrun summed over the ranks' shares."""
        confusion = total(self.confusion, world).view(self.c, self.c).cpu()
        total(self.loss, world)
        n = int(confusion.sum())
        rows = [torch.cat(column).tolist() for column in zip(*self.parts)] if self.parts else [[], [], [], []]
        rows = [sum(column, []) for column in zip(*gather_all(rows, world))]
        skipped = int(total(torch.tensor([skipped]), world).item())
        predictions = sorted((Prediction(i, t, p, c) for i, t, p, c in zip(*rows)), key=lambda p: p.index)
        per_class = [(confusion[i, i] / confusion[i].sum()).item() if confusion[i].sum() else None
                     for i in range(self.c)]
        return EvalResult(self.loss.item() / n if n else None, confusion.diag().sum().item() / n if n else None,
                          per_class, confusion.tolist(), n, skipped, predictions)


def evaluate(s: Setup, path: FeaturePath, epoch: int) -> Iterator[Progress]:
    """Test loss averaged per sample, accuracy, per-class accuracy, confusion matrix, predictions.

    Yields Progress records (phase 'test'); returns an EvalResult.
    """
    totals = EvalAccumulator(len(s.split.classes), s.device)
    skipped = 0
    meter = ProgressMeter(Phase.TEST, len(s.split.test), epoch=epoch)
    yield meter.first()
    sharded = path.world.active  # the shares differ in length: Stop is agreed on before the pass, not per batch
    if sharded:
        s.check_stop()
    with torch.inference_mode():
        for inputs, labels, indices, n_skipped in path.test_loader:
            if not sharded:
                s.check_stop()
            skipped += n_skipped
            if inputs is not None:
                inputs, labels = as_input(inputs, s.device), labels.to(s.device, non_blocking=True)
                with s.autocast():
                    logits = path.forward(inputs).float()
                if path.test_positions is not None:
                    indices = path.test_positions[indices]
                totals.add(logits, labels, indices.to(s.device))
            record = meter.advance((n_skipped + (0 if inputs is None else len(labels))) * path.world.size)
            if record:
                yield record
    return totals.result(skipped, path.world)


# ----------------------------------------------------------------------------- checkpoints
class Checkpointer:
    """Writes checkpoint_last.pt every epoch, checkpoint_best.pt on a new best, the test predictions,
    and at the end the tutorial's bare state dict."""

    def __init__(self, s: Setup, optimizer):
        self.s, self.optimizer = s, optimizer
        self.best: tuple | None = None  # (accuracy, -test loss) of the best epoch so far
        self.best_epoch: int | None = None

    def is_best(self, acc: float | None, loss: float | None) -> bool:
        """Best = highest test accuracy; on a tie (common on small test sets) the lower test loss."""
        if acc is None:
            return self.best is None
        score = (acc, -(loss if loss is not None else float("inf")))
        return self.best is None or score > self.best

    def save_epoch(self, record: Epoch, predictions: list[Prediction]) -> None:
        if record.best:
            self.best = (record.test_acc if record.test_acc is not None else -1.0,
                         -(record.test_loss if record.test_loss is not None else float("inf")))
            self.best_epoch = record.epoch
        if not self.s.world.main:  # under torchrun only rank 0 writes; the others only keep score
            return
        self._save(self.s.run.last, record)
        if record.best:
            self._save(self.s.run.best, record)
        test = self.s.split.test
        atomic_write_json(self.s.run.predictions, [{**p.to_json(), "path": test[p.index][0]} for p in predictions])

    def save_final(self) -> None:
        if not self.s.world.main:
            return
        atomic_torch_save(self.s.model.state_dict(), self.s.run.plain_state_dict(self.s.cfg.arch))

    def _save(self, path: Path, record: Epoch) -> None:
        atomic_torch_save({"model": self.s.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                           "epoch": record.epoch, "classes": self.s.split.classes, "config": self.s.cfg.to_dict(),
                           "metrics": record.to_json()}, path)


# ----------------------------------------------------------------------------- the run
def class_weights(split: Split) -> list[float]:
    """Inverse class frequency in the training list, scaled so a balanced list gets 1 for every class
    (n / (classes × count), as scikit-learn's "balanced"); a class with no training image gets 0."""
    counts = torch.bincount(torch.tensor([label for _, label in split.train]), minlength=len(split.classes))
    n, k = int(counts.sum()), len(split.classes)
    return [n / (k * int(c)) if c else 0.0 for c in counts]


def make_schedule(cfg: TrainConfig, optimizer):
    """torch's own schedulers: StepLR (the PyTorch tutorial's step 7, gamma 0.1) or cosine annealing."""
    from torch.optim import lr_scheduler

    if cfg.schedule == "step":
        return lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return None


def epoch_loop(s: Setup, path: FeaturePath) -> Iterator[Record]:
    skip_dynamo_import()
    body_factor = s.cfg.body_lr_factor if s.cfg.pretrained else 1.0  # a random body has nothing to protect
    optimizer = SGD(optimizer_groups(s.model, s.report.head_name, s.cfg.lr, body_factor), lr=s.cfg.lr,
                    momentum=s.cfg.momentum, weight_decay=s.cfg.weight_decay)
    schedule = make_schedule(s.cfg, optimizer)
    weights = class_weights(s.split) if s.cfg.class_weights else None
    criterion = nn.CrossEntropyLoss(weight=torch.tensor(weights, device=s.device) if weights else None)
    checkpointer = Checkpointer(s, optimizer)
    since_best, best_acc = 0, None  # early stopping watches the test accuracy alone
    for epoch in range(1, s.cfg.epochs + 1):
        t_epoch = time.time()
        path.sampler.set_epoch(epoch)
        set_train_mode(s.model, s.report.trained_modules)
        totals = yield from train_one_epoch(s, path, optimizer, criterion, epoch)
        s.model.eval()
        result = yield from evaluate(s, path, epoch)
        record = Epoch(epoch=epoch, train_loss=totals.loss, test_loss=result.test_loss, test_acc=result.test_acc,
                       per_class_acc=result.per_class_acc, confusion=result.confusion, tested=result.tested,
                       skipped_images=totals.skipped + result.skipped + path.fixed_skips,
                       seconds=time.time() - t_epoch, best=checkpointer.is_best(result.test_acc, result.test_loss),
                       images_per_s=totals.seen / totals.seconds if totals.seconds > 0 else None,
                       lr=optimizer.param_groups[0]["lr"])
        checkpointer.save_epoch(record, result.predictions)
        yield record
        if schedule is not None:
            schedule.step()
        improved = record.test_acc is not None and (best_acc is None or record.test_acc > best_acc)
        since_best, best_acc = (0, record.test_acc) if improved else (since_best + 1, best_acc)
        if s.cfg.patience and since_best >= s.cfg.patience and epoch < s.cfg.epochs:
            checkpointer.save_final()
            raise EarlyStop(f"stopped early at epoch {epoch} of {s.cfg.epochs}: no better test accuracy for "
                            f"{since_best} epoch{'s' if since_best > 1 else ''}; predictions use epoch "
                            f"{checkpointer.best_epoch}")
    checkpointer.save_final()


def _records(run: RunDir, cfg: TrainConfig, cache_dir: Path | None, allowed_roots, world: World,
             phase=lambda text: None) -> Iterator[Record]:
    s = set_up(cfg, run, allowed_roots, world, phase)
    yield start_record(s)
    path = yield from choose_feature_path(s, cache_dir)
    yield from epoch_loop(s, path)


def phase_of(record: Record) -> str | None:
    """The phase status.json shows once ``record`` has been emitted."""
    if isinstance(record, Progress):
        return f"features ({record.split})" if record.phase == Phase.FEATURES else f"test pass, epoch {record.epoch}"
    if isinstance(record, Start):
        return "preparing data"
    if isinstance(record, (Batch, Epoch)):
        return f"epoch {record.epoch + (1 if isinstance(record, Epoch) else 0)}"
    return None


def run_training(run_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                 allowed_roots=None, world: World = SINGLE) -> Iterator[Record]:
    """Train the config a run folder holds (written once by whoever created it), reporting as it goes.

    Under torchrun every rank runs this; rank 0 alone writes the records, status.json and summary.json.
    """
    if not world.main:
        yield from _other_rank(RunDir(run_dir), cache_dir, allowed_roots, world)
        return
    run = RunDir(run_dir)
    cfg = load_config(run)
    emitted: list[Record] = []
    t0 = time.time()
    with Heartbeat(run) as heartbeat:
        heartbeat.set_phase("setting up")
        status, reason = RunState.COMPLETED, ""
        try:
            for record in _records(run, cfg, Path(cache_dir) if cache_dir else None, allowed_roots, world,
                                   heartbeat.set_phase):
                append_jsonl(run.metrics, record.to_json())
                emitted.append(record)
                heartbeat.set_phase(phase_of(record) or heartbeat.phase)
                yield record
        except StopRequested:
            status, reason = RunState.STOPPED, "stopped on request; the last completed epoch's checkpoint is kept"
        except EarlyStop as exc:
            status, reason = RunState.COMPLETED, str(exc)
        except (NonFiniteLoss, UserError, Terminated) as exc:
            status, reason = RunState.FAILED, str(exc)
        except KeyboardInterrupt:
            status, reason = RunState.STOPPED, "interrupted (Ctrl+C); the last completed epoch's checkpoint is kept"
        except GeneratorExit:
            _finish(run, heartbeat, RunState.STOPPED, "the consumer of the record stream stopped early", emitted, t0)
            raise
        except Exception as exc:  # a bug or a resource problem: keep the traceback for the log
            status, reason = RunState.FAILED, f"{type(exc).__name__}: {exc}"
            atomic_write_text(run.error, traceback.format_exc())
        yield _finish(run, heartbeat, status, reason, emitted, t0)


def _other_rank(run: RunDir, cache_dir, allowed_roots, world: World) -> Iterator[Record]:
    """A rank other than 0: the same computation and collectives, no files; a failure is left in
    error-rank<N>.txt for rank 0's reason and the user."""
    try:
        yield from _records(run, load_config(run), Path(cache_dir) if cache_dir else None, allowed_roots, world)
    except (StopRequested, Terminated, EarlyStop):
        return
    except BaseException:
        atomic_write_text(run.rank_error(world.rank), traceback.format_exc())
        raise


def _rank_failures(run: RunDir) -> str:
    """The last line of each other rank's traceback, for rank 0's reason."""
    lines = []
    for path in sorted(run.path.glob("error-rank*.txt")):
        try:
            last = [line for line in path.read_text(errors="replace").splitlines() if line.strip()][-1]
        except (OSError, IndexError):
            continue
        lines.append(f"{path.stem.removeprefix('error-')}: {last[:300]}")
    return "; ".join(lines)


def _finish(run: RunDir, heartbeat: Heartbeat, status: RunState, reason: str, emitted: list, t0: float) -> Final:
    others = _rank_failures(run) if status is RunState.FAILED else ""
    reason = f"{reason} ({others})" if others else reason
    records = Records(tuple(emitted))
    start = records.start
    final = Final(status=status, reason=reason, seconds=time.time() - t0, **summarise(records),
                  device=start.device if start else None, device_name=start.device_name if start else None,
                  feature_path=start.feature_path if start else None)
    append_jsonl(run.metrics, final.to_json())
    write_summary(run, final)
    run.stop_flag.unlink(missing_ok=True)
    heartbeat.finish(status, reason)
    return final


def train(cfg: TrainConfig, run_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
          force: bool = False, world: World = SINGLE) -> Iterator[Record]:
    """Create a run of ``cfg`` in ``run_dir`` and train it, yielding every record as it is appended.

    Under torchrun, call it on every rank with the same ``run_dir``: rank 0 creates the run.
    """
    cfg.validate()
    if world.main:
        create_run(run_dir, cfg, force=force)
    barrier(world)
    yield from run_training(run_dir, cache_dir=cache_dir, world=world)
