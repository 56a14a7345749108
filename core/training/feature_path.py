"""The feature path: how a run's training images reach the trainable part of the model.

With a frozen body and fixed inputs, the frozen part's output is computed once per image (read from the
feature cache when it is there), and the epochs train on those tensors; otherwise every batch goes through
the full forward pass. Under torchrun each rank computes its share and the shares are gathered in list order.
``choose_feature_path(setup, cache_dir)`` is the one entry: a generator of Progress/Features records that
returns the ``FeaturePath`` the epoch loop draws its batches from; ``StagePaths`` gives each stage of a run its
own (the fine_tune recipe's two share one feature pass).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from ..data.datasets import ListDataset, collate_skipping_unreadable
from ..features.cache import FeatureSet
from ..features.extractor import FeatureExtractor, empty_features, prepare_decoding
from ..platform.distributed import SINGLE, World, shard
from ..platform.errors import RunError
from ..spec.choices import Freeze
from ..spec.config import Stage
from ..spec.records import Features as FeaturesRecord
from ..spec.records import Progress, ProgressMeter
from ..spec.states import Phase
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
    and cut by index (no DataLoader, no collate). Yields what the image loaders yield.

    ``views`` (K, n, …): cached augmented views of the same images; each epoch every image comes as one of its
    K + 1 (the plain one included), drawn from the sampler's seed and epoch, so a resumed run draws the same."""

    def __init__(self, features, device: torch.device, batch_size: int, sampler: Sampler | None = None,
                 views: torch.Tensor | None = None):
        self.x = features.features.to(device)
        self.y = features.labels.to(device)
        self.i = features.indices.to(device)
        self.views = views.to(device) if views is not None and len(views) else None
        self.batch_size, self.sampler = batch_size, sampler

    def _drawn_views(self, n: int) -> torch.Tensor | None:
        """Which view each image trains on this epoch (0: the plain one), or None without views."""
        if self.views is None:
            return None
        seed, epoch = getattr(self.sampler, "seed", 0), getattr(self.sampler, "epoch", 0)
        generator = torch.Generator().manual_seed(1_000_003 * seed + epoch + 7)  # not the order's own stream
        return torch.randint(0, len(self.views) + 1, (n,), generator=generator).to(self.x.device)

    def __iter__(self):
        n = len(self.y)
        if not n:
            return  # no readable image: no batch (an empty pass's features have no row shape to cut)
        order = torch.tensor(list(self.sampler), dtype=torch.long) if self.sampler is not None else torch.arange(n)
        drawn = self._drawn_views(n)
        for idx in order.to(self.x.device).split(self.batch_size):
            x = self.x[idx]
            if drawn is not None and self.views is not None:
                pick = drawn[idx]
                viewed = pick > 0
                x[viewed] = self.views[pick[viewed] - 1, idx[viewed]]  # x is a copy: the cache is untouched
            yield x, self.y[idx], self.i[idx], 0

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)


