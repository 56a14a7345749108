"""The feature path: how a run's training images reach the trainable part of the model.

With a frozen body and fixed inputs, the frozen part's output is computed once per image (read from the
feature cache when it is there), and the epochs train on those tensors; otherwise every batch goes through
the full forward pass. Under torchrun each rank computes its share and the shares are gathered in list order.
``choose_feature_path(setup, cache_dir)`` is the one entry: a generator of Progress/Features records that
returns the ``FeaturePath`` the epoch loop draws its batches from.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, Sampler

from ..data.datasets import ListDataset, collate_skipping_unreadable
from ..data.images import load_jpeg_decoder
from ..data.split import EXAMPLES
from ..features.cache import Features as HeadInputs
from ..features.cache import (
    ForwardFromCut,
    compute_frozen_outputs,
    feature_cache_key,
    load_cached_features,
    store_cached_features,
)
from ..platform.accel import inference_batch_size
from ..platform.distributed import SINGLE, World, broadcast, gather_all, shard
from ..platform.errors import RunError
from ..spec.archs import fixed_size
from ..spec.records import Features as FeaturesRecord
from ..spec.records import ProgressMeter
from ..spec.states import Phase
from .setup import Setup


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
    val_loader: DataLoader | DeviceBatches | None = None  # None: no validation split
    val_positions: torch.Tensor | None = None

    def evaluation(self, split: str) -> tuple:
        """(loader, positions) of the split an evaluation pass reads: "val" or "test"."""
        return (self.val_loader, self.val_positions) if split == "val" else (self.test_loader, self.test_positions)


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


def _split_features(features, sizes: list[int]) -> list:
    """Cut the features of several lists computed in one pass back into one per list, with their own indices;
    an image missing from the output was unreadable, and counts as skipped in its own list."""
    parts, offset = [], 0
    for size in sizes:
        mask = (features.indices >= offset) & (features.indices < offset + size)
        kept = int(mask.sum())
        parts.append(HeadInputs(features.features[mask], features.labels[mask], features.indices[mask] - offset,
                                size - kept))
        offset += size
    return parts


def _skipped_examples(samples: list, inputs: HeadInputs) -> list[str]:
    """The paths of the first few images of ``samples`` the pass skipped (absent from its indices)."""
    if not inputs.skipped:
        return []
    kept = set(inputs.indices.tolist())
    return [path for i, (path, _) in enumerate(samples) if i not in kept][:EXAMPLES]


def _empty_inputs() -> HeadInputs:
    return HeadInputs(torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 0)


def _prepare_decoding(s: Setup, samples: list) -> None:
    """Import libjpeg's decoder before a pass that will use it (not when every feature comes from the
    cache): its import is set-up, not part of the pass's images per second."""
    if not s.cfg.uses_letterbox and any(path.lower().endswith((".jpg", ".jpeg")) for path, _ in samples):
        load_jpeg_decoder()  # the letterbox decodes with PIL, and so do other formats


