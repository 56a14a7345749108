"""The torch side of the data: preprocessing taken from the weights, and the Dataset over list files.

Preprocessing is written with tensor operations (``torch.nn.functional.interpolate`` with
antialiasing, as torchvision's tensor ``Resize`` does) rather than ``torchvision.transforms``:
importing torchvision costs about as long as importing torch, and a one-image prediction
should not pay for it. Training, evaluation and prediction all use this one pipeline.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import Dataset

from ..platform.errors import ImageError
from .images import decode_jpeg_tensor, open_image, plain_jpeg_bytes


# ----------------------------------------------------------------------------- transforms
class Letterbox:
    """The tutorial's preprocessing: scale the whole image onto a black square, keeping its aspect."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        scale = self.size / max(img.size)
        w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
        canvas = Image.new("RGB", (self.size, self.size))
        canvas.paste(img.resize((w, h), Image.Resampling.BILINEAR), ((self.size - w) // 2, (self.size - h) // 2))
        return canvas

    def __repr__(self) -> str:
        return f"Letterbox(size={self.size})"


def to_uint8_tensor(image) -> torch.Tensor:
    """(3, H, W) uint8 from an RGB PIL image, or the tensor itself."""
    if isinstance(image, torch.Tensor):
        return image
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def resized_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """torchvision's rule for Resize(int): the shorter side becomes ``shorter``, the aspect is kept."""
    if height <= width:
        return shorter, int(shorter * width / height)
    return int(shorter * height / width), shorter


RANDOM_CROP_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop default


class Preprocess:
    """Resize (shorter side) → centre crop → [0, 1] → normalise, as the weights ask; optional flips while
    training and the tutorial's letterbox. Takes an RGB PIL image or a (3, H, W) uint8 tensor."""

    def __init__(self, pre, *, train: bool = False, flip: bool = False, vflip: bool = False,
                 letterbox: bool = False, normalize: bool = True, random_crop: bool = False):
        self.crop = pre.crop_size[0]
        self.resize = pre.resize_size[0]
        self.mode = pre.interpolation if pre.interpolation in ("bilinear", "bicubic") else "bilinear"
        self.mean = torch.tensor(pre.mean).view(3, 1, 1)
        self.std = torch.tensor(pre.std).view(3, 1, 1)
        self.hflip, self.vflip = train and flip, train and vflip
        self.random_crop = train and random_crop
        self.letterbox = Letterbox(self.crop) if letterbox else None
        self.normalize = normalize

    @property
    def decode_min_side(self) -> int:
        """The smallest shorter side a decoded image may have without losing anything this preprocessing
        keeps: JPEGs are decoded at reduced scale down to it (core.data.images.open_image)."""
        if self.letterbox is not None:
            return self.crop  # the longer side becomes the crop; a shorter side of crop is more than enough
        if self.random_crop:  # a crop of 8% of the area, i.e. √0.08 of a side, is enlarged to the crop size
            return math.ceil(self.crop / math.sqrt(RANDOM_CROP_SCALE[0]))
        return self.resize

    def __call__(self, image) -> torch.Tensor:
        if self.letterbox is not None:
            image = self.letterbox(image if isinstance(image, Image.Image) else _to_pil(image.cpu()))
            x = to_uint8_tensor(image).float()
        elif self.random_crop:
            x = self._random_resized_crop(to_uint8_tensor(image))
        else:
            x = self._resize_and_crop(to_uint8_tensor(image))  # on the GPU when the image is there
        x = x / 255.0
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        if self.vflip and torch.rand(()) < 0.5:
            x = x.flip(-2)
        return (x - self.mean.to(x.device)) / self.std.to(x.device) if self.normalize else x

    def tta_note(self, mode: str | None) -> str:
        """Why ``mode`` averages fewer views here than its name says, or ''."""
        if mode == "flip+crops" and self.letterbox is not None:
            return ("a letterboxed image has no corners to crop, so flip+crops averages the image and its mirror "
                    "(2 views), as flip does")
        return ""

    def views(self, image, mode: str) -> torch.Tensor:
        """Test-time augmentation: (views, 3, crop, crop), the plain evaluation view first. ``flip``: it and
        its mirror; ``flip+crops``: the centre and the four corner crops of the resized image, then each one's
        mirror (torchvision's TenCrop). A letterboxed image has no corners to crop: its mirror only."""
        plain = self(image)
        if mode == "flip" or self.letterbox is not None:
            return torch.stack([plain, plain.flip(-1)])
        if mode != "flip+crops":
            raise ValueError(f"test-time augmentation '{mode}' does not exist; allowed: flip, flip+crops")
        x = self._resize(to_uint8_tensor(image))
        h, w, c = x.shape[-2], x.shape[-1], self.crop
        if h < c or w < c:  # smaller than the crop: the corners are the centre
            corners = [plain] * 4
        else:
            x = x / 255.0
            x = (x - self.mean.to(x.device)) / self.std.to(x.device) if self.normalize else x
            corners = [x[:, :c, :c], x[:, :c, w - c:], x[:, h - c:, :c], x[:, h - c:, w - c:]]
        five = torch.stack([plain, *corners])
        return torch.cat([five, five.flip(-1)])

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        x = centre_of_long_side(x)
        h, w = resized_size(x.shape[-2], x.shape[-1], self.resize)
        return _resize_like_a_uint8_image(x, (h, w), self.mode)

    def _resize_and_crop(self, x: torch.Tensor) -> torch.Tensor:
        x = self._resize(x)
        h, w = x.shape[-2], x.shape[-1]
        top, left = int(round((h - self.crop) / 2.0)), int(round((w - self.crop) / 2.0))
        if top < 0 or left < 0:  # smaller than the crop: pad with zeros around it, as CenterCrop does
            pad_h, pad_w = max(0, -top), max(0, -left)
            x = F.pad(x, (pad_w, pad_w + 1, pad_h, pad_h + 1))
            top, left = max(top, 0), max(left, 0)
        return x[:, top:top + self.crop, left:left + self.crop]

    def _random_resized_crop(self, x: torch.Tensor) -> torch.Tensor:
        """torchvision's RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3), then the crop size."""
        # deferred: torchvision costs about as much as torch to import, and most paths never need this
        from torchvision.transforms import RandomResizedCrop

        top, left, h, w = RandomResizedCrop.get_params(x, scale=RANDOM_CROP_SCALE, ratio=(3 / 4, 4 / 3))
        part = x[None, :, top:top + h, left:left + w].float()
        out = F.interpolate(part, size=(self.crop, self.crop), mode=self.mode, antialias=True, align_corners=False)
        return out[0].clamp_(0, 255).round_()

    def __repr__(self) -> str:
        return (f"Preprocess(random_crop={self.random_crop}, resize={self.resize}, crop={self.crop}, mode={self.mode}, "
                f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}, hflip={self.hflip}, "
                f"vflip={self.vflip}, letterbox={self.letterbox}, "
                f"normalize={self.normalize}, resize_in=uint8, decode=dct-reduced)")


VIEW_CROP_SCALE = (0.35, 1.0)  # a cached view's crop: lighter than RandomResizedCrop's 8% (it is reused for epochs)
VIEW_COLOUR = 0.2  # a cached view's brightness, contrast and saturation: each × a factor from 0.8 to 1.2


class CachedView:
    """One augmented view of every image, the same each time it is computed (so it can be cached): a random
    resized crop of 35-100% of the area, a horizontal flip, and brightness, contrast and saturation each
    × 0.8-1.2 (torchvision's ColorJitter, in that order), drawn from a generator seeded by the run's seed, the
    view's number and the image's path, never from the global random state."""

    def __init__(self, pre, view: int, seed: int):
        self.base = Preprocess(pre, normalize=False)
        self.mean, self.std, self.crop, self.mode = self.base.mean, self.base.std, self.base.crop, self.base.mode
        self.view, self.seed = view, seed
        self.letterbox = None

    @property
    def decode_min_side(self) -> int:
        return math.ceil(self.crop / math.sqrt(VIEW_CROP_SCALE[0]))

    def generator(self, path: str) -> torch.Generator:
        digest = hashlib.sha256(f"{self.seed}:{self.view}:{path}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))

    def for_path(self, image, path: str) -> torch.Tensor:
        """The view of ``image`` (a (3, H, W) uint8 tensor or an RGB PIL image), drawn for ``path``."""
        from torchvision.transforms import RandomResizedCrop  # deferred, as in Preprocess
        from torchvision.transforms.v2 import functional as TF

        g = self.generator(path)
        x = centre_of_long_side(to_uint8_tensor(image))
        area, (low, high) = x.shape[-2] * x.shape[-1], VIEW_CROP_SCALE
        for _ in range(10):  # RandomResizedCrop.get_params, with this generator: a box of the area and ratio
            target = area * (low + (high - low) * float(torch.rand((), generator=g)))
            ratio = math.exp(math.log(3 / 4) + math.log(16 / 9) * float(torch.rand((), generator=g)))
            w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < w <= x.shape[-1] and 0 < h <= x.shape[-2]:
                top = int(torch.randint(0, x.shape[-2] - h + 1, (), generator=g))
                left = int(torch.randint(0, x.shape[-1] - w + 1, (), generator=g))
                break
        else:  # the centre, as RandomResizedCrop falls back to
            top, left, h, w = RandomResizedCrop.get_params(x, scale=(1.0, 1.0), ratio=(1.0, 1.0))
        part = x[None, :, top:top + h, left:left + w].float()
        x = F.interpolate(part, size=(self.crop, self.crop), mode=self.mode, antialias=True,
                          align_corners=False)[0].clamp_(0, 255).round_() / 255.0
        if float(torch.rand((), generator=g)) < 0.5:
            x = x.flip(-1)
        factors = 1 + VIEW_COLOUR * (2 * torch.rand(3, generator=g) - 1)
        x = TF.adjust_brightness(x, float(factors[0]))
        x = TF.adjust_contrast(x, float(factors[1]))
        x = TF.adjust_saturation(x, float(factors[2]))
        return (x - self.mean) / self.std

    def __call__(self, image) -> torch.Tensor:
        raise TypeError("a cached view is drawn for an image's path: ListDataset calls for_path")

    def __repr__(self) -> str:
        return (f"CachedView(view={self.view}, seed={self.seed}, crop_scale={VIEW_CROP_SCALE}, colour={VIEW_COLOUR}, "
                f"base={self.base!r})")


MAX_ASPECT = 2  # a longer side than this × the shorter one never reaches the centre crop


def centre_of_long_side(x: torch.Tensor) -> torch.Tensor:
    """The centre of a very long image: at most MAX_ASPECT × its shorter side (plus one pixel, to stay centred).

    Resizing the shorter side first makes the work grow with the aspect ratio: a 60000×1 PNG of 260 bytes
    would ask for a 256 × 15,360,000 image (47 GB in float). The centre crop only ever sees the middle
    ``crop/resize`` of the shorter side's length along the long side, so cutting the rest away first
    bounds the work by the output (at most 2 × resize × resize pixels) and leaves the result as it was,
    to within the resize's rounding. Images of ordinary aspect ratios (up to 2:1) are untouched.
    """
    h, w = x.shape[-2], x.shape[-1]
    if w > MAX_ASPECT * h:
        cut = (w - MAX_ASPECT * h) // 2
        return x[..., :, cut:w - cut]
    if h > MAX_ASPECT * w:
        cut = (h - MAX_ASPECT * w) // 2
        return x[..., cut:h - cut, :]
    return x


def _resize_like_a_uint8_image(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Antialiased resize of a (3, H, W) image to float values rounded as a uint8 image would hold them.

    On the CPU a uint8 image is resized as uint8, channels_last: torch's vectorised kernel is about
    twice as fast as resizing in float (1.0 against 2.2 ms for a 500×375 photo on this project's
    CPUs), and it agrees with ``weights.transforms()`` applied to a PIL photo (PIL's resize) except
    for one pixel level at a few pixels. Elsewhere (CUDA) the resize runs in float.
    """
    if x.dtype == torch.uint8 and x.device.type == "cpu":
        x = x[None].contiguous(memory_format=torch.channels_last)
        return F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)[0].float()
    x = F.interpolate(x[None].float(), size=size, mode=mode, antialias=True, align_corners=False)[0]
    return x.clamp_(0, 255).round_()


def _to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def build_transform(weights_transform, *, train: bool = False, flip: bool = False,
                    letterbox: bool = False, normalize: bool = True, vflip: bool = False,
                    random_crop: bool = False) -> Preprocess:
    """Preprocessing taken from the weights (resize, crop, mean/std), plus opt-in options."""
    return Preprocess(weights_transform, train=train, flip=flip, vflip=vflip, letterbox=letterbox,
                      normalize=normalize, random_crop=random_crop)


AUGMENTATION_OPTIONS = {
    "none": {},
    "flip": {"flip": True},
    "crop+flip": {"random_crop": True, "flip": True},
    "letterbox+flips": {"letterbox": True, "flip": True, "vflip": True},
}


def training_transform(weights_transform, augmentation: str, *, letterbox: bool = False) -> Preprocess:
    """The training preprocessing of an augmentation preset (core.spec.config.AUGMENTATIONS)."""
    options = {"letterbox": letterbox, **AUGMENTATION_OPTIONS[augmentation]}
    return build_transform(weights_transform, train=True, **options)


# ----------------------------------------------------------------------------- dataset
class ListDataset(Dataset):
    """Images from a list of (path, label); an unreadable image yields None instead of crashing."""

    def __init__(self, samples: list[tuple[str, int]], transform, *, fast_jpeg: bool | None = None):
        self.samples = samples
        self.transform = transform
        self.min_side = getattr(transform, "decode_min_side", None)  # big JPEGs decode at reduced scale
        # libjpeg straight to a tensor, unless a PIL-only step (the letterbox) needs a PIL image
        self.fast_jpeg = not _needs_pil(transform) if fast_jpeg is None else fast_jpeg

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = decode_jpeg_tensor(path, min_side=self.min_side) if self.fast_jpeg else None
        if image is None:
            try:
                image = open_image(path, min_side=self.min_side)
            except ImageError:
                return None
        if isinstance(self.transform, CachedView):
            return self.transform.for_path(image, path), label, index
        return self.transform(image), label, index


def _needs_pil(transform) -> bool:
    return getattr(transform, "letterbox", None) is not None


def decoding_line(transform: "Preprocess", gpu: bool) -> str:
    """How this preprocessing gets its pixels, for the start record: nvJPEG cannot decode at reduced scale,
    so on a GPU each image goes where it is cheapest."""
    side = transform.decode_min_side
    small = "PIL (the letterbox needs it)" if transform.letterbox is not None else (
        "nvJPEG on the GPU" if gpu else "libjpeg (torchvision)")
    return (f"JPEGs with a shorter side of {2 * side} px or more: reduced-scale decoding on the CPU (libjpeg DCT "
            f"scaling, never below {side} px); smaller JPEGs: {small}; other formats: PIL at full size")


class DeferredJpegDataset(ListDataset):
    """For a GPU: the workers only read JPEG files (their bytes), and the GPU decodes and preprocesses
    them (nvJPEG through ``torchvision.io.decode_jpeg(device=…)``); a JPEG large enough to decode at
    reduced scale, and anything else, is decoded and preprocessed here, on the CPU, as usual. Batch
    with ``collate_deferred`` and finish with ``GpuJpegDecoder``."""

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        data = plain_jpeg_bytes(path, min_side=self.min_side)  # a large JPEG: reduced-scale decoding here
        if data is not None:
            return ("jpeg", data), label, index
        item = super().__getitem__(index)
        return None if item is None else (("tensor", item[0]), label, index)


def collate_deferred(batch):
    good = [item for item in batch if item is not None]
    if not good:
        return None, None, None, len(batch)
    return ([item[0] for item in good], torch.tensor([item[1] for item in good]),
            torch.tensor([item[2] for item in good]), len(batch) - len(good))


class GpuJpegDecoder:
    """Turns a deferred batch into a preprocessed image batch on ``device``; JPEGs are decoded there."""

    def __init__(self, transform: "Preprocess", device: torch.device):
        self.transform, self.device = transform, device

    def __call__(self, payloads: list) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(the batch, which payloads it holds): a JPEG no decoder can read is left out."""
        jpegs = [data for kind, data in payloads if kind == "jpeg"]
        decoded = iter(self._decode(jpegs))
        images = [next(decoded) if kind == "jpeg" else data.to(self.device) for kind, data in payloads]
        images = [self.transform(x) if kind == "jpeg" and x is not None else x
                  for (kind, _), x in zip(payloads, images)]
        keep = torch.tensor([x is not None for x in images])
        kept = [x for x in images if x is not None]
        return (torch.stack(kept) if kept else None), keep

    def _decode(self, jpegs: list) -> list:
        if not jpegs:
            return []
        # deferred: torchvision costs about as much as torch to import, and most paths never need this
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True)
        except RuntimeError:  # one bad file fails the whole batch: decode them one by one, on the CPU if need be
            return [self._one(data) for data in jpegs]

    def _one(self, data: torch.Tensor) -> torch.Tensor | None:
        # deferred: torchvision costs about as much as torch to import, and most paths never need this
        from torchvision.io import ImageReadMode, decode_jpeg

        for device in (self.device, torch.device("cpu")):
            try:
                return decode_jpeg(data, mode=ImageReadMode.RGB, device=device).to(self.device)
            except RuntimeError:
                continue
        return None  # unreadable: counted as skipped, like any unreadable image


def collate_skipping_unreadable(batch):
    """Stack the readable samples; report how many were skipped so the trainer can count them."""
    good = [item for item in batch if item is not None]
    skipped = len(batch) - len(good)
    if not good:
        return None, None, None, skipped
    images = torch.stack([item[0] for item in good])
    labels = torch.tensor([item[1] for item in good])
    indices = torch.tensor([item[2] for item in good])
    return images, labels, indices, skipped
