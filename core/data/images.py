"""Opening images safely: every mode becomes upright RGB, or a clear ImageError.

The loader is shared by the split, the training dataset, the thumbnails and prediction,
so an image that trains is shown and predicted the same way.
"""
from __future__ import annotations

import io
import os
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..platform.errors import ImageError
from ..platform.io import NotAFile, open_regular
from ..platform.settings import settings

ImageSource = Union[str, Path, bytes, BinaryIO, Image.Image]

_HIGH_BIT_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


DCT_SCALES = (8, 4, 2)  # libjpeg can decode a JPEG at 1/8, 1/4 or 1/2 of its size, in the DCT itself


def dct_scale(width: int, height: int, min_side: int | None = None, min_long_side: int | None = None) -> int:
    """The largest reduction libjpeg can decode at (8, 4, 2, or 1: none) that keeps the decoded shorter side
    ≥ ``min_side`` and the longer side ≥ ``min_long_side``: the image is about to be shrunk to those sizes
    anyway, so the pixels left out would have been thrown away at once."""
    if not min_side and not min_long_side:
        return 1
    short, long = min(width, height), max(width, height)
    room = min(short / min_side if min_side else float("inf"), long / min_long_side if min_long_side else float("inf"))
    return next((scale for scale in DCT_SCALES if scale <= room), 1)


def _stream(source: str | os.PathLike | bytes | BinaryIO) -> BinaryIO:
    if isinstance(source, (str, os.PathLike)):
        return open_regular(source)  # a FIFO or a device where an image belongs is refused, never read
    if isinstance(source, (bytes, bytearray)):
        return io.BytesIO(source)
    return source


def open_image(source: ImageSource, *, max_pixels: int | None = None, min_side: int | None = None,
               min_long_side: int | None = None) -> Image.Image:
    """Return an upright RGB copy of the image, decoded.

    Refuses, before decoding, any image whose declared size exceeds ``max_pixels``. ``min_side`` /
    ``min_long_side``: what the caller will shrink the image to (the shorter / the longer side); a JPEG at
    least twice that large is then decoded at reduced scale by libjpeg (``Image.draft``: 1/2, 1/4 or 1/8
    in the DCT), never below those sizes, so what the caller makes of it keeps its quality. A 12-megapixel
    photo for a 256-pixel resize decodes at 504×378, about 5× faster. The decoded size is what ``size``
    says; ``info["decoded_from"]`` keeps the file's own (width, height). Other formats decode in full.
    """
    if isinstance(source, Image.Image):
        return to_rgb(ImageOps.exif_transpose(source))
    name = _describe(source)
    # 64 megapixels (TLD_MAX_IMAGE_PIXELS) is larger than any camera photo people fine-tune on,
    # and far below what a decompression bomb declares.
    limit = settings().max_image_pixels if max_pixels is None else max_pixels
    try:
        stream = _stream(source)
        with stream if isinstance(stream, io.BufferedReader) else _nothing(), Image.open(stream) as img:
            width, height = img.size
            if width * height > limit:
                raise ImageError(
                    f"{name} declares {width}×{height} pixels, more than the limit of "
                    f"{limit:,}; it was not decoded (set TLD_MAX_IMAGE_PIXELS to allow larger images)"
                )
            scale = dct_scale(width, height, min_side, min_long_side) if img.format == "JPEG" else 1
            if scale > 1:
                img.draft(img.mode, (width // scale, height // scale))
            img.load()
            upright = to_rgb(ImageOps.exif_transpose(img))
            turned = upright.size != img.size  # an EXIF orientation of a quarter turn swapped the sides
            upright.info["decoded_from"] = (height, width) if turned else (width, height)
            return upright
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{name} declares more pixels than PIL will decode safely; it was not decoded "
                         f"(this app's limit is {limit:,} pixels, TLD_MAX_IMAGE_PIXELS)") from None
    except FileNotFoundError:
        raise ImageError(f"{name} does not exist") from None
    except NotAFile as exc:
        raise ImageError(f"{name} is {exc.strerror}") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image PIL can read (empty, corrupt, or another kind of file)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name} could not be decoded ({exc}); the file is probably truncated or corrupt") from None


