"""Why did it say that? Grad-CAM heat maps through torchcam.

The layer explained is the architecture table's ``cam_layer`` (the last spatial layer: resnet18
``layer4``, vgg16's last conv block, efficientnet_lite0 ``_bn1``). A ViT has no spatial layer: its
patch tokens are laid back on their grid (torchcam's ``reshape_transform``, the documented way for
transformers), at the last block's first norm, the last place where they still reach the class token. The map
is drawn over the image as the model saw it (after resize and crop, or the letterbox), so every pixel of the
overlay lines up with what the prediction was computed from.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from ..data.images import ImageSource
from ..platform.errors import ConfigError, RunError, not_finite_message
from ..spec.archs import get_arch


@dataclass
class Explanation:
    class_index: int
    class_name: str
    probability: float
    heatmap: torch.Tensor  # (H, W) in [0, 1] at the model's input size; 1 where the class's evidence is strongest
    view: Image.Image  # the image as the model saw it

    def overlay(self, alpha: float = 0.5) -> Image.Image:
        """The heat map in colour (jet: red is strong) blended over the model's view."""
        from torchcam.utils import overlay_mask  # imports matplotlib: only when a map is drawn

        return overlay_mask(self.view, Image.fromarray(self.heatmap.numpy(), mode="F"), alpha=alpha)

    def mass_inside(self, mask: Image.Image) -> float:
        """The share of the heat map's mass that falls inside ``mask`` (same size as the view)."""
        inside = torch.from_numpy(np.array(mask.convert("L"), dtype=np.float32) > 127)
        total = float(self.heatmap.sum())
        return float(self.heatmap[inside].sum()) / total if total > 0 else 0.0


# The app shares one model between visitors; GradCAM hooks it for the length of one map.
_HOOKS = threading.Lock()


def model_view(x: torch.Tensor, transform) -> Image.Image:
    """Undo the normalisation of one preprocessed image: what the model was shown, as RGB."""
    pixels = (x * transform.std + transform.mean).clamp(0, 1) if transform.normalize else x.clamp(0, 1)
    return Image.fromarray((pixels * 255).round().byte().permute(1, 2, 0).numpy())


def class_index(classes: list[str], name: str | None) -> int | None:
    if name is None:
        return None
    if name not in classes:
        raise ConfigError(f"class '{name}' is not one of this model's classes: {', '.join(classes)}")
    return classes.index(name)


def token_grid(tokens: torch.Tensor) -> torch.Tensor:
    """A ViT layer's tokens (batch, 1 + h·w, channels), class token first, as a map (batch, channels, h, w)."""
    patches = tokens[:, 1:]
    batch, count, channels = patches.shape
    side = math.isqrt(count)
    if side * side != count:
        raise ConfigError(f"{count} patch tokens do not form a square grid, so they cannot be drawn as a map")
    return patches.transpose(1, 2).reshape(batch, channels, side, side)


def explain(predictor, image: ImageSource, target: int | None = None) -> Explanation:
    """Grad-CAM of ``predictor``'s model for class ``target`` (None: the predicted class) on ``image``."""
    # deferred: only a Grad-CAM map needs torchcam
    from torchcam.methods import GradCAM

    spec = get_arch(predictor.config.arch)
    model, layer = predictor.model, spec.cam_layer
    x = predictor.transform(predictor.open(image))
    batch = x.unsqueeze(0).to(predictor.device, memory_format=torch.channels_last)
    # The input asks for gradients so the maps exist even where the model's own weights are frozen.
    batch.requires_grad_(True)
    reshape = token_grid if spec.cam_tokens else None
    with _HOOKS, GradCAM(model, target_layer=layer, reshape_transform=reshape) as cam, torch.enable_grad():
        scores = model(batch).float()
        if not bool(torch.isfinite(scores).all()):
            raise RunError(not_finite_message(predictor.source))
        chosen = int(scores.argmax(1)) if target is None else target
        if not 0 <= chosen < scores.shape[1]:
            raise ConfigError(f"class index {chosen} does not exist; this model has {scores.shape[1]} classes")
        (low_res,) = cam(chosen, scores)
    # the probability prediction shows: calibrated by the run's temperature when it has one
    probability = float((scores.detach() / (predictor.temperature or 1.0)).softmax(1)[0, chosen])
    if not math.isfinite(probability):
        raise RunError(not_finite_message(predictor.source))
    heatmap = F.interpolate(low_res.detach().float().cpu()[None], size=x.shape[-2:], mode="bilinear",
                            align_corners=False)[0, 0].clamp(0, 1)
    return Explanation(chosen, predictor.classes[chosen], probability, heatmap, model_view(x, predictor.transform))
