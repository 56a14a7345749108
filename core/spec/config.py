"""Hyperparameters: one dataclass, saved with every checkpoint so a run can rebuild its model."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields

from ..platform.errors import ConfigError
from ..platform.io import read_json_file
from .archs import ARCHITECTURES
from .choices import Augment, Choice, Freeze, Optimizer, Precision, Recipe, Schedule

DEFAULT_TRAIN_RATIO = 0.6
DEFAULT_VAL_RATIO = 0.2  # of the training share: the images every choice (checkpoint, stop, temperature) reads
SCHEDULES = Schedule.values()
AUGMENTATIONS = Augment.values()
TTA_MODES = {  # test-time augmentation at evaluation and prediction: probabilities averaged over the views
    "flip": "the image and its mirror (2 views)",
    "flip+crops": "the centre and four corner crops, each with its mirror (10 views, torchvision's TenCrop)",
}
FREEZE_MODES = {
    Freeze.HEAD.value: "only the new head trains (the tutorial's fine-tuning)",
    Freeze.LAST_BLOCK.value: "the body's last stage and the head train",
    Freeze.ALL.value: "every layer trains",
}
RECIPES = {
    Recipe.SINGLE.value: "one stage: what the fine-tune mode says trains, every epoch",
    Recipe.FINE_TUNE.value: "two stages: the head on cached features, then the last stage and the head on cached "
                            "activations with a one-cycle schedule and discriminative learning rates",
}

# What a person reads about a freeze mode: what trains, never the word "freeze" alone ("freeze all" reads as
# "nothing trains", the opposite of what it does).
TRAINS = {"head": "head only", "last_block": "last stage + head", "all": "every layer"}

DEVICES = ("auto", "cpu", "cuda")


def _range_problem(label: str, value, low, high, kind: type) -> list[str]:
    """[] when ``value`` is a finite ``kind`` from ``low`` to ``high``; else the sentence that says so."""
    whole = kind is int
    ok = (isinstance(value, int) and not isinstance(value, bool)) if whole else isinstance(value, (int, float))
    if ok and math.isfinite(value) and low <= value <= high:
        return []
    show = (lambda x: f"{x:,}") if whole else (lambda x: f"{x:g}")
    return [f"{label} must be {'a whole number' if whole else 'a number'} from {show(low)} to {show(high)}, "
            f"got {value!r}"]


def field_range(name: str, ui: bool = False) -> tuple:
    """The (low, high) a TrainConfig field allows (``ui``: what a page's widget offers, within it)."""
    meta = next(f.metadata for f in fields(TrainConfig) if f.name == name)
    return meta["ui"] if ui and meta["ui"] else (meta["low"], meta["high"])


def field_default(name: str):
    return next(f.default for f in fields(TrainConfig) if f.name == name)


def _opt(default, help: str, flag: str | None = None, *, low=None, high=None, ui: tuple | None = None, **extra):
    """A field with the help text its command-line flag shows (the CLI's train flags are made from these), and
    for numbers the range it must lie in (``low``/``high``, inclusive; the flags and widgets check the same) and
    the narrower range a page's slider offers (``ui``)."""
    return field(default=default, metadata={"help": help, "flag": flag, "low": low, "high": high, "ui": ui, **extra})


def _arch_names() -> str:

    return ", ".join(f"{name} (weights ship with the app)" if spec.packaged else name
                     for name, spec in ARCHITECTURES.items())


@dataclass(frozen=True)
class Stage:
    """A stretch of a run's epochs with one thing training: the epochs ``first`` to ``last`` (numbered across the
    run), what trains (a freeze mode) and the learning-rate schedule over them."""
    number: int
    freeze: Freeze
    first: int
    last: int
    schedule: Schedule

    @property
    def epochs(self) -> int:
        return self.last - self.first + 1

    @property
    def trains(self) -> str:
        return TRAINS[self.freeze]


@dataclass
class TrainConfig:
    """Everything a run is trained with; checked once, when it is made (``ConfigError``: one line per wrong
    field, each naming what is allowed). A config may name no data (a model to predict with); a run needs one
    of ``data_root`` or ``lists_dir``."""
    arch: str = _opt("resnet18", f"architecture: {_arch_names()}")
    head_variant: str | None = _opt(None, "how the head is adapted: replace (default), or for vgg16 add_outside / "
                                          "add_inside", aliases=("--vgg-variant",))
    freeze: Freeze = _opt(Freeze.HEAD, "head: only the new head trains (the tutorial's fine-tuning); last_block: "
                                       "the body's last stage and the head train; all: every layer trains",
                          choices=Freeze.values(), kind=Freeze, label="freeze mode")
    weights: str | None = _opt(None, "a state-dict file the body starts from; None trains from scratch",
                               flag="")  # the CLI's --weights takes pretrained|none|FILE and resolves it
    recipe: Recipe | None = _opt(None, "fine_tune: two stages, each chosen on validation: stage 1 trains the head "
                                       "on cached features for --epochs, stage 2 the last stage and the head on "
                                       "cached activations for --stage2-epochs, with a one-cycle schedule and the "
                                       "body at lr × body lr factor; single: one stage, as the freeze mode says "
                                       "(default: fine_tune with freeze head, single with last_block or all, as "
                                       "measured best; configs saved before recipes existed read as single)",
                                 choices=Recipe.values(), kind=Recipe)
    epochs: int = _opt(5, "passes over the training list (with the fine_tune recipe: stage 1's)", low=1, high=10_000,
                       ui=(1, 50))
    stage2_epochs: int = _opt(3, "the fine_tune recipe's stage 2: passes with the last stage unfrozen", low=1,
                              high=10_000, ui=(1, 30))
    stage2_lr_factor: float = _opt(0.5, "the fine_tune recipe's stage 2 peaks at lr × this (its body at that × the "
                                        "body lr factor): the head stage 1 trained moves less (fastai's halving)",
                                   low=1e-3, high=1.0)
    batch_size: int = _opt(8, "images per optimiser step", low=1, high=65_536)
    optimizer: Optimizer = _opt(Optimizer.ADAMW, "adamw (Adam with decoupled weight decay, fastai's default; "
                                                 "measured best here) or sgd (the tutorial's)",
                                choices=Optimizer.values(), kind=Optimizer)
    lr: float = _opt(3e-3, "learning rate (the head's; with a one-cycle schedule its peak)", low=1e-8, high=10.0)
    body_lr_factor: float = _opt(0.1, "the body's layers that train (freeze last_block or all) use lr × this factor "
                                      "when they start from pretrained weights, so fine-tuning does not wreck them "
                                      "(1: one rate for all); from scratch every layer uses lr", low=1e-4, high=1.0)
    momentum: float = _opt(0.9, "SGD's momentum (the tutorial's SGD has none: 0), AdamW's beta1; a one-cycle schedule "
                                "cycles it from 0.95 down to 0.85 and back when it is above 0", low=0.0, high=0.999,
                           ui=(0.0, 0.99))
    weight_decay: float = _opt(0.0, "weight decay (SGD's L2 penalty, AdamW's decoupled decay)", low=0.0, high=1.0)
    label_smoothing: float = _opt(0.0, "cross-entropy label smoothing (0: none)", low=0.0, high=0.5)
    schedule: Schedule = _opt(Schedule.NONE, "learning-rate schedule: none, step (StepLR: × gamma every step-size "
                                             "epochs, the PyTorch tutorial's 7 and 0.1), cosine (to 0 over the "
                                             "epochs) or one_cycle (OneCycleLR: up to lr over the warm-up share, "
                                             "then down to lr/100,000, every batch); with the fine_tune recipe, "
                                             "stage 1's (stage 2 is always one-cycle)", choices=SCHEDULES,
                              kind=Schedule)
    warmup: float = _opt(0.25, "the one-cycle schedule's share of steps spent rising to lr (fastai's 0.25)",
                         low=0.01, high=0.9)
    step_size: int = _opt(7, "epochs between the step schedule's decays", low=1, high=10_000)
    gamma: float = _opt(0.1, "the step schedule's factor", low=1e-4, high=1.0)
    patience: int = _opt(0, "stop early after this many epochs without a better validation accuracy (0: never; with "
                            "the fine_tune recipe it watches stage 2)",
                         low=0, high=10_000, ui=(0, 50))
    class_weights: bool = _opt(False, "weight the loss by inverse class frequency (for imbalanced classes)")
    train_ratio: float = _opt(DEFAULT_TRAIN_RATIO, "share of each class that goes to training (with --data)",
                              low=0.01, high=0.99, ui=(0.1, 0.9))
    val_ratio: float = _opt(DEFAULT_VAL_RATIO, "share of each class's training images set aside as validation, "
                                               "which every choice reads (kept epoch, early stopping, temperature); "
                                               "0: none, as the tutorial (the last epoch is kept, test is printed "
                                               "every epoch); list files with a val.txt keep theirs",
                            low=0.0, high=0.9, ui=(0.0, 0.5))
    seed: int = _opt(0, "sets the split, the new head's initialisation and the data order", low=0, high=2**32 - 1,
                     ui=(0, 1_000_000))
    num_workers: int = _opt(-1, "image-decoding worker processes; -1 picks from the machine's cores", low=-1, high=256,
                            ui=(0, 8))
    device: str = _opt("auto", "auto (CUDA when present), cpu, cuda or cuda:N")
    flip: bool = _opt(False, "random horizontal flip while training (needs the full forward pass); "
                             "the same as --augment flip")
    augment: Augment = _opt(Augment.NONE, "augmentation preset while training: none, flip, crop+flip (the PyTorch "
                                          "tutorial's RandomResizedCrop + horizontal flip) or letterbox+flips (the "
                                          "recipe's letterbox with horizontal and vertical flips); any but none "
                                          "needs the full forward pass",
                            choices=AUGMENTATIONS, kind=Augment, label="augmentation")
    aug_views: int = _opt(0, "augmentation without losing the cache: K augmented views of each training image (a "
                             "crop of 35-100% of the area, a horizontal flip, brightness, contrast and saturation × "
                             "0.8-1.2), computed once and cached beside the plain one; each epoch trains every image "
                             "on one of its K + 1, drawn by the seed and the epoch (0: none). Costs K passes over the "
                             "training images, once", low=0, high=8, ui=(0, 8))
    letterbox: bool = _opt(False, "the tutorial's preprocessing (whole image on a black square) instead of "
                                  "resize + centre crop")
    feature_cache: bool = _opt(True, "with a frozen body and fixed inputs, compute each image's backbone "
                                     "features once (same result, much faster)")
    precision: Precision = _opt(Precision.FP32, "the frozen feature pass's arithmetic: fp32, or bf16 (fast, "
                                                "approximate: logits differ by up to about 0.4; the benchmark prints "
                                                "its effect on accuracy)", choices=Precision.values(), kind=Precision)
    log_every: int = _opt(10, "a loss line every this many batches", low=1, high=10**9)
    processes: int = _opt(1, "training processes (the app starts them with torchrun; on the command line, "
                             "run torchrun yourself): on CUDA one per GPU", flag="", low=1, high=1024)
    data_root: str | None = _opt(None, "a class-folder root, split at start", flag="--data")
    lists_dir: str | None = _opt(None, "a folder with train.txt / test.txt (path<TAB>label) and optionally "
                                       "classes.json", flag="--lists")
    exclude: tuple[str, ...] = _opt((), "training images left out (paths, e.g. the label suspects of `inspect`); "
                                        "the test split stays whole, so its figure stays comparable",
                                    flag="")  # the CLI's --exclude FILE reads the paths from a file

    tuned_by: str = _opt("", "where these settings came from when a head search chose them (`tune`)", flag="")
    keep_together: tuple[tuple[str, ...], ...] = _opt(
        (), "groups of paths (the duplicate groups of `inspect`) the split keeps each on one side, so no copy of a "
            "test image is trained on (with --data)", flag="")  # the CLI's --keep-together REPORT.json
    dataset_version: str = _opt("", "the dataset version (`fix`) this run's data was read with: v1, v2, … (empty: "
                                    "the folder as it is)", flag="")
    relabel: tuple[tuple[str, str], ...] = _opt((), "new classes of images (path, class name) from the dataset "
                                                    "version; the folder is not touched (with --data)", flag="")
    drop: tuple[str, ...] = _opt((), "images the dataset version leaves out of every split (with --data)", flag="")

    MAX_EXCLUDED = 1_000_000

    def __post_init__(self):
        for f in fields(self):  # a choice given as its string (JSON, flags, widgets) becomes its enum member
            kind, value = f.metadata.get("kind"), getattr(self, f.name)
            if kind is not None and not isinstance(value, kind) and value in kind.values():
                setattr(self, f.name, kind(value))
        if self.recipe is None:  # the default: the staged recipe where only the head would train, else one stage
            self.recipe = Recipe.FINE_TUNE if self.freeze == "head" else Recipe.SINGLE
        if isinstance(self.exclude, list):  # read back from JSON
            self.exclude = tuple(self.exclude)
        if isinstance(self.keep_together, list) and all(isinstance(g, (list, tuple)) for g in self.keep_together):
            self.keep_together = tuple(tuple(group) for group in self.keep_together)
        if isinstance(self.relabel, list) and all(isinstance(r, (list, tuple)) for r in self.relabel):
            self.relabel = tuple((r[0], r[1]) if len(r) == 2 else tuple(r) for r in self.relabel)  # type: ignore
        if isinstance(self.drop, list):
            self.drop = tuple(self.drop)
        problems = self.problems()
        if problems:
            raise ConfigError("; ".join(problems))

    def problems(self) -> list[str]:
        """What is wrong with these settings: one sentence per wrong field, each saying what is allowed."""

        found = []
        for f in fields(self):
            value, label = getattr(self, f.name), f.metadata.get("label") or f.name.replace("_", " ")
            if f.metadata.get("low") is not None:
                found += _range_problem(label, value, f.metadata["low"], f.metadata["high"], type(f.default))
            elif f.metadata.get("choices") and value not in f.metadata["choices"]:
                found.append(f"{label} '{value}' does not exist (allowed: {', '.join(f.metadata['choices'])})")
        if self.arch not in ARCHITECTURES:
            found.append(f"architecture '{self.arch}' does not exist (allowed: {', '.join(ARCHITECTURES)})")
        elif (self.head_variant is not None
              and self.head_variant not in (v.name for v in ARCHITECTURES[self.arch].variants)):
            found.append(f"head variant '{self.head_variant}' does not exist for {self.arch} (allowed: "
                         + ", ".join(v.name for v in ARCHITECTURES[self.arch].variants) + ")")
        if self.device not in DEVICES and not (self.device.startswith("cuda:") and self.device[5:].isdigit()):
            found.append(f"device '{self.device}' is not supported (allowed: auto, cpu, cuda, cuda:N)")
        if self.flip and self.augment not in ("none", "flip"):
            found.append(f"--flip and --augment {self.augment} say different things: give one of them")
        if not isinstance(self.exclude, tuple) or not all(isinstance(p, str) and p for p in self.exclude):
            found.append("exclude must be a list of image paths")
        elif len(self.exclude) > self.MAX_EXCLUDED:
            found.append(f"exclude lists {len(self.exclude):,} paths; at most {self.MAX_EXCLUDED:,} are allowed")
        if not isinstance(self.keep_together, tuple) or not all(
                isinstance(g, tuple) and all(isinstance(p, str) and p for p in g) for g in self.keep_together):
            found.append("keep together must be a list of groups of image paths")
        elif sum(map(len, self.keep_together)) > self.MAX_EXCLUDED:
            found.append(f"keep together names more than {self.MAX_EXCLUDED:,} paths")
        elif self.keep_together and self.lists_dir is not None:
            found.append("keep together re-splits a data root; list files are already split (give --data instead)")
        found += self._version_problems()
        found += self._recipe_problems()
        if self.patience and self.val_ratio == 0 and isinstance(self.patience, int):
            found.append("early stopping (patience) watches the validation split, and val ratio 0 makes none: give "
                         "a val ratio above 0, or patience 0")
        if self.data_root is not None and self.lists_dir is not None:
            found.append("give exactly one of a data root (class folders) or a lists folder (train.txt/test.txt)")
        return found

    def _recipe_problems(self) -> list[str]:
        found = []
        if isinstance(self.aug_views, int) and self.aug_views > 0:
            if not (self.feature_cache and self.body_partly_fixed and self.augmentation == "none"):
                found.append("cached augmented views (aug views) train on the feature cache: they need it on, a "
                             "frozen front (freeze head or last_block) and augment none; give aug views 0 to "
                             "augment every batch instead")
            if self.letterbox:
                found.append("cached augmented views crop the image, which the letterbox keeps whole: give aug views "
                             "0 or no letterbox")
        if self.recipe != "fine_tune":
            return found
        if self.freeze != "head":
            found.append(f"the fine_tune recipe decides what trains in each stage (stage 1 the head, stage 2 the last "
                         f"stage and the head), so freeze must be head, got {self.freeze}; freeze last_block or all "
                         "train in one stage with recipe single")
        if self.processes != 1 and not (self.feature_cache and self.augmentation == "none"):
            found.append("the fine_tune recipe trains in several processes on cached features only: give "
                         "augment none and the feature cache, or processes 1 (or recipe single)")
        return found

    def _version_problems(self) -> list[str]:
        found = []
        pairs = isinstance(self.relabel, tuple) and all(
            isinstance(r, tuple) and len(r) == 2 and all(isinstance(v, str) and v for v in r) for r in self.relabel)
        if not pairs:
            found.append("relabel must be a list of (image path, class name) pairs")
        elif len(self.relabel) > self.MAX_EXCLUDED:
            found.append(f"relabel names {len(self.relabel):,} images; at most {self.MAX_EXCLUDED:,} are allowed")
        if not isinstance(self.drop, tuple) or not all(isinstance(p, str) and p for p in self.drop):
            found.append("drop must be a list of image paths")
        elif len(self.drop) > self.MAX_EXCLUDED:
            found.append(f"drop lists {len(self.drop):,} paths; at most {self.MAX_EXCLUDED:,} are allowed")
        if not isinstance(self.dataset_version, str) or len(self.dataset_version) > 20:
            found.append("dataset version must be a short name such as v3")
        if (self.relabel or self.drop) and self.lists_dir is not None:
            found.append("a dataset version's relabels and drops apply to a data root; list files are already "
                         "written (export the corrected lists, or give --data)")
        return found

    def stages(self) -> list[Stage]:
        """What trains when: one stage, or the fine_tune recipe's two (epochs numbered on across them)."""
        if not self.staged:
            return [Stage(1, self.freeze, 1, self.epochs, self.schedule)]
        return [Stage(1, Freeze.HEAD, 1, self.epochs, self.schedule),
                Stage(2, Freeze.LAST_BLOCK, self.epochs + 1, self.total_epochs, Schedule.ONE_CYCLE)]

    def stage_of(self, epoch: int) -> Stage:
        return next((stage for stage in self.stages() if epoch <= stage.last), self.stages()[-1])

    @property
    def what_trains(self) -> str:
        """What trains, as a person reads it: "head only", or the staged recipe's "head only, then last stage +
        head"."""
        return ", then ".join(stage.trains for stage in self.stages())

    @property
    def staged(self) -> bool:
        """Two stages (the fine_tune recipe): the head first, then the last stage with it."""
        return self.recipe == "fine_tune"

    @property
    def total_epochs(self) -> int:
        """Every epoch the run trains, over all its stages (epochs are numbered 1 to this, stage after stage)."""
        return self.epochs + (self.stage2_epochs if self.staged else 0)

    @property
    def has_data(self) -> bool:
        return (self.data_root is None) != (self.lists_dir is None)

    @property
    def augmentation(self) -> Augment:
        """The preset in effect (``flip`` is the older spelling of ``augment flip``)."""
        return Augment.FLIP if self.flip else self.augment

    @property
    def uses_letterbox(self) -> bool:
        return self.letterbox or self.augmentation == "letterbox+flips"

    @property
    def body_partly_fixed(self) -> bool:
        """Part of the body is frozen (freeze head or last_block): its output can be computed once and cached."""
        return self.freeze != "all"

    @property
    def pretrained(self) -> bool:
        """The body starts from a weights file (False: random initialisation, training from scratch)."""
        return self.weights is not None

    def to_dict(self) -> dict:
        """Plain JSON values (a checkpoint loads them with ``weights_only``, which knows no enums)."""
        return {k: v.value if isinstance(v, Choice) else v for k, v in asdict(self).items()}

    def changed(self, **changes) -> TrainConfig:
        """This config with ``changes`` (checked like any config): the one way a config is derived from another
        (the from-scratch twin, the head search's best settings, a resumed run's)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown settings {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def from_saved(cls, data: dict) -> "TrainConfig":
        """A config as a run or checkpoint saved it: one saved before recipes existed trained in one stage."""
        if isinstance(data, dict) and "recipe" not in data:
            data = {**data, "recipe": Recipe.SINGLE.value}
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        try:
            return cls.from_saved(read_json_file(path))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"could not read config '{path}': {exc}") from None


@dataclass(frozen=True)
class Choices:
    """What a visitor chose on the pages, which the pages share (and keep in the URL): the data and its split, the
    architecture, where the weights come from, the fine-tune mode and the letterbox."""
    data_root: str | None = None
    train_ratio: float = DEFAULT_TRAIN_RATIO
    val_ratio: float = DEFAULT_VAL_RATIO
    seed: int = 0
    arch: str | None = None  # None: the app's rule (resnet18 with its weights here, else the offline one)
    head_variant: str | None = None
    weights_mode: str = "pretrained"  # or "none" (from scratch); core.models.weights names both
    weights_file: str = ""
    freeze: str = Freeze.HEAD.value
    letterbox: bool = False

    def config(self, *, arch: str, weights: str | None, data_root: str | None, **settings) -> TrainConfig:
        """A run's config from these choices and the page's other ``settings``: the one way a page makes one (the
        Training page's Start, the Check page's run without the suspects)."""
        return TrainConfig(**{"arch": arch, "head_variant": self.head_variant, "weights": weights,
                              "freeze": self.freeze, "train_ratio": self.train_ratio, "val_ratio": self.val_ratio,
                              "seed": self.seed, "letterbox": self.letterbox, "data_root": data_root, **settings})
