"""The torch side of the data: preprocessing taken from the weights, and the Dataset over list files."""
from __future__ import annotations

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T

from .errors import ImageError
from .images import decode_jpeg_tensor, open_image


# ----------------------------------------------------------------------------- transforms
class Letterbox(torch.nn.Module):
    """The tutorial's preprocessing: scale the whole image onto a black square, keeping its aspect."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, img: Image.Image) -> Image.Image:
        scale = self.size / max(img.size)
        w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
        canvas = Image.new("RGB", (self.size, self.size))
        canvas.paste(img.resize((w, h), Image.BILINEAR), ((self.size - w) // 2, (self.size - h) // 2))
        return canvas

    def __repr__(self) -> str:
        return f"Letterbox(size={self.size})"


def build_transform(weights_transform, *, train: bool = False, flip: bool = False,
                    letterbox: bool = False, normalize: bool = True, vflip: bool = False):
    """Preprocessing taken from the weights (resize, crop, mean/std), plus opt-in options."""
    crop = weights_transform.crop_size[0]
    steps = [T.RandomHorizontalFlip()] if train and flip else []
    steps += [T.RandomVerticalFlip()] if train and vflip else []
    if letterbox:
        steps.append(Letterbox(crop))
    else:
        steps += [T.Resize(weights_transform.resize_size, interpolation=weights_transform.interpolation,
                           antialias=True), T.CenterCrop(crop)]
    steps += [T.PILToTensor(), T.ToDtype(torch.float32, scale=True)]
    if normalize:
        steps.append(T.Normalize(weights_transform.mean, weights_transform.std))
    return T.Compose(steps)


# ----------------------------------------------------------------------------- dataset
class ListDataset(Dataset):
    """Images from a list of (path, label); an unreadable image yields None instead of crashing."""

    def __init__(self, samples: list[tuple[str, int]], transform, *, fast_jpeg: bool | None = None):
        self.samples = samples
        self.transform = transform
        # libjpeg straight to a tensor, unless a PIL-only step (the letterbox) needs a PIL image
        self.fast_jpeg = not _needs_pil(transform) if fast_jpeg is None else fast_jpeg

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = decode_jpeg_tensor(path) if self.fast_jpeg else None
        if image is None:
            try:
                image = open_image(path)
            except ImageError:
                return None
        return self.transform(image), label, index


def _needs_pil(transform) -> bool:
    return any(isinstance(t, Letterbox) for t in getattr(transform, "transforms", [transform]))


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
