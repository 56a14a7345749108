"""A generated photo set with planted problems whose truth is known: resized and re-encoded copies, and photos
filed under the wrong class. The data check is measured against it (the suite's tests, bench/benchmark.py).

Each picture is a scene rather than a lone shape: a smooth random background (low frequencies, as in a photo),
a few distractor blobs and the class's shape, with sensor noise. Distinct scenes then differ at the pixel level
as photos do, so a copy is a copy and not a look-alike; the classes overlap enough (small shapes among
distractors) that a linear head on backbone features is not perfect, as on real photos.
"""
from __future__ import annotations

import io
import math
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .demo import SHAPES, _polygon

SIZE = 256


@dataclass
class Planted:
    root: Path
    copies: list[tuple[str, str]] = field(default_factory=list)  # (original, its resized re-encoded copy)
    flipped: list[tuple[str, str, str]] = field(default_factory=list)  # (path, true class, class it is filed under)


def scene(shape: str, rng: random.Random, size: int = SIZE) -> Image.Image:
    """One picture: smooth background, 2-5 distractor blobs, the shape (a fifth to a third of the picture)."""
    noise = np.random.default_rng(rng.randrange(2**32))
    coarse = noise.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
    img = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 5)):
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(size * 0.05, size * 0.15)
        draw.ellipse([x - r, y - r * rng.uniform(0.5, 1.5), x + r, y + r], fill=_colour(rng))
    r = rng.uniform(size * 0.1, size * 0.17)
    cx, cy = rng.uniform(size * 0.3, size * 0.7), rng.uniform(size * 0.3, size * 0.7)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_colour(rng))
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=_colour(rng))
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    pixels = np.asarray(img, dtype=np.float32) + noise.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)


def resized_copy(path: Path, out: Path, scale: float = 0.8, quality: int = 60) -> None:
    """The copy the issue planted: resized to ``scale`` and saved again as a JPEG of ``quality``."""
    with Image.open(path) as image:
        small = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)),
                                            Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=quality)
    out.write_bytes(buffer.getvalue())


def generate_planted(dest: str | Path, *, per_class: int = 40, classes: int = 5, copies: int = 10,
                     flip_share: float = 0.05, seed: int = 0) -> Planted:
    """Write the set under ``dest`` (one folder per class) and return where the truth is."""
    rng = random.Random(seed)
    root = Path(dest)
    if root.exists():
        shutil.rmtree(root)
    names = SHAPES[:classes]
    drawn: list[tuple[Path, str]] = []
    for shape in names:
        (root / shape).mkdir(parents=True)
        for i in range(per_class):
            path = root / shape / f"{shape}_{i:04d}.jpg"
            scene(shape, rng).save(path, quality=90)
            drawn.append((path, shape))
    planted = Planted(root)
    order = rng.sample(range(len(drawn)), len(drawn))
    for i in order[:copies]:
        original, shape = drawn[i]
        copy = original.with_name(f"{original.stem}_copy.jpg")
        resized_copy(original, copy)
        planted.copies.append((str(original), str(copy)))
    for i in order[copies:copies + round(flip_share * len(drawn))]:
        path, shape = drawn[i]
        wrong = rng.choice([n for n in names if n != shape])
        moved = root / wrong / f"{path.stem}_filed.jpg"
        path.rename(moved)
        planted.flipped.append((str(moved), shape, wrong))
    return planted
