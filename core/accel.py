"""Speed choices for the hot path, each one measured (bench/benchmark.py and the README's figures).

- channels_last: on this project's 2-core CPU it made EfficientNet-Lite0 about 2× and ResNet-18
  about 1.3× faster in inference; on CUDA it suits tensor cores.
- Small inference batches on the CPU: Lite0's depthwise convolutions ran about 2× faster per
  image at batch 4-8 than at 32 (activations stay in cache).
"""
from __future__ import annotations

import torch
from torch import nn


def to_channels_last(model: nn.Module) -> nn.Module:
    return model.to(memory_format=torch.channels_last)


def as_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a batch to ``device``; image batches go channels_last to match the model."""
    if x.dim() == 4:
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x.to(device, non_blocking=True)


def inference_batch_size(device: torch.device) -> int:
    return 64 if device.type == "cuda" else 8
