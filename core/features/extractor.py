"""One ``FeatureExtractor``: the frozen front of a model as a function of lists of images, with its cache.

Training (the cached-feature path), the data check, the head search and the learning-rate finder all make one
with ``FeatureExtractor.from_config`` and call ``extract``. So they agree on everything a stored feature depends
on: the cut (the head's input, or the last stage's), the preprocessing (the letterbox included), the precision
(bf16 on CUDA), the decoding, the cache identity, and whether a run may train on stored features at all. Each
reads what the others computed: a head-only run after a check computes no feature, even one that leaves images
out (the staged recipe needs the activations where the last stage begins: one pass of its own).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data.datasets import CachedView, Preprocess, build_transform
from ..data.images import load_jpeg_decoder
from ..data.split import EXAMPLES
from ..models.surgery import SurgeryReport, adapt_model
from ..platform.accel import (
    configure_device,
    inference_batch_size,
    inference_copy,
    plan_threads,
    resolve_device,
    to_channels_last,
)
from ..platform.distributed import SINGLE, World, broadcast, gather_all, shard
from ..spec.archs import fixed_size, get_arch
from ..spec.config import TrainConfig
from ..spec.records import Features as FeaturesRecord
from ..spec.records import Progress, ProgressMeter, relay
from ..spec.states import Phase
from .cache import (
    FeatureSet,
    ForwardFromCut,
    compute_frozen_outputs,
    extractor_identity,
    file_stamp,
    load_cached_features,
    store_cached_features,
)

Samples = list[tuple[str, int]]


def evaluation_transform(cfg: TrainConfig) -> Preprocess:
    """The preprocessing of every image that is not augmented: the weights' own, or the letterbox."""
    return build_transform(get_arch(cfg.arch).transforms(), letterbox=cfg.uses_letterbox)


@dataclass
class Extracted:
    """One list's features, and how they were had."""

    name: str
    features: FeatureSet
    from_disk: bool
    seconds: float
    skipped_examples: list[str] = field(default_factory=list)

    def record(self) -> FeaturesRecord:
        return FeaturesRecord(split=self.name, images=len(self.features.labels), skipped=self.features.skipped,
                              from_disk=self.from_disk, seconds=self.seconds, skipped_examples=self.skipped_examples)


CACHED_PROGRESS_FROM = 10_000  # images in a list from which reading its cached features is reported (about 1 s)


