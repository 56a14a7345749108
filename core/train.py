"""Training as a stream of metric records.

``train(config, run_dir)`` is a generator: it yields a ``start`` record, a ``batch`` record
every ``log_every`` batches, an ``epoch`` record after each test pass and a ``final``
record, appending each to ``metrics.jsonl`` as it happens. The page, the CLI and the tests
all consume this one stream. There is no global state, so it can run under torchrun.
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
from torch.utils.data import DataLoader, Sampler, TensorDataset

from .accel import as_input, inference_batch_size, to_channels_last
from .archs import get_arch
from .config import TrainConfig
from .data import (ListDataset, ListSplit, build_transform, collate_skipping_unreadable, read_split, split_dataset,
                   write_split)
from .errors import RunError, UserError
from .features import cached_head_inputs, compute_head_inputs, feature_cache_key
from .io import append_jsonl, atomic_torch_save, atomic_write_json, atomic_write_text
from .surgery import adapt_model, set_train_mode, trainable_parameters


class StopRequested(Exception):
    pass


class NonFiniteLoss(Exception):
    pass


# ----------------------------------------------------------------------------- run folder
@dataclass(frozen=True)
class RunDir:
    path: Path

    config = property(lambda self: self.path / "config.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    summary = property(lambda self: self.path / "summary.json")
    surgery = property(lambda self: self.path / "surgery.json")
    predictions = property(lambda self: self.path / "predictions.json")
    last = property(lambda self: self.path / "checkpoint_last.pt")
    best = property(lambda self: self.path / "checkpoint_best.pt")
    lists = property(lambda self: self.path / "lists")
    stop_flag = property(lambda self: self.path / "STOP")
    pid_file = property(lambda self: self.path / "worker.pid")
    log = property(lambda self: self.path / "worker.log")

    def plain_state_dict(self, arch: str) -> Path:
        return self.path / f"model_{arch}.pth"  # the tutorial's file: a bare state dict

    def stop_requested(self) -> bool:
        return self.stop_flag.exists()


def open_new_run(run_dir: str | os.PathLike) -> RunDir:
    """Use ``run_dir`` for a new run, refusing one that already holds a run."""
    run = RunDir(Path(run_dir))
    run.path.mkdir(parents=True, exist_ok=True)
    if run.metrics.exists() or run.summary.exists():
        raise RunError(f"'{run.path}' already holds a run; choose a new folder so nothing is overwritten")
    return run


# ----------------------------------------------------------------------------- setup
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"device '{name}' was asked for, but CUDA is not available here; use 'auto' or 'cpu'")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def prepare_lists(cfg: TrainConfig, run: RunDir) -> ListSplit:
    """Copy (or make) the list files into the run, so a later re-split cannot change this run."""
    if cfg.data_root:
        write_split(split_dataset(cfg.data_root, cfg.train_ratio, cfg.seed), run.lists, overwrite=True)
    else:
        source = read_split(cfg.lists_dir)  # validates before copying
        run.lists.mkdir(parents=True, exist_ok=True)
        for name in ("train.txt", "test.txt", "classes.json"):
            shutil.copyfile(Path(source.folder) / name, run.lists / name)
    split = read_split(run.lists)
    if not split.train:
        raise RunError("the training list is empty; add images or change the split")
    return split


# ----------------------------------------------------------------------------- one epoch
Forward = Callable[[torch.Tensor], torch.Tensor]


def train_one_epoch(forward: Forward, loader, optimizer, criterion, *, device, epoch: int, total: int,
                    log_every: int, run: RunDir, autocast) -> Iterator[dict]:
    """Yield batch records; the last item yielded is the epoch's totals (type 'train_totals')."""
    seen = loss_sum = skipped = 0
    for batch, (inputs, labels, _, n_skipped) in enumerate(loader, 1):
        skipped += n_skipped
        if run.stop_requested():
            raise StopRequested()
        if inputs is None:
            continue
        inputs, labels = as_input(inputs, device), labels.to(device, non_blocking=True)
        with autocast():
            loss = criterion(forward(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # .item() is a CPU-GPU sync point, paid every batch so a NaN stops the run at once.
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLoss(f"the loss became {value} at epoch {epoch}, batch {batch}; "
                                "lower the learning rate")
        seen += len(labels)
        loss_sum += value * len(labels)
        if batch % log_every == 0:
            yield {"type": "batch", "epoch": epoch, "batch": batch, "loss": value, "seen": seen, "total": total}
    yield {"type": "train_totals", "loss": loss_sum / max(seen, 1), "seen": seen, "skipped": skipped}


def evaluate(forward: Forward, loader, criterion, *, device, num_classes: int, autocast) -> dict:
    """Test loss averaged per sample, accuracy, per-class accuracy, confusion matrix, predictions."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    loss_sum, n, skipped, predictions = 0.0, 0, 0, []
    with torch.inference_mode():
        for inputs, labels, indices, n_skipped in loader:
            skipped += n_skipped
            if inputs is None:
                continue
            inputs, labels = as_input(inputs, device), labels.to(device, non_blocking=True)
            with autocast():
                logits = forward(inputs).float()
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            probs = logits.softmax(1)
            conf, pred = probs.max(1)
            n += len(labels)
            for t, p, i, c in zip(labels.tolist(), pred.tolist(), indices.tolist(), conf.tolist()):
                confusion[t, p] += 1
                predictions.append({"index": i, "label": t, "pred": p, "prob": c})
    per_class = [(confusion[i, i] / confusion[i].sum()).item() if confusion[i].sum() else None
                 for i in range(num_classes)]
    return {"test_loss": loss_sum / n if n else None, "test_acc": confusion.diag().sum().item() / n if n else None,
            "per_class_acc": per_class, "confusion": confusion.tolist(), "tested": n, "skipped": skipped,
            "predictions": predictions}


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, model: nn.Module, optimizer, cfg: TrainConfig, classes: list[str],
                    epoch: int, metrics: dict) -> None:
    atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                       "classes": classes, "config": cfg.to_dict(), "metrics": metrics}, path)


# ----------------------------------------------------------------------------- loaders
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
                      persistent_workers=workers > 0)


def _collate_features(items):
    x, y, i = zip(*items)
    return torch.stack(x), torch.stack(y), torch.stack(i), 0


def _feature_loader(features, batch_size: int, *, sampler=None):
    dataset = TensorDataset(features.features, features.labels, features.indices)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=_collate_features)


# ----------------------------------------------------------------------------- the run
def _records(cfg: TrainConfig, run: RunDir, cache_dir: Path | None) -> Iterator[dict]:
    t_start = time.time()
    cfg.validate()
    device = resolve_device(cfg.device)
    split = prepare_lists(cfg, run)
    spec = get_arch(cfg.arch)
    model, report = adapt_model(cfg.arch, len(split.classes), weights=cfg.weights, variant=cfg.head_variant,
                                freeze=cfg.freeze, seed=cfg.seed)
    atomic_write_json(run.surgery, report.to_dict())
    to_channels_last(model.to(device))
    on_cuda = device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if on_cuda else nullcontext
    head = model.get_submodule(report.head_name)
    weights_tf = spec.transforms()
    eval_tf = build_transform(weights_tf, letterbox=cfg.letterbox)
    train_tf = build_transform(weights_tf, train=True, flip=cfg.flip, letterbox=cfg.letterbox)
    use_cache = cfg.feature_cache and cfg.freeze == "head" and not cfg.flip
    num_classes = len(split.classes)
    yield {"type": "start", "device": str(device), "device_name": device_name(device),
           "path": "cached features" if use_cache else "full forward", "arch": cfg.arch,
           "classes": split.classes, "train_size": len(split.train), "test_size": len(split.test),
           "epochs": cfg.epochs, "batches_per_epoch": math.ceil(len(split.train) / cfg.batch_size),
           "trainable_params": report.trainable_count, "frozen_params": report.frozen_count,
           "weights": report.weights_source, "time": t_start}

    if use_cache:
        t0 = time.time()
        feats = {}
        for name, samples in (("train", split.train), ("test", split.test)):
            key = feature_cache_key(arch=cfg.arch, variant=report.variant, weights=cfg.weights,
                                    transform=repr(eval_tf), samples=samples)
            feats[name], hit = cached_head_inputs(cache_dir, key, lambda s=samples: compute_head_inputs(
                model, report.head_name, s, eval_tf, device=device, batch_size=inference_batch_size(device),
                num_workers=cfg.workers))
            yield {"type": "features", "split": name, "images": len(feats[name].labels),
                   "skipped": feats[name].skipped, "from_disk": hit, "seconds": time.time() - t0}
        sampler = EpochShuffle(len(feats["train"].labels), cfg.seed)
        train_loader = _feature_loader(feats["train"], cfg.batch_size, sampler=sampler)
        test_loader = _feature_loader(feats["test"], max(cfg.batch_size, 256))
        forward, fixed_skips = head, feats["train"].skipped + feats["test"].skipped
    else:
        sampler = EpochShuffle(len(split.train), cfg.seed)
        train_loader = _image_loader(ListDataset(split.train, train_tf), cfg.batch_size, device,
                                     sampler=sampler, workers=cfg.workers)
        test_loader = _image_loader(ListDataset(split.test, eval_tf), cfg.batch_size, device, workers=cfg.workers)
        forward, fixed_skips = model, 0

    optimizer = torch.optim.SGD(trainable_parameters(model), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    criterion = nn.CrossEntropyLoss()
    best_acc, best_epoch = -1.0, None
    for epoch in range(1, cfg.epochs + 1):
        t_epoch = time.time()
        sampler.set_epoch(epoch)
        set_train_mode(model, report.head_name, cfg.freeze)
        totals = None
        for record in train_one_epoch(forward, train_loader, optimizer, criterion, device=device, epoch=epoch,
                                      total=len(split.train), log_every=cfg.log_every, run=run, autocast=autocast):
            if record["type"] == "train_totals":
                totals = record
            else:
                yield record
        model.eval()
        result = evaluate(forward, test_loader, criterion, device=device, num_classes=num_classes, autocast=autocast)
        predictions = result.pop("predictions")
        is_best = result["test_acc"] is not None and result["test_acc"] > best_acc
        record = {"type": "epoch", "epoch": epoch, "train_loss": totals["loss"], **result,
                  "skipped_images": totals["skipped"] + result.pop("skipped") + fixed_skips,
                  "seconds": time.time() - t_epoch, "best": is_best}
        save_checkpoint(run.last, model, optimizer, cfg, split.classes, epoch, record)
        if is_best or best_epoch is None:
            best_acc, best_epoch = (result["test_acc"] if result["test_acc"] is not None else best_acc), epoch
            save_checkpoint(run.best, model, optimizer, cfg, split.classes, epoch, record)
        atomic_write_json(run.predictions, [
            {**p, "path": split.test[p["index"]][0]} for p in predictions])
        yield record
    atomic_torch_save(model.state_dict(), run.plain_state_dict(cfg.arch))


def train(cfg: TrainConfig, run_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None
          ) -> Iterator[dict]:
    """Train ``cfg`` into ``run_dir``, yielding every record as it is appended to metrics.jsonl."""
    run = open_new_run(run_dir)
    atomic_write_json(run.config, cfg.to_dict())
    t0 = time.time()
    status, reason, epochs, start = "completed", "", [], {}

    def emit(record):
        record.setdefault("time", time.time())
        append_jsonl(run.metrics, record)
        return record

    try:
        for record in _records(cfg, run, Path(cache_dir) if cache_dir else None):
            if record["type"] == "epoch":
                epochs.append(record)
            elif record["type"] == "start":
                start = record
            yield emit(record)
    except StopRequested:
        status, reason = "stopped", "stopped on request; the last completed epoch's checkpoint is kept"
    except NonFiniteLoss as exc:
        status, reason = "failed", str(exc)
    except UserError as exc:
        status, reason = "failed", str(exc)
    except GeneratorExit:
        status, reason = "stopped", "the consumer of the record stream stopped early"
        _finish(run, emit, status, reason, epochs, start, t0)
        raise
    except Exception as exc:  # a bug or a resource problem: keep the traceback for the log
        status, reason = "failed", f"{type(exc).__name__}: {exc}"
        atomic_write_text(run.path / "error.txt", traceback.format_exc())
    yield _finish(run, emit, status, reason, epochs, start, t0)


def _finish(run: RunDir, emit, status, reason, epochs, start, t0) -> dict:
    tested = [e for e in epochs if e["test_acc"] is not None]
    best = max(tested, key=lambda e: e["test_acc"], default=None)
    final = emit({"type": "final", "status": status, "reason": reason,
                  "epochs_completed": len(epochs),
                  "final_acc": epochs[-1]["test_acc"] if epochs else None,
                  "best_acc": best["test_acc"] if best else None, "best_epoch": best["epoch"] if best else None,
                  "seconds": time.time() - t0, "device": start.get("device"), "device_name": start.get("device_name"),
                  "path": start.get("path"),
                  "skipped_images": epochs[-1]["skipped_images"] if epochs else 0})
    atomic_write_json(run.summary, final)
    run.stop_flag.unlink(missing_ok=True)
    return final
