"""Speed choices for the hot path, each one measured (bench/benchmark.py and the figures in docs/benchmark.md).

- channels_last: on this project's 2-core CPU it made EfficientNet-Lite0 about 2× and ResNet-18
  about 1.3× faster in inference; on CUDA it suits tensor cores.
- Small inference batches on the CPU: Lite0's depthwise convolutions ran about 2× faster per
  image at batch 4-8 than at 32 (activations stay in cache), and batch 4 about 1.5× faster than 8
  once BatchNorm is folded (the benchmark's (c) variants).
- BatchNorm folded into the convolution before it, for frozen inference (the feature pass and
  prediction): about 20% faster for ResNet-18 and Lite0 on this CPU, the same outputs within 1e-6.
"""
from __future__ import annotations

import copy
import os

import torch
import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.optim.optimizer import Optimizer

from .errors import RunError


def to_channels_last(model: nn.Module) -> nn.Module:
    return model.to(memory_format=torch.channels_last)


def as_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a batch to ``device``; image batches go channels_last to match the model."""
    if x.dim() == 4:
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x.to(device, non_blocking=True)


def inference_batch_size(device: torch.device) -> int:
    return 64 if device.type == "cuda" else 4


class _ConvLeafTracer(torch.fx.Tracer):
    # Convolutions stay single nodes even when a library subclasses nn.Conv2d with its own forward
    # (EfficientNet-Lite's same-padding convs), so the conv→BatchNorm pairs are visible in the graph.
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, nn.Conv2d) or super().is_leaf_module(m, qualname)


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    modules = dict(model.named_modules())
    pairs = []
    for node in _ConvLeafTracer().trace(model).nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        source = node.args[0]
        if (isinstance(source, torch.fx.Node) and source.op == "call_module" and len(source.users) == 1
                and isinstance(modules.get(source.target), nn.Conv2d)):
            pairs.append((str(source.target), str(node.target)))
    return pairs


def _replace(model: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a convolution into it, in place; return how many.

    Only for a model in eval mode that will not train again: the folded model computes the same
    function with running statistics, and its state dict no longer has the BatchNorm entries.
    A model FX cannot trace is left as it is (0).
    """
    try:
        pairs = _conv_bn_pairs(model)
    except Exception:  # torch.fx cannot trace every model; unfolded is still correct
        return 0
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)  # as _conv_bn_pairs found them
        _replace(model, conv_name, fuse_conv_bn_eval(conv, bn))
        _replace(model, bn_name, nn.Identity())
    return len(pairs)


def inference_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for frozen inference: eval mode, BatchNorm folded, channels_last."""
    fast = copy.deepcopy(model).eval()
    fold_batchnorm(fast)
    return to_channels_last(fast)


# ----------------------------------------------------------------------------- threads and devices
def available_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def plan_threads(requested_workers: int = -1, *, cuda: bool = False, cores: int | None = None) -> tuple[int, int]:
    """(intra-op threads, image-decoding workers), chosen together so threads + workers ≤ cores.

    Oversubscribed, a 2-core machine under any other load fell from 19 to 4 images/s (measured;
    see the benchmark's quiet-vs-loaded line). On the CPU, decoding and resizing a photo costs
    about a fifth of a frozen forward pass, so one worker per four cores keeps the model fed (on
    2 cores: none, decoding in the main process, both cores computing). On CUDA the GPU computes,
    so decoding gets the cores. ``requested_workers`` ≥ 0 is the user's choice; threads take the rest.
    """
    cores = cores or available_cores()
    if requested_workers >= 0:
        workers = requested_workers
    elif cuda:
        workers = max(1, min(8, cores - 1))
    else:
        workers = min(4, cores // 4)
    return max(1, cores - workers), workers


def configure_device(device: torch.device) -> None:
    """Speed settings for a fixed-size input: cuDNN picks its fastest kernels, matmuls use TF32. No-op on CPU."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")


def resolve_device(name: str, cuda_available: bool | None = None) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; a CUDA device asked for on a machine without one is refused."""

    cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if name == "auto":
        return torch.device("cuda" if cuda_available else "cpu")
    if name.startswith("cuda") and not cuda_available:
        raise RunError(f"device '{name}' was asked for, but CUDA is not available here; use 'auto' or 'cpu'")
    return torch.device(name)


class _PlainStep:
    """A torch optimiser, stepping without importing torch._dynamo.

    ``step`` is wrapped so that torch.compile sees a graph break; the wrapper imports torch._dynamo (about a
    second on a 2-core CPU) only to place it. Outside torch.compile the wrapper's other work is running the step
    with gradients off, which this does too. The update itself is torch's own. If a torch release wraps
    ``step`` differently, this is the plain optimiser.
    """

    defaults: dict

    def step(self, closure=None):
        base = next(c for c in type(self).__mro__ if c.__module__.startswith("torch.optim"))
        plain = getattr(base.step, "__wrapped__", None)
        if plain is None or self.defaults.get("differentiable"):
            return super().step(closure)  # type: ignore[misc]
        with torch.no_grad():
            return plain(self, closure)


class SGD(_PlainStep, torch.optim.SGD):
    """torch.optim.SGD (see ``_PlainStep``)."""


class AdamW(_PlainStep, torch.optim.AdamW):
    """torch.optim.AdamW (see ``_PlainStep``)."""


def skip_dynamo_import() -> None:
    """Let torch.optim run without importing torch._dynamo (1.4 s of a 2-core CPU's start-up, measured).

    torch.optim wraps ``zero_grad``, ``state_dict`` and a few more so that torch.compile leaves them
    alone; the wrapper imports torch._dynamo on its first call only to say so. This project never
    compiles, so the wrappers are told, up front, that their plain function is the one to call.
    If a torch release wraps them differently, this does nothing and the import simply happens.
    """

    for name in ("zero_grad", "state_dict", "load_state_dict", "add_param_group"):
        original = getattr(getattr(Optimizer, name, None), "__wrapped__", None)
        if original is not None and getattr(original, "__dynamo_disable", None) is None:
            setattr(original, "__dynamo_disable", original)
