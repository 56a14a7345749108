"""The dataset split and the tutorial's list files, without torch (so ``python -m core split`` starts fast).

A root folder holds one sub-folder per class. ``scan_image_folder`` finds the images,
``split_dataset`` splits each class on its own after a seeded shuffle, and
``write_split``/``read_split`` store ``train.txt``, ``test.txt`` (``path<TAB>label``, UTF-8)
and ``classes.json``.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import stat
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping, Optional

from ..platform.errors import DatasetError
from ..platform.io import MAX_LIST_BYTES, NotAFile, atomic_write_text, open_regular, read_json_file
from ..platform.settings import settings
from ..spec.config import DEFAULT_TRAIN_RATIO, DEFAULT_VAL_RATIO, TrainConfig, field_range
from .health import Unreadable, read_header

# torchvision.datasets.folder.IMG_EXTENSIONS, spelled out because importing torchvision costs seconds
# that a split should not pay; tests/data/test_split.py checks the two stay equal.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def unsupported_type(name: str) -> str:
    """Why a file is skipped for its type: "GIF is not a supported type (supported: JPG, JPEG, …)"."""
    suffix = os.path.splitext(name)[1]
    what = f"{suffix[1:].upper()} is" if suffix[1:] else "a file without an extension is"
    return f"{what} not a supported image type (supported: {', '.join(e[1:].upper() for e in IMG_EXTENSIONS)})"


def has_file_allowed_extension(filename: str, extensions: tuple[str, ...]) -> bool:
    return filename.lower().endswith(extensions)

LIST_FILES = ("train.txt", "test.txt", "classes.json", "val.txt")  # val.txt: absent in the tutorial's lists
IMBALANCE_WARNING_RATIO = 3.0  # the largest class over 3× the smallest


# ----------------------------------------------------------------------------- scan
@dataclass
class Skipped:
    path: str
    reason: str
    unreadable: bool = False  # an image file that cannot be used (empty, not an image, truncated, too large)


@dataclass
class FolderScan:
    root: str
    classes: list[str]
    images: dict[str, list[str]]  # class name -> sorted image paths
    skipped: list[Skipped] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)


def _unwritable_reason(path: str) -> str | None:
    if "\t" in path or "\n" in path or "\r" in path:
        return "its path contains a tab or newline, which the path<TAB>label list format cannot hold"
    return None


OUTSIDE = "links outside the allowed folders"
BROKEN = "broken link: what it points to does not exist"
Roots = Optional[tuple[Path, ...]]  # the allowed roots that confine the scan; None: the CLI, unconfined


def _link_problem(path: str, allowed: Roots) -> str | None:
    """Why a symbolic link must be skipped (its target is never named), or None for a usable entry."""
    if not os.path.islink(path):
        return None
    target = os.path.realpath(path)
    if not os.path.exists(target):
        return BROKEN
    if allowed is not None and not any(Path(target) == r or r in Path(target).parents for r in allowed):
        return OUTSIDE
    return None


def _scan_class_folder(class_dir: str, skipped: list[Skipped], allowed: Roots) -> list[str]:
    images = []
    limit = settings().max_image_pixels  # once, not per image
    # followlinks=False: a symlink loop (or a link to a huge tree) must not hang the scan.
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=False):
        dirnames.sort()
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                skipped.append(Skipped(full, "symbolic link to a folder, not followed (it could loop)"))
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            reason = _link_problem(full, allowed)
            if reason is None and not has_file_allowed_extension(name, IMG_EXTENSIONS):
                reason = unsupported_type(name)
            reason = reason or _unwritable_reason(full)
            if reason:
                skipped.append(Skipped(full, reason))
                continue
            header = read_header(full, limit)  # the header only: a cheap check, not a decode
            if isinstance(header, Unreadable):
                skipped.append(Skipped(full, header.reason, unreadable=True))
                continue
            images.append(full)
    return images


def scan_image_folder(root: str | os.PathLike, allowed_roots: Roots = None) -> FolderScan:
    """Find class folders and their images (recursively), reporting everything left out.

    Hidden files and folders (names starting with '.') are ignored without a report; files that are
    not usable images (empty, not an image, truncated, over the pixel limit: ``core.data.health.read_header``)
    are skipped with their reason, so they never reach the list files. With
    ``allowed_roots`` (the app), a class folder or image that is a link leading outside them is
    skipped and its target never listed; broken links are always skipped with a reason.
    """
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DatasetError(f"data root '{root}' is not a folder; give a folder with one sub-folder per class")
    root_str = str(root_path.resolve())
    skipped: list[Skipped] = []
    class_dirs = []
    for entry in sorted(os.scandir(root_str), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue  # hidden entries (.DS_Store, .git, markers) are not data
        problem = _link_problem(entry.path, allowed_roots)
        if problem:
            skipped.append(Skipped(entry.path, problem))
        elif entry.is_dir(follow_symlinks=True):
            class_dirs.append(entry)
        else:
            skipped.append(Skipped(entry.path, "file directly under the root, not inside a class folder"))
    images, empty = {}, []
    for entry in class_dirs:
        reason = _unwritable_reason(entry.name)
        if reason:
            skipped.append(Skipped(entry.path, reason))
            continue
        found = _scan_class_folder(entry.path, skipped, allowed_roots)
        if found:
            images[entry.name] = found
        else:
            empty.append(entry.name)
    return FolderScan(root_str, sorted(images), images, skipped, empty)


# ----------------------------------------------------------------------------- split
@dataclass
class ClassCounts:
    name: str
    label: int
    train: int
    test: int
    val: int = 0


@dataclass
class Split:
    root: str
    classes: list[str]
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]
    train_ratio: float | None  # None: unknown (list files written elsewhere)
    seed: int | None
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    given_by: str | None = None  # "train/ + val/" when the dataset came already split; the ratio did not apply
    class_names: str = "given"  # "given" (folders or classes.json), "from folders" or "numbered" (tutorial lists)
    val: list[tuple[str, int]] = field(default_factory=list)  # carved from the training share; chooses, never trains
    val_ratio: float | None = None  # None: unknown, or validation given as a folder / a val.txt
    has_val_list: bool = True  # False: list files without val.txt (the tutorial's); a run carves its own

    def counts(self) -> list[ClassCounts]:
        train = Counter(label for _, label in self.train)
        test = Counter(label for _, label in self.test)
        val = Counter(label for _, label in self.val)
        return [ClassCounts(c, i, train[i], test[i], val[i]) for i, c in enumerate(self.classes)]

    def summary(self) -> dict:
        return {
            "root": self.root,
            "classes": self.classes,
            "train_ratio": self.train_ratio,
            "seed": self.seed,
            "train_images": len(self.train),
            "val_images": len(self.val),
            "val_ratio": self.val_ratio,
            "test_images": len(self.test),
            "counts": [asdict(c) for c in self.counts()],
            "skipped": [asdict(s) for s in self.skipped],
            "warnings": self.warnings,
            "given_by": self.given_by,
        }


def _check_ratio(ratio: float, name: str = "train_ratio") -> None:
    low, high = field_range(name)  # the config's own range: the flag, the slider and the split agree
    if not low <= ratio <= high:
        raise DatasetError(f"{name.replace('_', ' ')} must be from {low} to {high}, got {ratio}")


def _train_count(n: int, train_ratio: float) -> int:
    if n < 2:
        return n  # a lone image goes to train so the class can at least be learned
    return min(max(round(n * train_ratio), 1), n - 1)


TRAIN_PART_NAMES = ("train", "training")
TEST_PART_NAMES = ("val", "valid", "validation", "test")
VAL_PART_NAMES = ("val", "valid", "validation")  # beside train/ and test/: the validation split, as given


def _share(n: int, ratio: float) -> int:
    return int(n * ratio + 0.5)  # half rounds up (Python's round() would give round(2.5) == 2)


def _working_ratio(n: int) -> float:
    """The smallest two-decimal ratio that gives a class of ``n`` images at least one validation image."""
    ratio = math.ceil(50 / n) / 100
    while _share(n, ratio) < 1:
        ratio += 0.01
    return round(ratio, 2)


def carve_validation(train: list[tuple[str, int]], classes: list[str] | dict[int, str], val_ratio: float, seed: int,
                     keep_together: list[list[str]] | None = None) -> tuple[list, list, list[str]]:
    """Set ``val_ratio`` of each class's training images aside as validation, after a seeded shuffle (the same
    seed gives the same carve). Returns (train, val, notes). A class with one training image stays in training,
    with a note; a class the ratio would leave without any validation image still gets one, with a note naming
    the class and the ratio that would give it one (small datasets keep working on every page, and every class
    is judged). Groups of ``keep_together`` (duplicates) land on one side."""
    if val_ratio <= 0:
        return list(train), [], []
    rng = random.Random(f"validation-{seed}")  # its own stream: the train/test split is exactly the seed's
    by_class: dict[int, list[str]] = {}
    for path, label in train:
        by_class.setdefault(label, []).append(path)
    kept, val, notes, sides = [], [], [], _Sides(keep_together)
    for label in sorted(by_class):
        paths = by_class[label]
        k = _share(len(paths), val_ratio)
        if len(paths) == 1:
            notes.append(f"class '{classes[label]}' has one training image: it stays in training, so the class has "
                         "no validation image")
        elif k == 0:  # a small class: one image rather than none, so every class is judged; said, not refused
            k = 1
            notes.append(f"validation ratio {val_ratio:g} would leave class '{classes[label]}' ({len(paths)} training "
                         f"images) with no validation image, so one was set aside anyway (a ratio of "
                         f"{_working_ratio(len(paths)):g} or more gives it one by itself)")
        shuffled = list(paths)
        rng.shuffle(shuffled)
        to_val, to_train = _deal(shuffled, min(k, len(paths) - 1), sides, "val", "train")
        val += [(path, label) for path in to_val]
        kept += [(path, label) for path in to_train]
    if not val:
        notes.append("too few training images for a validation split (every class has one): nothing is chosen, the "
                     "last epoch is kept, as with a validation ratio of 0")
    order = {path: i for i, (path, _) in enumerate(train)}  # the lists keep the training list's order
    return (sorted(kept, key=lambda s: order[s[0]]), sorted(val, key=lambda s: order[s[0]]), notes)


def _has_subfolders(path: str) -> bool:
    try:
        return any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(path))
    except OSError:
        return False


def find_given_split(root: str | os.PathLike, allowed_roots: Roots = None) -> tuple[str, ...] | None:
    """(train folder, test folder) when ``root`` is a dataset that ships already split: ``train/`` and ``val/``
    (or ``test/``), each holding the class folders (the tutorial's ``val/`` is then the test split); (train,
    test, validation) when it has ``train/``, ``test/`` and ``val/``: read as given."""
    try:
        parts = {e.name.lower(): e.path for e in os.scandir(os.fspath(root))
                 if e.is_dir() and not e.name.startswith(".")}
    except OSError:
        return None
    train = next((parts[n] for n in TRAIN_PART_NAMES if n in parts), None)
    test = parts.get("test") or next((parts[n] for n in TEST_PART_NAMES if n in parts), None)
    val = next((parts[n] for n in VAL_PART_NAMES if n in parts), None) if "test" in parts else None
    found = tuple(p for p in (train, test, val) if p)
    if any(_link_problem(p, allowed_roots) for p in found):
        return None  # scanned as class folders instead, where the link is skipped with its reason
    if train and test and all(_has_subfolders(p) for p in found):
        return found
    return None


def _given_split(root: str, parts: tuple[str, ...], seed: int, val_ratio: float, allowed_roots: Roots,
                 keep_together: list[list[str]] | None) -> Split:
    train_scan, test_scan = scan_image_folder(parts[0], allowed_roots), scan_image_folder(parts[1], allowed_roots)
    val_scan = scan_image_folder(parts[2], allowed_roots) if len(parts) > 2 else None
    classes = sorted(set(train_scan.classes) | set(test_scan.classes) | set(val_scan.classes if val_scan else ()))
    if len(classes) < 2:
        raise DatasetError(f"'{root}' is split into {Path(parts[0]).name}/ and {Path(parts[1]).name}/, but they "
                           f"hold {len(classes)} class folder with images; at least two are needed")
    label = {name: i for i, name in enumerate(classes)}
    train = [(p, label[c]) for c in train_scan.classes for p in train_scan.images[c]]
    test = [(p, label[c]) for c in test_scan.classes for p in test_scan.images[c]]
    names = " + ".join(f"{Path(p).name}/" for p in parts)
    warnings = []
    only_train = sorted(set(train_scan.classes) - set(test_scan.classes))
    only_test = sorted(set(test_scan.classes) - set(train_scan.classes))
    if only_train or only_test:
        sides = [f"only in {Path(part).name}/: {', '.join(only)}"
                 for part, only in ((parts[0], only_train), (parts[1], only_test)) if only]
        warnings.append(f"the class folders differ between {names}: " + "; ".join(sides))
    warnings += [f"class folder '{n}' has no images and was left out"
                 for n in train_scan.empty_classes + test_scan.empty_classes]
    skipped = train_scan.skipped + test_scan.skipped
    if val_scan is not None:  # train/, test/ and val/: every role as given
        val = [(p, label[c]) for c in val_scan.classes for p in val_scan.images[c]]
        skipped += val_scan.skipped
        warnings += [f"class folder '{n}' has no images and was left out" for n in val_scan.empty_classes]
        ratio = None
    else:  # the tutorial's train/ + val/: val/ is the test split, validation is carved from train/
        train, val, notes = carve_validation(train, classes, val_ratio, seed, keep_together)
        warnings += notes
        ratio = val_ratio
    return Split(str(Path(root).resolve()), classes, train, test, len(train) / max(len(train) + len(test), 1), seed,
                 skipped, warnings, given_by=names, val=val, val_ratio=ratio)


@dataclass(frozen=True)
class Edits:
    """What a split applies (a dataset version's decisions, ``core.data.versions``): new labels (path → class
    name), dropped paths, groups kept on one side."""

    relabel: Mapping[str, str] = field(default_factory=dict)
    drop: frozenset[str] = frozenset()
    together: tuple[tuple[str, ...], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.relabel or self.drop or self.together)

    @classmethod
    def of_config(cls, cfg: TrainConfig) -> "Edits":
        """The edits a run's config carries (its dataset version's, as it began)."""
        return cls(dict(cfg.relabel), frozenset(cfg.drop), ())

    def apply(self, split: Split) -> Split:
        """``split`` with these labels and without the dropped images; every image stays on the side it was dealt
        (the split's groups were passed to ``split_dataset`` as ``keep_together``). A class name that no longer
        exists (a folder renamed since) leaves its images as they were, said in the split's warnings."""
        if not self.relabel and not self.drop:
            return split
        index = {name: i for i, name in enumerate(split.classes)}
        missing = sorted({name for name in self.relabel.values() if name not in index})

        def edited(samples: list[tuple[str, int]]) -> list[tuple[str, int]]:
            return [(path, index.get(self.relabel.get(path, ""), label)) for path, label in samples
                    if path not in self.drop]

        warnings = list(split.warnings)
        if missing:
            warnings.append(f"the dataset version relabels images as {', '.join(missing)}, which is no class of this "
                            "folder now; those images keep their folder's class")
        return replace(split, train=edited(split.train), val=edited(split.val), test=edited(split.test),
                       warnings=warnings)


def _unreadable_note(skipped: list[Skipped]) -> str:
    """Why a folder of image files still counts as having no images: they could not be read."""
    unreadable = [s for s in skipped if s.unreadable]
    if not unreadable:
        return ""
    first = unreadable[0]
    return (f" ({len(unreadable)} image file{'s' if len(unreadable) != 1 else ''} could not be read and "
            f"{'were' if len(unreadable) != 1 else 'was'} left out, e.g. '{first.path}': {first.reason})")


class _Sides:
    """Which side of the split each group of ``keep_together`` went to: the first member drawn decides,
    and every other member follows it, whatever its class."""

    def __init__(self, keep_together: list[list[str]] | None):
        self.group_of = {path: i for i, group in enumerate(keep_together or ()) for path in group}
        self.side: dict[int, str] = {}

    def place(self, path: str, wanted: str) -> str:
        group = self.group_of.get(path)
        if group is None:
            return wanted
        return self.side.setdefault(group, wanted)


def _deal(paths: list[str], k: int, sides: "_Sides", first: str, second: str) -> tuple[list[str], list[str]]:
    """The first ``k`` of ``paths`` (already shuffled) to side ``first``, the rest to ``second``; a member of a
    duplicate group goes where its group's first drawn member went, and only those placed on ``first`` count
    towards ``k``."""
    ones: list = []
    others: list = []
    for path in paths:
        (ones if sides.place(path, first if len(ones) < k else second) == first else others).append(path)
    return ones, others


def split_dataset(root: str | os.PathLike, train_ratio: float = DEFAULT_TRAIN_RATIO, seed: int = 0, *,
                  val_ratio: float = DEFAULT_VAL_RATIO, allowed_roots: Roots = None,
                  keep_together: list[list[str]] | None = None, edits: Edits | None = None) -> Split:
    """Scan ``root`` and split every class on its own; the same seed gives the same split.

    ``train_ratio`` of each class is the training share (the rest is the test split); ``val_ratio`` of that
    share is then set aside as validation (``carve_validation``); ``val_ratio`` 0 gives the tutorial's two lists.

    A dataset that ships already split (``train/`` and ``val/`` or ``test/`` sub-folders holding
    the same class folders) keeps its own split, and ``train_ratio`` does not apply. The app
    passes ``allowed_roots`` so links cannot lead a visitor outside them.

    ``keep_together``: groups of paths (duplicates found by ``core.analysis.datacheck``) that must all land on
    one side, so no copy of a test image is trained on. The same shuffle and ratio decide; a group goes
    where its first drawn member would have gone. Without groups the split is exactly the plain one.

    ``edits``: a dataset version's decisions (``core.data.versions``): its groups join ``keep_together``, then its
    relabelled images take their new class and its dropped ones leave, each image staying on the side it was dealt.
    """
    if edits:
        groups = [*(keep_together or []), *(list(g) for g in edits.together)]
        return edits.apply(split_dataset(root, train_ratio, seed, val_ratio=val_ratio, allowed_roots=allowed_roots,
                                         keep_together=groups or None))
    _check_ratio(train_ratio)
    _check_ratio(val_ratio, "val_ratio")
    parts = find_given_split(Path(root).expanduser(), allowed_roots) if Path(root).expanduser().is_dir() else None
    if parts:
        return _given_split(str(root), parts, seed, val_ratio, allowed_roots, keep_together)
    scan = scan_image_folder(root, allowed_roots)
    if len(scan.classes) < 2:
        found = f"only '{scan.classes[0]}'" if scan.classes else "none"
        raise DatasetError(
            f"'{root}' needs at least two class folders that contain images, found {found}"
            f"{_unreadable_note(scan.skipped)}; put each class's images in its own sub-folder"
        )
    rng = random.Random(seed)
    train, test, warnings = [], [], []
    sides = _Sides(keep_together)
    for label, name in enumerate(scan.classes):
        paths = list(scan.images[name])
        rng.shuffle(paths)
        to_train, to_test = _deal(paths, _train_count(len(paths), train_ratio), sides, "train", "test")
        train += [(p, label) for p in to_train]
        test += [(p, label) for p in to_test]
        if len(paths) < 2:
            warnings.append(f"class '{name}' has {len(paths)} image: too few for both a train and a test "
                            "image, so it is only in train and its accuracy cannot be measured")
    warnings += [f"class folder '{name}' has no images and was left out" for name in scan.empty_classes]
    sizes = [len(scan.images[c]) for c in scan.classes]
    if max(sizes) > IMBALANCE_WARNING_RATIO * min(sizes):
        warnings.append(f"classes are strongly imbalanced: {max(sizes)} images in the largest, "
                        f"{min(sizes)} in the smallest; accuracy alone can mislead (per-class accuracy and the "
                        "confusion matrix show it; class-weighted loss can help)")
    train, val, notes = carve_validation(train, scan.classes, val_ratio, seed, keep_together)
    return Split(scan.root, scan.classes, train, test, train_ratio, seed, scan.skipped, warnings + notes, val=val,
                 val_ratio=val_ratio)


# ----------------------------------------------------------------------------- list files
def _list_text(samples: list[tuple[str, int]]) -> str:
    return "".join(f"{path}\t{label}\n" for path, label in samples)


def write_split(split: Split, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write train.txt, test.txt and classes.json; refuse to replace existing ones unless asked."""
    out = Path(out_dir)
    existing = [name for name in LIST_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise DatasetError(f"'{out}' already holds {', '.join(existing)}; choose another folder "
                           "or allow overwriting (--force on the command line)")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "train.txt", _list_text(split.train))
    atomic_write_text(out / "val.txt", _list_text(split.val))
    atomic_write_text(out / "test.txt", _list_text(split.test))
    meta = {"classes": split.classes, "root": split.root, "train_ratio": split.train_ratio, "seed": split.seed,
            "val_ratio": split.val_ratio, "given_by": split.given_by}
    atomic_write_text(out / "classes.json", json.dumps(meta, indent=2, ensure_ascii=False))
    return out


LABEL = re.compile(r"-?[0-9]+")  # ASCII digits only: str.isdigit() also takes '²', which int() refuses
MAX_CLASSES = 100_000  # what a list file or classes.json may name
# What a run may train: each evaluation counts a classes × classes confusion matrix in memory (8 MB at 1,000
# classes, on the device); what it writes is only the non-zero cells (records.confusion_cells).
MAX_TRAINED_CLASSES = 1_000


def read_list_file(path: str | os.PathLike, num_classes: int | None = None) -> list[tuple[str, int]]:
    try:
        with open_regular(path, MAX_LIST_BYTES) as f:  # never a FIFO or a device; bounded
            lines = f.read().decode("utf-8-sig").split("\n")  # -sig: a BOM (Notepad's UTF-8) must not stick to line 1
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text (byte {exc.start}); save the list as UTF-8") from None
    except NotAFile as exc:
        raise DatasetError(f"{exc}; a list file must be a text file") from None
    except OSError as exc:
        raise DatasetError(f"{path} cannot be read ({exc.strerror})") from None
    samples = []
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip("\r")  # lists written on Windows
        if not line.strip():
            continue
        image_path, sep, label = line.rpartition("\t")
        if not sep or not LABEL.fullmatch(label.strip()):
            raise DatasetError(f"{path}, line {lineno}: expected 'path<TAB>label', got {line[:80]!r}")
        if "\0" in image_path:  # no file system has such a name: a damaged or binary file
            raise DatasetError(f"{path}, line {lineno}: the image path holds a NUL byte, which no file name can; "
                               "is this a text list of 'path<TAB>label' lines?")
        label_int = int(label)
        high = num_classes if num_classes is not None else MAX_CLASSES
        if not 0 <= label_int < high:  # a label sizes the model's head and indexes the class list
            raise DatasetError(f"{path}, line {lineno}: label {label.strip()[:30]} is outside 0..{high - 1}"
                               + ("" if num_classes is not None else f" (at most {MAX_CLASSES:,} classes)"))
        samples.append((image_path, label_int))
    return samples


EXAMPLES = 5  # entries a message names before "and N more"


def unusable_entries(samples: list[tuple[str, int]]) -> tuple[int, list[str]]:
    """How many list entries cannot be images (missing, a folder, a FIFO, a device, not readable), and the
    first few as "path (why)". One stat per entry, nothing opened: a FIFO is named, never read."""
    count = 0
    examples: list[str] = []
    for path, _ in samples:
        try:
            mode = os.stat(path).st_mode
            why = None if stat.S_ISREG(mode) else ("a folder" if stat.S_ISDIR(mode) else
                                                  "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "not a file")
        except FileNotFoundError:
            why = "missing"
        except (OSError, ValueError) as exc:
            why = f"cannot be read: {getattr(exc, 'strerror', None) or exc}"
        if why:
            count += 1
            if len(examples) < EXAMPLES:
                examples.append(f"{path} ({why})")
    return count, examples


def infer_class_names(samples: list[tuple[str, int]]) -> tuple[list[str], str]:
    """Class names for list files without classes.json (the tutorial writes none), one per label that occurs.

    Each label is named after the folder its images have in common, when those folders differ between
    labels; otherwise the classes are numbered ``class_<label>``. Only labels that occur are classes (see
    ``dense_labels``): a lone label 3000 makes one class, not 3001.
    """
    present = sorted({label for _, label in samples})
    folders: dict[int, list[str]] = {}
    for path, label in samples:
        folders.setdefault(label, []).append(os.path.dirname(path))
    try:
        names = [os.path.basename(os.path.commonpath(folders[label])) for label in present]
    except ValueError:  # absolute and relative paths mixed
        names = []
    if names and all(names) and len(set(names)) == len(present):
        return names, "from folders"
    return [f"class_{label}" for label in present], "numbered"


def dense_labels(*lists: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """The lists with their labels renumbered 0..k-1 in the order of the labels that occur, so the model, its
    confusion matrix and every per-class figure are sized by the classes trained, not by the largest label
    (a list whose only labels are 0 and 3000 trains 2 classes). Labels 0..k-1 that all occur are unchanged."""
    present = sorted({label for samples in lists for _, label in samples})
    index = {label: i for i, label in enumerate(present)}
    return [[(path, index[label]) for path, label in samples] for samples in lists]


def _read_classes_json(folder: Path) -> tuple[list[str], dict]:
    """The class names of ``classes.json``, and the rest it says (root, ratio, seed), checked."""
    try:
        meta = read_json_file(folder / "classes.json", encoding="utf-8-sig")
        classes = meta["classes"] if isinstance(meta, dict) else meta
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ValueError("expected a list of class names")
        if not 0 < len(classes) <= MAX_CLASSES:
            raise ValueError(f"expected 1 to {MAX_CLASSES:,} class names, found {len(classes):,}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{folder / 'classes.json'} is not a valid class list: {exc}") from None
    return list(classes), meta if isinstance(meta, dict) else {}


def read_training_list(folder: str | os.PathLike) -> tuple[list[tuple[str, int]], list[str]]:
    """The training share, ``train.txt`` and ``val.txt`` when there is one, and the class names (``classes.json``,
    else from the training images' folders) without opening ``test.txt``: for work that must not look at the
    test split (the head search)."""
    folder = Path(folder)
    if not (folder / "train.txt").is_file():
        raise DatasetError(f"'{folder}' lacks train.txt; run the split first")
    parts = [folder / "train.txt"] + ([folder / "val.txt"] if (folder / "val.txt").is_file() else [])
    if (folder / "classes.json").is_file():
        classes, _ = _read_classes_json(folder)
        return [s for part in parts for s in read_list_file(part, len(classes))], classes
    train = [s for part in parts for s in read_list_file(part)]
    return dense_labels(train)[0], infer_class_names(train)[0]


def read_split(folder: str | os.PathLike) -> Split:
    """The split that list files hold: ``train.txt``, ``test.txt`` and, when present, ``classes.json``."""
    folder = Path(folder)
    missing = [name for name in LIST_FILES[:2] if not (folder / name).is_file()]
    if missing:
        raise DatasetError(f"'{folder}' lacks {', '.join(missing)}; run the split first "
                           "(train.txt and test.txt hold one 'path<TAB>label' line per image)")
    has_val = (folder / "val.txt").is_file()
    if not (folder / "classes.json").is_file():
        train, test = read_list_file(folder / "train.txt"), read_list_file(folder / "test.txt")
        val = read_list_file(folder / "val.txt") if has_val else []
        classes, how = infer_class_names(train + val + test)
        train, val, test = dense_labels(train, val, test)
        return Split(str(folder), classes, train, test, None, None, class_names=how, val=val, has_val_list=has_val)
    classes, info = _read_classes_json(folder)
    n = len(classes)
    ratio = info.get("val_ratio")
    return Split(str(info.get("root") or folder), list(classes), read_list_file(folder / "train.txt", n),
                 read_list_file(folder / "test.txt", n), info.get("train_ratio"), info.get("seed"),
                 given_by=info.get("given_by"), val=read_list_file(folder / "val.txt", n) if has_val else [],
                 val_ratio=ratio if isinstance(ratio, (int, float)) and not isinstance(ratio, bool) else None,
                 has_val_list=has_val)


