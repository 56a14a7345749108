"""Prediction from a finished run: rebuild the model from the checkpoint's own config."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .accel import as_input, to_channels_last
from .archs import get_arch
from .config import TrainConfig
from .data import build_transform
from .errors import RunError
from .images import ImageSource, open_image
from .surgery import adapt_model


def checkpoint_path(run_or_file: str | os.PathLike) -> Path:
    path = Path(run_or_file)
    if path.is_dir():
        for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
            if (path / name).is_file():
                return path / name
        raise RunError(f"run '{path}' has no checkpoint yet; wait for its first epoch to finish")
    if not path.is_file():
        raise RunError(f"'{path}' is neither a run folder nor a checkpoint file")
    return path


@dataclass
class Predictor:
    model: torch.nn.Module
    classes: list[str]
    transform: object
    config: TrainConfig
    epoch: int
    source: str

    @classmethod
    def load(cls, run_or_file: str | os.PathLike, device: str = "cpu") -> "Predictor":
        path = checkpoint_path(run_or_file)
        try:
            ckpt = torch.load(path, map_location=device, weights_only=True)
            cfg = TrainConfig.from_dict(ckpt["config"])
            classes = list(ckpt["classes"])
        except (KeyError, TypeError, RuntimeError, EOFError, OSError) as exc:
            raise RunError(f"'{path}' is not a checkpoint written by this tool ({exc})") from None
        # weights=None: the checkpoint overwrites every tensor, no need to read the pretrained file.
        model, _ = adapt_model(cfg.arch, len(classes), variant=cfg.head_variant, freeze="all")
        model.load_state_dict(ckpt["model"])
        to_channels_last(model.to(device)).eval()
        transform = build_transform(get_arch(cfg.arch).transforms(), letterbox=cfg.letterbox)
        return cls(model, classes, transform, cfg, int(ckpt.get("epoch", 0)), str(path))

    def probabilities(self, image: ImageSource) -> torch.Tensor:
        """Probabilities over all classes (they sum to 1)."""
        x = as_input(self.transform(open_image(image)).unsqueeze(0), next(self.model.parameters()).device)
        with torch.inference_mode():
            return self.model(x).float().softmax(1)[0].cpu()

    def predict(self, image: ImageSource, topk: int = 5) -> list[tuple[str, float]]:
        probs = self.probabilities(image)
        values, indices = probs.topk(min(topk, len(self.classes)))
        return [(self.classes[i], v) for v, i in zip(values.tolist(), indices.tolist())]
