"""Dataset health from image headers alone (torch-free, fast): what each file is, and what is wrong with it.

``read_header`` opens a file the cheap way (PIL reads the header, not the pixels; a JPEG or PNG is also
checked for its end marker, which a cut-off download lacks). The split uses it to leave unreadable files
out of the list files, and ``check_health`` sums the headers of a split up into a ``HealthReport``:
counts per class and split, formats, sizes and aspect ratios, images smaller than the model's input,
colour modes that need converting, class imbalance, and every unreadable file with its reason.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from PIL import Image, UnidentifiedImageError

from ..platform.io import NotAFile, open_regular
from ..platform.settings import settings

TAIL_BYTES = 64 * 1024  # where an end marker must be: cameras append at most small trailers after it
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND", "MPO": b"\xff\xd9"}
# Modes that are converted before training (so the model sees RGB) and are worth knowing about.
MODE_NOTES = {"L": "grayscale", "LA": "grayscale with alpha", "1": "black and white", "P": "palette",
              "PA": "palette with alpha", "RGBA": "alpha channel", "CMYK": "CMYK", "I": "16/32-bit grayscale",
              "I;16": "16-bit grayscale", "F": "floating-point grayscale", "YCbCr": "YCbCr", "LAB": "Lab",
              "HSV": "HSV"}


@dataclass(frozen=True)
class Header:
    width: int
    height: int
    mode: str
    format: str
    bytes: int

    @property
    def shorter_side(self) -> int:
        return min(self.width, self.height)

    @property
    def aspect(self) -> float:
        """Longer side over shorter side (1: square), whatever the orientation."""
        return max(self.width, self.height) / max(1, min(self.width, self.height))


@dataclass(frozen=True)
class Unreadable:
    path: str
    reason: str


def _tail_has(f, marker: bytes, size: int) -> bool:
    f.seek(max(0, size - TAIL_BYTES))
    return marker in f.read(TAIL_BYTES)


HEADERS_KEPT = 250_000  # headers remembered per process (about 60 MB at most)
_read: dict[tuple, "Header | Unreadable"] = {}


def read_header(path: str, max_pixels: int | None = None) -> Header | Unreadable:
    """The image's size, mode and format from its header, or why it cannot be used (never raises). Remembered
    per process by the file's identity (inode, size, modification time): the split's scan reads every header, and
    the data check's health pass right after reads none again (12 s of 100,000 JPEGs' headers, measured)."""
    limit = settings().max_image_pixels if max_pixels is None else max_pixels
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return _read_header(path, limit)  # says why (vanished, permission, a bad name)
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns, limit)
    found = _read.get(key)
    if found is None:
        found = _read_header(path, limit)
        if len(_read) >= HEADERS_KEPT:
            _read.clear()  # a new scan of another folder: start again rather than track recency
        _read[key] = found
    return found


def _read_header(path: str, limit: int) -> Header | Unreadable:
    try:
        with open_regular(path) as f:  # a FIFO or a device is refused, never read
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return Unreadable(path, "empty file (0 bytes)")
            with Image.open(f) as img:  # lazy: reads the header, decodes nothing
                width, height, mode, fmt = img.width, img.height, img.mode, img.format or "?"
            marker = END_MARKERS.get(fmt)
            truncated = marker is not None and not _tail_has(f, marker, size)
        if width * height > limit:
            return Unreadable(path, f"{width}×{height} pixels, over the limit of {limit:,} (TLD_MAX_IMAGE_PIXELS)")
        if width < 1 or height < 1:
            return Unreadable(path, f"declares {width}×{height} pixels")
        if truncated:
            return Unreadable(path, f"truncated: the {fmt} file ends before its end-of-image marker "
                                    "(a cut-off copy or download)")
        return Header(width, height, mode, fmt, size)
    except FileNotFoundError:
        return Unreadable(path, "vanished: the file no longer exists")
    except Image.DecompressionBombError:
        return Unreadable(path, f"declares more pixels than PIL decodes safely (over the limit of {limit:,})")
    except UnidentifiedImageError:
        return Unreadable(path, "not an image: no format PIL reads (another kind of file with an image's name?)")
    except PermissionError:
        return Unreadable(path, "cannot be read: permission denied")
    except NotAFile as exc:
        return Unreadable(path, exc.strerror or str(exc))
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return Unreadable(path, f"damaged header ({str(exc)[:120] or type(exc).__name__})")


# ----------------------------------------------------------------------------- the report
@dataclass(frozen=True)
class Sample:
    """One image of a split: where it is, its class and which side of the split it is on."""
    path: str
    label: int
    split: str  # "train" or "test"


@dataclass
class ClassHealth:
    name: str
    label: int
    train: int
    test: int
    unreadable: int = 0

    @property
    def total(self) -> int:
        return self.train + self.test


@dataclass
class ImageSize:
    path: str
    label: int
    split: str
    width: int
    height: int
    aspect: float


@dataclass
class Flagged:
    """An image that is usable but worth a look, and why."""
    path: str
    label: int
    split: str
    reason: str


@dataclass
class HealthReport:
    classes: list[ClassHealth]
    formats: dict[str, int]
    modes: dict[str, int]
    sizes: list[ImageSize]  # every readable image (the size and aspect charts)
    small: list[Flagged]  # shorter side below the model's input size: upscaled, blurry
    converted: list[Flagged]  # grayscale, CMYK, alpha…: converted to RGB before training
    unreadable: list[Unreadable]
    input_size: int
    warnings: list[str] = field(default_factory=list)

    @property
    def readable(self) -> int:
        return len(self.sizes)

    @property
    def imbalance(self) -> float | None:
        """Images in the largest class over those in the smallest (None: a class has none)."""
        totals: list[int] = [c.total for c in self.classes]
        smallest = min(totals, default=0)
        return max(totals) / smallest if smallest else None


SMALL_CLASS = 10  # fewer images than this in a class: its accuracy is a coarse figure, its errors unchecked


def _class_warnings(classes: list[ClassHealth], imbalance: float | None) -> list[str]:
    warnings = []
    if len(classes) < 2:
        warnings.append(f"{len(classes)} class: a classifier needs at least two")
    tiny = [c for c in classes if c.total < SMALL_CLASS]
    if tiny:
        warnings.append("classes with fewer than 10 readable images: "
                        + ", ".join(f"{c.name} ({c.total})" for c in tiny)
                        + "; their accuracy rests on a handful of test images")
    if imbalance is not None and imbalance > 3:
        largest = max(classes, key=lambda c: c.total)
        smallest = min(classes, key=lambda c: c.total)
        warnings.append(f"classes are imbalanced: {largest.name} has {largest.total} images, {smallest.name} "
                        f"{smallest.total} ({imbalance:.1f}×); accuracy alone can mislead")
    return warnings


class HealthTally:
    """Adds up image headers one sample at a time (so the caller can show progress between them)."""

    def __init__(self, classes: list[str], input_size: int, skipped: Iterable[Unreadable] = ()):
        self.classes = [ClassHealth(name, i, 0, 0) for i, name in enumerate(classes)]
        self.input_size = input_size
        self.formats: Counter[str] = Counter()
        self.modes: Counter[str] = Counter()
        self.sizes: list[ImageSize] = []
        self.small: list[Flagged] = []
        self.converted: list[Flagged] = []
        self.unreadable: list[Unreadable] = list(skipped)
        self.headers: dict[str, Header] = {}  # path -> header of every readable sample
        self.limit = settings().max_image_pixels  # once, not per image

    def add(self, s: Sample) -> Header | Unreadable:
        header = read_header(s.path, self.limit)
        counts = self.classes[s.label]
        if isinstance(header, Unreadable):
            self.unreadable.append(header)
            counts.unreadable += 1
            return header
        self.headers[s.path] = header
        if s.split == "train":
            counts.train += 1
        else:
            counts.test += 1
        self.formats[header.format] += 1
        self.modes[header.mode] += 1
        self.sizes.append(ImageSize(s.path, s.label, s.split, header.width, header.height, round(header.aspect, 3)))
        if header.shorter_side < self.input_size:
            self.small.append(Flagged(s.path, s.label, s.split, f"{header.width}×{header.height}: shorter side below "
                                                                f"the model's {self.input_size} pixels (upscaled)"))
        if header.mode != "RGB":
            self.converted.append(Flagged(s.path, s.label, s.split, f"{MODE_NOTES.get(header.mode, header.mode)} "
                                                                    f"({header.mode}): converted to RGB"))
        return header

    def report(self) -> HealthReport:
        report = HealthReport(self.classes, dict(self.formats.most_common()), dict(self.modes.most_common()),
                              self.sizes, self.small, self.converted, self.unreadable, self.input_size)
        report.warnings = _class_warnings(self.classes, report.imbalance)
        return report


def check_health(samples: Iterable[Sample], classes: list[str], input_size: int,
                 skipped: Iterable[Unreadable] = ()) -> HealthReport:
    """Read every sample's header and sum them up; ``skipped``: files the split already left out as
    unreadable (they are reported with the others)."""
    tally = HealthTally(classes, input_size, skipped)
    for s in samples:
        tally.add(s)
    return tally.report()