@contextmanager
def _nothing():
    yield


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB, keeping what a person would see."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode in _HIGH_BIT_DEPTH_MODES:
        # PIL's convert("RGB") clips 16-bit values at 255, turning most photos white.
        values = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if values.max(initial=0) > 255 else 255.0
        gray = np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        span = float(values.max() - values.min()) or 1.0
        gray = ((values - values.min()) / span * 255.0).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels have arbitrary colours underneath; show them on white.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def thumbnail_jpeg(source: ImageSource, max_side: int, *, square: bool = False) -> bytes:
    """A JPEG of the image (upright RGB, as training sees it) whose longer side is at most ``max_side``:
    what pages show. Any mode (16-bit, CMYK, palette, alpha) and any aspect ratio; work bounded by the output.
    ``square``: centred on a white ``max_side`` square, so a grid of them lines up."""
    img = open_image(source, min_long_side=max_side)
    img.thumbnail((max_side, max_side))
    if square:
        canvas = Image.new("RGB", (max_side, max_side), (255, 255, 255))
        canvas.paste(img, ((max_side - img.width) // 2, (max_side - img.height) // 2))
        img = canvas
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _describe(source) -> str:
    if isinstance(source, (str, Path)):
        return f"'{source}'"
    name = getattr(source, "name", None)
    return f"'{name}'" if name else "the uploaded image"


def plain_jpeg_bytes(path: str | os.PathLike, *, max_pixels: int | None = None, min_side: int | None = None):
    """The file's bytes as a uint8 tensor when it is a JPEG libjpeg/nvJPEG can decode to RGB at full scale,
    else None. ``min_side``: a JPEG large enough to decode at reduced scale for it gets None too, so the
    caller decodes it with ``open_image(min_side=…)`` (neither torchvision's decoder nor nvJPEG can scale)."""
    if not str(path).lower().endswith((".jpg", ".jpeg")):
        return None
    limit = settings().max_image_pixels if max_pixels is None else max_pixels
    try:
        with open_regular(path) as f:
            with Image.open(f) as img:  # reads the header only
                if img.format != "JPEG" or img.mode not in ("RGB", "L") or img.size[0] * img.size[1] > limit:
                    return None
                if dct_scale(img.size[0], img.size[1], min_side) > 1:
                    return None
            f.seek(0)
            data = bytearray(f.read())
        # deferred: this module is used without torch (the split, listing runs, --help); importing it costs seconds
        import torch

        return torch.frombuffer(data, dtype=torch.uint8)
    except Exception:  # the PIL path reports what is wrong with the file
        return None


def load_jpeg_decoder() -> None:
    """Import libjpeg's decoder now. ``torchvision.io`` brings all of torchvision with it (one to two
    seconds on a 2-core CPU): that is set-up, and must not land inside the first batch of a pass
    that reports images per second."""
    try:
        import torchvision.io  # noqa: F401
    except Exception:  # decode_jpeg_tensor then sends every JPEG down the PIL path
        pass


def decode_jpeg_tensor(path: str | os.PathLike, *, max_pixels: int | None = None, min_side: int | None = None):
    """An upright RGB uint8 tensor (3, H, W) from a plain JPEG via libjpeg (torchvision.io), or None.

    About 1.8× faster than PIL for decode + resize on this project's CPUs (bench/benchmark.py), within
    1/255 of it after preprocessing. None sends the file down the PIL path: anything that is not a
    baseline/progressive RGB or grey JPEG within the pixel limit (CMYK, odd or damaged files), and a JPEG
    at least twice ``min_side`` (PIL decodes it at reduced scale, which torchvision cannot).
    """
    data = plain_jpeg_bytes(path, max_pixels=max_pixels, min_side=min_side)
    if data is None:
        return None
    try:
        # deferred: torchvision costs about as much as torch to import, and most paths never need this
        from torchvision.io import ImageReadMode, decode_jpeg

        return decode_jpeg(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except Exception:  # the PIL path reports what is wrong with the file
        return None
