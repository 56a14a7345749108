"""The feature path: how a run's training images reach the trainable part of the model.

With a frozen body and fixed inputs, the frozen part's output is computed once per image (read from the
feature cache when it is there), and the epochs train on those tensors; otherwise every batch goes through
the full forward pass. Under torchrun each rank computes its share and the shares are gathered in list order.
``choose_feature_path(setup, cache_dir)`` is the one entry: a generator of Progress/Features records that
returns the ``FeaturePath`` the epoch loop draws its batches from.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from ..data.datasets import ListDataset, collate_skipping_unreadable
from ..features.extractor import FeatureExtractor, empty_features, prepare_decoding
from ..platform.distributed import SINGLE, World, shard
from ..platform.errors import RunError
from ..spec.records import Features as FeaturesRecord
from ..spec.records import Progress
from .setup import Setup


@dataclass
class FeaturePath:
    """What the epoch loop trains through: the head on stored features, or the whole model on images."""
    forward: Callable[[torch.Tensor], torch.Tensor]
    train_loader: DataLoader | DeviceBatches
    test_loader: DataLoader | DeviceBatches
    sampler: "EpochShuffle | DistributedSampler"  # the order of an epoch (set_epoch before each)
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


def image_loader(dataset, batch_size: int, device, *, sampler=None, workers: int = 0):
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
        if not n:
            return  # no readable image: no batch (an empty pass's features have no row shape to cut)
        order = torch.tensor(list(self.sampler), dtype=torch.long) if self.sampler is not None else torch.arange(n)
        for idx in order.to(self.x.device).split(self.batch_size):
            yield self.x[idx], self.y[idx], self.i[idx], 0

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)


def choose_feature_path(s: Setup, cache_dir: Path | None
                        ) -> Generator[Progress | FeaturesRecord, None, FeaturePath]:
    """Cached features when the front of the model is frozen and inputs are fixed, else the full forward
    pass. With freeze 'head' the head alone runs on them; with 'last_block' the model from its last stage on.
    Yields Progress and Features records; returns the FeaturePath."""
    cfg, split = s.cfg, s.split
    if s.use_cache:
        extractor = FeatureExtractor.from_config(cfg, model=s.model, report=s.report, device=s.device,
                                                 workers=s.workers, cache_dir=cache_dir, world=s.world)
        lists = {"train": split.train, "val": split.val, "test": split.test}
        extracted = yield from extractor.extract(lists, stop=s.check_stop)
        for part in extracted.values():
            yield part.record()
        feats = {name: extracted[name].features if name in extracted else empty_features() for name in lists}
        if len(feats["train"].labels) == 0:  # nothing to train on: say why, rather than fail inside the head
            raise RunError(f"none of the {len(split.train)} training images could be read (all were skipped as "
                           "unreadable: empty, not images, or damaged); check the data folder")
        sampler = EpochShuffle(len(feats["train"].labels), cfg.seed)
        forward = extractor.forward_after_cut()
        evaluation = max(cfg.batch_size, 256)
        return FeaturePath(forward, DeviceBatches(feats["train"], s.device, cfg.batch_size, sampler),
                           DeviceBatches(feats["test"], s.device, evaluation), sampler,
                           sum(f.skipped for f in feats.values()),
                           val_loader=DeviceBatches(feats["val"], s.device, evaluation) if split.val else None)
    prepare_decoding(split.train, s.eval_tf)
    if s.world.active:
        return _distributed_full_path(s)
    sampler = EpochShuffle(len(split.train), cfg.seed)
    return FeaturePath(s.model,
                       image_loader(ListDataset(split.train, s.train_tf), cfg.batch_size, s.device,
                                     sampler=sampler, workers=s.workers),
                       image_loader(ListDataset(split.test, s.eval_tf), cfg.batch_size, s.device,
                                     workers=s.workers), sampler, 0,
                       val_loader=image_loader(ListDataset(split.val, s.eval_tf), cfg.batch_size, s.device,
                                                workers=s.workers) if split.val else None)


def _distributed_full_path(s: Setup) -> FeaturePath:
    """Each rank trains on its share (DistributedSampler, padded to equal length) through DDP, and tests
    its share of the test list (not padded: every test image counted once, the figures summed)."""

    cfg, split = s.cfg, s.split
    train_set = ListDataset(split.train, s.train_tf)
    sampler: DistributedSampler = DistributedSampler(train_set, num_replicas=s.world.size, rank=s.world.rank,
                                                     shuffle=True, seed=cfg.seed)
    forward = s.model
    if s.report.trainable_count:
        forward = DistributedDataParallel(s.model, device_ids=[s.device.index] if s.device.type == "cuda" else None)
    def share(samples: list) -> tuple:
        positions = shard(len(samples), s.world, pad=False)
        loader = image_loader(ListDataset([samples[p] for p in positions], s.eval_tf), cfg.batch_size, s.device,
                               workers=s.workers)
        return loader, torch.tensor(positions, dtype=torch.long)

    test_loader, test_positions = share(split.test)
    val_loader, val_positions = share(split.val) if split.val else (None, None)
    return FeaturePath(forward, image_loader(train_set, cfg.batch_size, s.device, sampler=sampler, workers=s.workers),
                       test_loader, sampler, 0, world=s.world, test_positions=test_positions,
                       val_loader=val_loader, val_positions=val_positions)