def choose_feature_path(s: Setup, cache_dir: Path | None, freeze: str | None = None
                        ) -> Generator[Progress | FeaturesRecord, None, FeaturePath]:
    """Cached features when the front of the model is frozen and inputs are fixed, else the full forward
    pass. With freeze 'head' the head alone runs on them; with 'last_block' the model from its last stage on.
    ``freeze``: what trains, when not the config's own (a stage of the fine_tune recipe).
    Yields Progress and Features records; returns the FeaturePath."""
    cfg, split = s.cfg, s.split
    if s.use_cache:
        extractor = FeatureExtractor.from_config(cfg, model=s.model, report=s.report, device=s.device,
                                                 workers=s.workers, cache_dir=cache_dir, world=s.world,
                                                 freeze=freeze)
        lists = {"train": split.train, "val": split.val, "test": split.test}
        extracted = yield from extractor.extract(lists, stop=s.check_stop)
        for part in extracted.values():
            yield part.record()
        feats = {name: extracted[name].features if name in extracted else empty_features() for name in lists}
        if len(feats["train"].labels) == 0:  # nothing to train on: say why, rather than fail inside the head
            raise RunError(f"none of the {len(split.train)} training images could be read (all were skipped as "
                           "unreadable: empty, not images, or damaged); check the data folder")
        views = yield from cached_views(s, cache_dir, freeze, feats["train"])
        sampler = EpochShuffle(len(feats["train"].labels), cfg.seed)
        forward = extractor.forward_after_cut()
        evaluation = max(cfg.batch_size, 256)
        return FeaturePath(forward, DeviceBatches(feats["train"], s.device, cfg.batch_size, sampler, views),
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


MEMORY_SHARE = 0.5  # of the memory available now: the most cached views may take


def cached_views(s: Setup, cache_dir: Path | None, freeze: str | None, plain: FeatureSet
                 ) -> Generator[Progress | FeaturesRecord, None, torch.Tensor | None]:
    """The config's K augmented views of the training images, at the same cut as ``plain`` (their features
    without augmentation): each view one pass over the training list, cached like any features. (K, n, …), or
    None for K = 0. Refused before any pass when they would not fit in memory."""
    k, train = s.cfg.aug_views, s.split.train
    if not k or not len(plain.labels):
        return None
    row = plain.features[0].numel() * plain.features.element_size()
    needed, available = k * len(plain.labels) * row, psutil.virtual_memory().available
    if needed > MEMORY_SHARE * available:
        raise RunError(f"{k} cached views of {len(plain.labels):,} training images would take "
                       f"{needed / 2**20:,.0f} MiB, more than half of the {available / 2**20:,.0f} MiB available; "
                       "give fewer aug views (or 0)")
    views = []
    for view in range(1, k + 1):
        s.check_stop()
        extractor = FeatureExtractor.from_config(s.cfg, model=s.model, report=s.report, device=s.device,
                                                 workers=s.workers, cache_dir=cache_dir, world=s.world,
                                                 freeze=freeze, view=view)
        name = f"train, view {view} of {k}"
        extracted = yield from extractor.extract({name: train}, stop=s.check_stop)
        yield extracted[name].record()
        features = extracted[name].features
        if not torch.equal(features.indices, plain.indices):  # an image readable once and not again
            raise RunError(f"the training images read for view {view} are not the ones read without augmentation "
                           "(a file changed or became unreadable during the run); start it again")
        views.append(features.features)
    return torch.stack(views)


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


class StagePaths:
    """The feature path of each stage of a run (``epoch_loop``'s ``path_for``).

    The fine_tune recipe's stages share one feature pass: the activations at the last stage's input, which stage 2
    trains on, are extracted (or read from the cache) once; stage 1's head features are computed from them through
    the frozen last stage, a small share of a pass, rather than by a second pass over the images."""

    def __init__(self, s: Setup, cache_dir: Path | None):
        self.s, self.cache_dir = s, cache_dir
        self._at_cut: FeaturePath | None = None

    def __call__(self, stage: Stage) -> Generator[Progress | FeaturesRecord, None, FeaturePath]:
        if not (self.s.cfg.staged and self.s.use_cache):
            return (yield from choose_feature_path(self.s, self.cache_dir, stage.freeze))
        if self._at_cut is None:
            self._at_cut = yield from choose_feature_path(self.s, self.cache_dir, Freeze.LAST_BLOCK)
        if stage.freeze == Freeze.LAST_BLOCK:
            return self._at_cut
        return (yield from head_path_from(self.s, self._at_cut))


def head_path_from(s: Setup, at_cut: FeaturePath) -> Generator[Progress, None, FeaturePath]:
    """The head's features of every list (and of the cached views), from activations at the last stage's input:
    the model's own forward from the cut, in eval mode, with the head's input caught on the way (its output is
    thrown away)."""
    parts = {"train": at_cut.train_loader, "val": at_cut.val_loader, "test": at_cut.test_loader}
    head = s.model.get_submodule(s.report.head_name)
    caught: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda module, args: caught.append(args[0].detach()))
    s.model.eval()
    derived, views = {}, None
    try:
        for name, batches in parts.items():
            if isinstance(batches, DeviceBatches) and len(batches.y):
                inputs = yield from _through_the_cut(s, at_cut, batches.x, name, caught)
                derived[name] = FeatureSet(inputs, batches.y, batches.i, 0)
        at_cut_views = at_cut.train_loader.views if isinstance(at_cut.train_loader, DeviceBatches) else None
        if at_cut_views is not None:
            k, each = len(at_cut_views), []
            for v, view in enumerate(at_cut_views, 1):
                each.append((yield from _through_the_cut(s, at_cut, view, f"train, view {v} of {k}", caught)))
            views = torch.stack(each)
    finally:
        hook.remove()
    train_set = derived["train"]
    sampler = EpochShuffle(len(train_set.labels), s.cfg.seed)
    evaluation = max(s.cfg.batch_size, 256)
    return FeaturePath(head, DeviceBatches(train_set, s.device, s.cfg.batch_size, sampler, views),
                       DeviceBatches(derived.get("test", empty_features()), s.device, evaluation), sampler,
                       at_cut.fixed_skips,
                       val_loader=DeviceBatches(derived["val"], s.device, evaluation) if "val" in derived else None)


def _through_the_cut(s: Setup, at_cut: FeaturePath, x: torch.Tensor, name: str, caught: list[torch.Tensor]
                     ) -> Generator[Progress, None, torch.Tensor]:
    """What the head receives for activations ``x`` (caught by the hook that fills ``caught``), with progress."""
    meter = ProgressMeter(Phase.FEATURES, len(x), split=name)
    yield meter.first()
    caught.clear()
    with torch.inference_mode():
        for rows in torch.arange(len(x)).split(256):
            s.check_stop()
            at_cut.forward(x[rows.to(x.device)])
            record = meter.advance(len(rows))
            if record:
                yield record
    return torch.cat(caught).flatten(1)