def _compute_splits(s: Setup, todo: dict[str, list], timings: dict[str, float]):
    """Backbone features of the lists in ``todo`` in one pass with one set of workers; yields Progress records
    per list (each list's first at once), returns {list name: HeadInputs}."""
    names = list(todo)
    sizes = [len(todo[name]) for name in names]
    samples = [sample for name in names for sample in todo[name]]
    # Under torchrun each rank computes its share (padded, so all run the same number of batches)
    # and the shares are gathered back into list order; progress counts rank 0's share × ranks.
    positions = shard(len(samples), s.world, pad=True) if s.world.active else list(range(len(samples)))
    scale = s.world.size
    bounds = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
    mine = [sum(bounds[k] <= p < bounds[k + 1] for p in positions) for k in range(len(names))]  # this rank's
    current, in_current = 0, 0
    meter = ProgressMeter(Phase.FEATURES, sizes[0], split=names[0])
    yield meter.first()  # the page shows the feature phase from here, also while the decoder loads
    _prepare_decoding(s, samples)
    batches = compute_frozen_outputs(s.feature_model, s.cut, [samples[p] for p in positions], s.eval_tf,
                                     device=s.device, batch_size=inference_batch_size(s.device),
                                     num_workers=s.workers, autocast=s.feature_autocast)
    t0 = time.time()
    try:
        while True:
            try:
                n = next(batches)
            except StopIteration as finished:
                features = finished.value
                break
            s.check_stop()
            while n:
                take = min(n, mine[current] - in_current)
                if not take and current + 1 == len(names):
                    break  # nothing left to count against (never expected: the counts add up)
                n, in_current = n - take, in_current + take
                record = meter.advance(take * scale) if take else None
                if record:
                    yield record
                if in_current >= mine[current] and current + 1 < len(names):  # the pass reached the next list
                    timings[names[current]], t0 = time.time() - t0, time.time()
                    current, in_current = current + 1, 0
                    meter = ProgressMeter(Phase.FEATURES, sizes[current], split=names[current])
                    yield meter.first()
    finally:
        batches.close()
    timings[names[current]] = time.time() - t0
    if s.world.active:
        features = _gathered(features, positions, len(samples), s.world)
    return dict(zip(names, _split_features(features, sizes)))


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
    """Backbone features of the training, validation and test lists: from the cache where it has them, the rest
    computed in one pass. An empty list (no validation split) needs none.

    Yields Progress and Features records; returns {"train", "val", "test": HeadInputs}.
    """
    # A random body is never cached: its features depend on the seed, not on a file on disk.
    cache = cache_dir if s.cfg.pretrained else None
    splits = {name: samples for name, samples in (("train", s.split.train), ("val", s.split.val),
                                                   ("test", s.split.test)) if samples}
    keys = {name: feature_cache_key(arch=s.cfg.arch, head_variant=s.report.head_variant, weights=s.cfg.weights,
                                    transform=repr(s.eval_tf), samples=samples, precision=s.feature_precision,
                                    cut=None if s.cut == s.report.head_name else s.cut)
            for name, samples in splits.items()}
    t0 = time.time()
    found = {name: load_cached_features(cache, keys[name]) for name in splits} if s.world.main else None
    found = broadcast({name: f for name, f in found.items() if f is not None} if found else {}, s.world)
    timings = {name: time.time() - t0 for name in found}
    todo = {name: samples for name, samples in splits.items() if name not in found}
    computed = (yield from _compute_splits(s, todo, timings)) if todo else {}
    for name, features in computed.items():
        if s.world.main:
            store_cached_features(cache, keys[name], features)
    result = {name: _empty_inputs() for name in ("train", "val", "test")}
    for name in splits:
        result[name] = found.get(name) or computed[name]
        yield FeaturesRecord(split=name, images=len(result[name].labels), skipped=result[name].skipped,
                             from_disk=name in found, seconds=timings.get(name, 0.0),
                             skipped_examples=_skipped_examples(splits[name], result[name]))
    return result


def choose_feature_path(s: Setup, cache_dir: Path | None):
    """Cached features when the front of the model is frozen and inputs are fixed, else the full forward
    pass. With freeze 'head' the head alone runs on them; with 'last_block' the model from its last stage on."""
    cfg, split = s.cfg, s.split
    if s.use_cache:
        feats = yield from extract_features(s, cache_dir)
        if len(feats["train"].labels) == 0:  # nothing to train on: say why, rather than fail inside the head
            raise RunError(f"none of the {len(split.train)} training images could be read (all were skipped as "
                           "unreadable: empty, not images, or damaged); check the data folder")
        sampler = EpochShuffle(len(feats["train"].labels), cfg.seed)
        forward = s.head if s.cut == s.report.head_name else ForwardFromCut(s.model, s.cut, fixed_size(s.cfg.arch))
        evaluation = max(cfg.batch_size, 256)
        return FeaturePath(forward, DeviceBatches(feats["train"], s.device, cfg.batch_size, sampler),
                           DeviceBatches(feats["test"], s.device, evaluation), sampler,
                           sum(f.skipped for f in feats.values()),
                           val_loader=DeviceBatches(feats["val"], s.device, evaluation) if split.val else None)
    _prepare_decoding(s, split.train)
    if s.world.active:
        return _distributed_full_path(s)
    sampler = EpochShuffle(len(split.train), cfg.seed)
    return FeaturePath(s.model,
                       _image_loader(ListDataset(split.train, s.train_tf), cfg.batch_size, s.device,
                                     sampler=sampler, workers=s.workers),
                       _image_loader(ListDataset(split.test, s.eval_tf), cfg.batch_size, s.device,
                                     workers=s.workers), sampler, 0,
                       val_loader=_image_loader(ListDataset(split.val, s.eval_tf), cfg.batch_size, s.device,
                                                workers=s.workers) if split.val else None)


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
    def share(samples: list) -> tuple:
        positions = shard(len(samples), s.world, pad=False)
        loader = _image_loader(ListDataset([samples[p] for p in positions], s.eval_tf), cfg.batch_size, s.device,
                               workers=s.workers)
        return loader, torch.tensor(positions, dtype=torch.long)

    test_loader, test_positions = share(split.test)
    val_loader, val_positions = share(split.val) if split.val else (None, None)
    return FeaturePath(forward, _image_loader(train_set, cfg.batch_size, s.device, sampler=sampler, workers=s.workers),
                       test_loader, sampler, 0, world=s.world, test_positions=test_positions,
                       val_loader=val_loader, val_positions=val_positions)
