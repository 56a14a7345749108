"""Cached backbone features: when the front of the model is frozen and inputs are fixed, compute
the frozen part's output once and train what follows on it.

With freeze 'head' that output is what the head receives; with freeze 'last_block' it is what
the body's last stage receives (the architecture table's ``cut``). It is captured with a
forward pre-hook, so the same code works for every module in the table (``fc``,
``classifier.6``, ``add_Linear``, ``_fc``, ``layer4``, ``features.24``, ``_blocks.15``).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Generator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.datasets import (
    CachedView,
    DeferredJpegDataset,
    GpuJpegDecoder,
    ListDataset,
    _needs_pil,
    collate_deferred,
    collate_skipping_unreadable,
)
from ..platform.errors import UserError
from ..platform.io import atomic_torch_save, torch_load_tensors
from ..platform.settings import settings


@dataclass
class FeatureSet:
    """The output of a feature pass over one list of images."""

    features: torch.Tensor  # (n, …): what the cut module receives, one row per image, on the CPU
    labels: torch.Tensor
    indices: torch.Tensor  # positions in the list file; unreadable images are absent
    skipped: int


def file_stamp(path: str) -> list:
    """[path, size, mtime in ns]: an image or weights file as the cache knows it (None, None when it is gone)."""
    try:
        st = os.stat(path)
        return [path, st.st_size, st.st_mtime_ns]
    except OSError:
        return [path, None, None]


def extractor_identity(*, arch: str, head_variant: str, weights: str | None, transform: str, precision: str = "fp32",
                       cut: str | None = None) -> str:
    """What makes two feature passes give the same output for the same image: the architecture and head, the
    weights file, the preprocessing (``repr`` of the transform: resize, letterbox, decoding), the precision and
    the module whose input is kept (``cut``; None: the head). Entries of one identity share a folder."""
    digest = hashlib.sha256(json.dumps([arch, head_variant, file_stamp(weights) if weights else None, transform,
                                        precision, cut]).encode())
    return digest.hexdigest()[:24]


def list_key(stamps: list[list]) -> str:
    """One list of images, as its file stamps in order (labels do not change features, so they are not in it)."""
    digest = hashlib.sha256()
    for stamp in stamps:
        digest.update(json.dumps(stamp).encode())
    return digest.hexdigest()[:32]


class _Captured(Exception):
    """Raised by the capturing hook: nothing after the cut needs computing."""


def compute_frozen_outputs(model: nn.Module, cut: str, samples, transform, *, device,
                           batch_size: int = 32, num_workers: int = 0, autocast=nullcontext,
                           gpu_decode: bool | None = None) -> Generator[int, None, FeatureSet]:
    """Run the frozen part of the model once over ``samples`` and keep what module ``cut`` receives
    (the head, or the last stage); the forward pass stops there.

    A generator: it yields the number of images of each batch as it goes (so the caller can
    show progress and honour Stop between batches) and returns the FeatureSet.

    Memory stays flat however many images there are: the outputs go into tensors allocated
    once for the whole list, and each batch is copied into one reused channels_last buffer,
    instead of thousands of small and large allocations that glibc keeps (measured in the
    benchmark's RSS lines).
    """
    captured = []

    def capture(module, args):
        captured.append(args[0])
        raise _Captured

    hook = model.get_submodule(cut).register_forward_pre_hook(capture)
    # On a GPU, JPEGs are decoded there (nvJPEG): CPU decoding would leave a large GPU waiting.
    if gpu_decode is None:  # a cached view is drawn on the CPU, from its own generator
        gpu_decode = device.type == "cuda" and not _needs_pil(transform) and not isinstance(transform, CachedView)
    loader = _loader(samples, transform, device, batch_size, num_workers, gpu_decode)
    decode = GpuJpegDecoder(transform, device) if gpu_decode else None
    out = _Outputs(len(samples))
    buffer = InputBuffer(device)
    model.eval()
    try:
        for images, y, idx, n_skipped in loader:
            out.skipped += n_skipped
            if images is not None and decode:
                images, keep = decode(images)
                y, idx = y[keep], idx[keep]
                out.skipped += int((~keep).sum())
            if images is not None:
                # no_grad rather than inference_mode: the features later feed a head that needs autograd.
                with torch.no_grad(), autocast():
                    try:
                        model(buffer.fill(images))
                    except _Captured:
                        pass
                out.add(captured.pop(), y, idx)
            yield n_skipped + (0 if y is None else len(y))
    finally:
        hook.remove()
    return out.features()


class ForwardFromCut:
    """``model``'s own forward from module ``cut`` on, fed the inputs ``compute_frozen_outputs`` stored.

    The frozen part runs on a tiny stand-in batch (32×32 pixels, about 2% of a real image's cost)
    whose output a pre-hook replaces with the stored one. So the model's own forward applies
    everything after the cut, with the glue a copy of its tail would have to repeat: residual
    sums, shared activation modules, drop-connect rates, the ``view(batch, -1)`` some models do.
    The frozen part is in eval mode and needs no gradient, so the stand-in changes nothing.

    A model that accepts only one input size (``fixed_size``: ViT checks it, and its position embeddings
    fix the token count) gets an empty batch of that size instead: nothing before the cut costs anything,
    and ViT's forward takes the batch size after the cut from the stored tokens.
    """

    STAND_IN = 32

    def __init__(self, model: nn.Module, cut: str, fixed_size: int | None = None):
        self.model, self.fixed_size = model, fixed_size
        self._stored: torch.Tensor | None = None
        model.get_submodule(cut).register_forward_pre_hook(self._substitute)

    def _substitute(self, module, args):
        if self._stored is not None:
            return (self._stored, *args[1:])
        return None

    def __call__(self, stored: torch.Tensor) -> torch.Tensor:
        if self.fixed_size:
            stand_in = torch.zeros(0, 3, self.fixed_size, self.fixed_size, device=stored.device)
        else:
            stand_in = torch.zeros(len(stored), 3, self.STAND_IN, self.STAND_IN, device=stored.device)
        self._stored = stored
        try:
            return self.model(stand_in)
        finally:
            self._stored = None


def _loader(samples, transform, device, batch_size: int, num_workers: int, gpu_decode: bool) -> DataLoader:
    dataset = DeferredJpegDataset(samples, transform) if gpu_decode else ListDataset(samples, transform)
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                      collate_fn=collate_deferred if gpu_decode else collate_skipping_unreadable,
                      pin_memory=device.type == "cuda" and not gpu_decode,
                      prefetch_factor=4 if num_workers and device.type == "cuda" else None)


class InputBuffer:
    """One channels_last input tensor on the device, refilled for every batch of the same shape."""

    def __init__(self, device: torch.device):
        self.device = device
        self.tensor: torch.Tensor | None = None

    def fill(self, images: torch.Tensor) -> torch.Tensor:
        if self.tensor is None or self.tensor.shape != images.shape:
            self.tensor = torch.empty(images.shape, device=self.device, memory_format=torch.channels_last)
        return self.tensor.copy_(images, non_blocking=True)


class _Outputs:
    """Captured inputs (of any shape), labels and indices, written into tensors sized for the whole
    list on the first batch."""

    def __init__(self, capacity: int):
        self.capacity, self.n, self.skipped = capacity, 0, 0
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.i: torch.Tensor | None = None

    def add(self, x: torch.Tensor, y: torch.Tensor, i: torch.Tensor) -> None:
        if self.x is None:
            self.x = torch.empty(self.capacity, *x.shape[1:])
            self.y = torch.empty(self.capacity, dtype=torch.long)
            self.i = torch.empty(self.capacity, dtype=torch.long)
        assert self.y is not None and self.i is not None  # allocated with x
        k = len(y)
        self.x[self.n:self.n + k] = x.float()
        self.y[self.n:self.n + k] = y
        self.i[self.n:self.n + k] = i
        self.n += k

    def features(self) -> "FeatureSet":
        if self.x is None:
            empty = torch.empty(0, dtype=torch.long)
            return FeatureSet(torch.empty(0, 0), empty, empty, self.skipped)
        assert self.y is not None and self.i is not None  # allocated with x
        # clone: a view of the first n rows would keep the whole allocation alive
        n = self.n
        if n == self.capacity:
            return FeatureSet(self.x, self.y, self.i, self.skipped)
        return FeatureSet(self.x[:n].clone(), self.y[:n].clone(), self.i[:n].clone(), self.skipped)


def prune_cache(folder: Path, max_bytes: int | None = None, keep: Path | None = None) -> list[Path]:
    """Delete the least recently used entries until the folder holds at most ``max_bytes``.

    Other processes share the cache and may delete or replace entries while this runs: an
    entry that vanishes is simply no longer counted.
    """
    max_bytes = settings().feature_cache_bytes if max_bytes is None else max_bytes
    entries = []
    for path in Path(folder).rglob("*.pt"):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        entries.append((st.st_mtime, st.st_size, path))
    entries.sort(key=lambda e: e[0], reverse=True)
    total, removed = 0, []
    for _, size, path in entries:
        total += size
        if total > max_bytes and path != keep:
            try:
                path.unlink(missing_ok=True)
            except OSError:  # another process holds or just replaced it; the next prune retries
                continue
            removed.append(path)
    return removed


def _folder(cache_dir: Path | None, identity: str) -> Path | None:
    return Path(cache_dir) / "features" / identity if cache_dir else None


def load_cached_features(cache_dir: Path | None, identity: str, samples: list[tuple[str, int]],
                         stamps: list[list] | None = None) -> FeatureSet | None:
    """The features of ``samples`` under ``identity``, or None. The entry of this very list is read first, then
    the other entries of the same identity, most recent first, until every image is found: a run that leaves some
    images out, or the head search's training + validation list, reuses the lists a check or a run computed. The
    rows come back in this list's order; damaged entries are only misses."""
    folder = _folder(cache_dir, identity)
    if folder is None or not folder.is_dir():
        return None
    stamps = [file_stamp(path) for path, _ in samples] if stamps is None else stamps
    exact = folder / f"{list_key(stamps)}.pt"
    others = sorted((p for p in folder.glob("*.pt") if p != exact), key=_recency, reverse=True)
    wanted: dict[tuple, list[int]] = defaultdict(list)  # stamp → its positions in this list
    for position, stamp in enumerate(stamps):
        wanted[tuple(stamp)].append(position)
    found = _Gathered(len(samples))
    for path in ([exact] if exact.is_file() else []) + others:
        if found.take(path, wanted) and not wanted:
            break
    if wanted or not found.parts:
        return None
    return found.features(samples)


class _Gathered:
    """Rows of ``n`` requested images, gathered from one or more entries of one identity."""

    def __init__(self, n: int):
        self.source = torch.full((n,), -1, dtype=torch.long)  # which part each image's row is in
        self.row = torch.full((n,), -1, dtype=torch.long)  # its row there; -1: the entry's pass could not read it
        self.parts: list[torch.Tensor] = []

    def take(self, path: Path, wanted: dict[tuple, list[int]]) -> bool:
        """Take from the entry at ``path`` every wanted image it holds; False when it holds none or is damaged."""
        try:
            data = torch_load_tensors(path, mmap=True)
            kept, indices, stored = data["features"], data["indices"], data["stamps"]
            if not (isinstance(stored, list) and kept.dim() >= 2 and len(kept) == len(indices) > 0
                    and (not self.parts or kept.shape[1:] == self.parts[0].shape[1:])):
                return False
            row_of = torch.full((len(stored),), -1, dtype=torch.long)
            row_of[indices] = torch.arange(len(indices))
            hits = [(stamp, k) for k, stamp in enumerate(map(tuple, stored)) if stamp in wanted]
        except Exception:
            return False
        if not hits:
            return False
        for stamp, k in hits:
            for position in wanted.pop(stamp, ()):
                self.source[position], self.row[position] = len(self.parts), row_of[k]
        self.parts.append(kept)
        try:
            os.utime(path)  # recently used, for pruning
        except OSError:
            pass
        return True

    def features(self, samples: list[tuple[str, int]]) -> FeatureSet:
        readable = self.row >= 0  # an image an entry's pass could not read is skipped here too
        out = torch.empty(int(readable.sum()), *self.parts[0].shape[1:])
        order = torch.nonzero(readable).flatten()
        for part, kept in enumerate(self.parts):
            mine = self.source[order] == part
            out[mine] = kept[self.row[order[mine]]].float()
        labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        return FeatureSet(out, labels[readable], order, int((~readable).sum()))


def _recency(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def store_cached_features(cache_dir: Path | None, identity: str, samples: list[tuple[str, int]],
                          features: FeatureSet, stamps: list[list] | None = None) -> bool:
    """Keep ``features`` of ``samples`` under ``identity``; False when that was not possible (a full disk): the
    cache is only a speed-up, so the caller goes on without it."""
    folder = _folder(cache_dir, identity)
    if folder is None or not len(features.labels):
        return False  # nothing readable: nothing worth keeping, and no entry an empty list could ever match
    stamps = [file_stamp(path) for path, _ in samples] if stamps is None else stamps
    path = folder / f"{list_key(stamps)}.pt"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"features": features.features, "labels": features.labels, "indices": features.indices,
                           "skipped": features.skipped, "stamps": stamps}, path)
        prune_cache(folder.parent, keep=path)
    except (OSError, UserError):
        return False
    return True