@dataclass
class FeatureExtractor:
    model: nn.Module  # the adapted model; its frozen front runs as a BatchNorm-folded copy
    report: SurgeryReport  # how it was adapted: its head, what trains
    cut: str  # the module whose input is the feature: the head, or the body's last stage
    arch: str
    transform: Preprocess | CachedView
    device: torch.device
    precision: str  # "bf16" or "fp32"
    workers: int
    identity: str  # what the output depends on besides the images (the cache's folder)
    cache_dir: Path | None  # None: nothing read from or written to disk
    world: World = SINGLE
    _folded: nn.Module | None = field(default=None, repr=False)

    # ------------------------------------------------------------------------- the rules, once
    @staticmethod
    def precision_for(device: torch.device, asked: str) -> str:
        """bf16 on CUDA (tensor cores; its own cache entries), else what the config asks (fp32 by default)."""
        return "bf16" if device.type == "cuda" or asked == "bf16" else "fp32"

    @staticmethod
    def may_train_on_features(cfg: TrainConfig) -> bool:
        """A run trains on stored features when its front is frozen and its inputs are fixed (no augmentation)."""
        return cfg.feature_cache and cfg.body_partly_fixed and cfg.augmentation == "none"

    @classmethod
    def from_config(cls, cfg: TrainConfig, *, model: nn.Module, report: SurgeryReport, device: torch.device,
                    workers: int, cache_dir: str | Path | None = None, world: World = SINGLE,
                    freeze: str | None = None, view: int = 0) -> FeatureExtractor:
        """The extractor of ``model`` (adapted from ``cfg``): its cut, preprocessing, precision and identity.
        ``freeze``: what trains after the cut, when not the config's own (a stage of the fine_tune recipe);
        ``view``: a cached augmented view's number (0: the plain preprocessing)."""
        cut = report.head_name if (freeze or cfg.freeze) == "head" else get_arch(cfg.arch).cut
        transform: Preprocess | CachedView = (CachedView(get_arch(cfg.arch).transforms(), view, cfg.seed) if view
                                              else evaluation_transform(cfg))
        precision = cls.precision_for(device, cfg.precision)
        identity = extractor_identity(arch=cfg.arch, head_variant=report.head_variant, weights=cfg.weights,
                                      transform=repr(transform), precision=precision,
                                      cut=None if cut == report.head_name else cut)
        # A random body is never stored: its features depend on the seed, not on a file on disk.
        disk = Path(cache_dir) if cache_dir and cfg.pretrained else None
        return cls(model, report, cut, cfg.arch, transform, device, precision, workers, identity, disk, world)

    @classmethod
    def build(cls, cfg: TrainConfig, classes: int, *, cache_dir: str | Path | None = None) -> FeatureExtractor:
        """Model, device and threads from ``cfg`` too: for the check, the head search and the finder, which have
        no run of their own. The model is adapted exactly as a run of ``cfg`` adapts it."""
        device = resolve_device(cfg.device)
        configure_device(device)
        threads, workers = plan_threads(cfg.num_workers, cuda=device.type == "cuda")
        torch.set_num_threads(threads)
        model, report = adapt_model(cfg.arch, classes, weights=cfg.weights, head_variant=cfg.head_variant,
                                    freeze=cfg.freeze, seed=cfg.seed)
        to_channels_last(model.to(device))
        return cls.from_config(cfg, model=model, report=report, device=device, workers=workers,
                               cache_dir=cache_dir)

    # ------------------------------------------------------------------------- what follows the cut
    @property
    def head_name(self) -> str:
        return self.report.head_name

    def forward_after_cut(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The model from the cut on, fed stored features: the head alone, or the model from its last stage."""
        if self.cut == self.head_name:
            return self.model.get_submodule(self.head_name)
        return ForwardFromCut(self.model, self.cut, fixed_size(self.arch))

    @property
    def folded(self) -> nn.Module:
        """The model with BatchNorm folded, for the pass through its frozen part only (it never trains)."""
        if self._folded is None:
            self._folded = inference_copy(self.model)
        return self._folded

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    # ------------------------------------------------------------------------- the pass
    def extract(self, lists: dict[str, Samples], stop: Callable[[], None] = lambda: None
                ) -> Generator[Progress, None, dict[str, Extracted]]:
        """Features of each named list: from the cache where it has them (this list's entry, or any entry of the
        same identity holding all its images), the rest computed in one pass with one set of workers and stored.
        Yields Progress records (each computed list's first at once); ``stop`` raises to end the pass early.
        Under torchrun each rank computes its share and every rank returns all of it, in list order."""
        lists = {name: samples for name, samples in lists.items() if samples}
        t0 = time.time()
        stamps = {name: [file_stamp(path) for path, _ in samples] for name, samples in lists.items()}
        found = (yield from self._cached(lists, stamps)) if self.world.main else {}
        found = broadcast(found, self.world)
        timings = {name: time.time() - t0 for name in found}
        todo = {name: samples for name, samples in lists.items() if name not in found}
        computed = (yield from self._compute(todo, timings, stop)) if todo else {}
        if self.world.main:
            for name, features in computed.items():
                store_cached_features(self.cache_dir, self.identity, lists[name], features, stamps[name])
        return {name: Extracted(name, found.get(name) or computed[name], name in found, timings.get(name, 0.0),
                                _skipped_examples(samples, found.get(name) or computed[name]))
                for name, samples in lists.items()}

    def _cached(self, lists: dict[str, Samples], stamps: dict[str, list]
                ) -> Generator[Progress, None, dict[str, FeatureSet]]:
        """The lists the cache holds, read one at a time. A large list read yields a Progress record of its own
        phase (reading 100,000 images' features takes seconds: the page shows how far it is, and Stop acts between
        lists); "features" progress stays the sign that features were computed."""
        found = {}
        for name, samples in lists.items():
            features = load_cached_features(self.cache_dir, self.identity, samples, stamps[name])
            if features is not None:
                found[name] = features
                if len(samples) >= CACHED_PROGRESS_FROM:
                    yield Progress(phase=Phase.CACHED, split=name, done=len(samples), total=len(samples),
                                   images_per_s=0.0)
        return found

    def _compute(self, todo: dict[str, Samples], timings: dict[str, float], stop: Callable[[], None]
                 ) -> Generator[Progress, None, dict[str, FeatureSet]]:
        names = list(todo)
        sizes = [len(todo[name]) for name in names]
        samples = [sample for name in names for sample in todo[name]]
        # Under torchrun each rank computes its share (padded, so all run the same number of batches) and the
        # shares are gathered back into list order; progress counts rank 0's share × ranks.
        positions = shard(len(samples), self.world, pad=True) if self.world.active else list(range(len(samples)))
        tally = _ListTally(names, sizes, positions, self.world.size)
        yield tally.meter.first()  # the page shows the feature phase from here, also while the decoder loads
        prepare_decoding(samples, self.transform)
        batches = compute_frozen_outputs(self.folded, self.cut, [samples[p] for p in positions], self.transform,
                                         device=self.device, batch_size=inference_batch_size(self.device),
                                         num_workers=self.workers, autocast=self.autocast)
        tally.t0 = time.time()  # each list's seconds are its images' pass, not the decoder's import or the folding
        features = yield from tally.count(batches, timings, stop)
        tally.finish(timings)
        if self.world.active:
            features = _gathered(features, positions, len(samples), self.world)
        return dict(zip(names, _split_features(features, sizes)))



class _ListTally:
    """Counts one pass over several lists back to each list: its own progress meter and its own seconds."""

    def __init__(self, names: list[str], sizes: list[int], positions: list[int], scale: int):
        bounds = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
        self.names, self.sizes, self.scale = names, sizes, scale
        self.mine = [sum(bounds[k] <= p < bounds[k + 1] for p in positions) for k in range(len(names))]  # this rank's
        self.current, self.in_current, self.t0 = 0, 0, time.time()
        self.meter = ProgressMeter(Phase.FEATURES, sizes[0], split=names[0])

    def count(self, batches: Generator[int, None, FeatureSet], timings: dict[str, float], stop: Callable[[], None]
              ) -> Generator[Progress, None, FeatureSet]:
        """Relay the pass's per-batch image counts as each list's progress (Stop between batches); its result."""
        def each(n: int) -> Iterator[Progress]:
            stop()
            yield from self.advance(n, timings)

        return (yield from relay(batches, each))

    def advance(self, n: int, timings: dict[str, float]) -> Generator[Progress, None, None]:
        while n:
            take = min(n, self.mine[self.current] - self.in_current)
            if not take and self.current + 1 == len(self.names):
                break  # nothing left to count against (never expected: the counts add up)
            n, self.in_current = n - take, self.in_current + take
            record = self.meter.advance(take * self.scale) if take else None
            if record:
                yield record
            if self.in_current >= self.mine[self.current] and self.current + 1 < len(self.names):
                timings[self.names[self.current]], self.t0 = time.time() - self.t0, time.time()
                self.current, self.in_current = self.current + 1, 0
                self.meter = ProgressMeter(Phase.FEATURES, self.sizes[self.current], split=self.names[self.current])
                yield self.meter.first()

    def finish(self, timings: dict[str, float]) -> None:
        timings[self.names[self.current]] = time.time() - self.t0


def prepare_decoding(samples: Samples, transform: Preprocess | CachedView) -> None:
    """Import libjpeg's decoder before a pass that will use it (not when every feature comes from the cache):
    its import is set-up, not part of the pass's images per second."""
    if transform.letterbox is None and any(path.lower().endswith((".jpg", ".jpeg")) for path, _ in samples):
        load_jpeg_decoder()  # the letterbox decodes with PIL, and so do other formats


def _split_features(features: FeatureSet, sizes: list[int]) -> list[FeatureSet]:
    """Cut the features of several lists computed in one pass back into one per list, with their own indices;
    an image missing from the output was unreadable, and counts as skipped in its own list."""
    parts, offset = [], 0
    for size in sizes:
        mask = (features.indices >= offset) & (features.indices < offset + size)
        kept = int(mask.sum())
        parts.append(FeatureSet(features.features[mask], features.labels[mask], features.indices[mask] - offset,
                                size - kept))
        offset += size
    return parts


def _gathered(local: FeatureSet, positions: list[int], n: int, world: World) -> FeatureSet:
    """Every rank's share of the features, in list order, each image once (the padding dropped)."""
    mine = (local.features, local.labels, torch.tensor(positions, dtype=torch.long)[local.indices])
    parts = gather_all(mine, world)
    x, y, idx = (torch.cat([p[k] for p in parts]) for k in range(3))
    idx, order = torch.sort(idx, stable=True)
    first_time = torch.ones_like(idx, dtype=torch.bool)
    first_time[1:] = idx[1:] != idx[:-1]
    return FeatureSet(x[order][first_time], y[order][first_time], idx[first_time], n - int(first_time.sum()))


def _skipped_examples(samples: Samples, features: FeatureSet) -> list[str]:
    """The paths of the first few images of ``samples`` the pass skipped (absent from its indices)."""
    if not features.skipped:
        return []
    kept = set(features.indices.tolist())
    return [path for i, (path, _) in enumerate(samples) if i not in kept][:EXAMPLES]


def empty_features() -> FeatureSet:
    return FeatureSet(torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 0)
