"""Cached backbone features: when only the head trains and inputs are fixed, compute the
head's inputs once and train the head on them.

The head's input is captured with a forward pre-hook, so the same code works for every
head in the architecture table (``fc``, ``classifier.6``, ``add_Linear``, ``_fc``).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from .accel import as_input
from .data import ListDataset, collate_skipping_unreadable
from .io import atomic_torch_save


@dataclass
class Features:
    features: torch.Tensor  # (n, d), on the CPU
    labels: torch.Tensor
    indices: torch.Tensor  # positions in the list file; unreadable images are absent
    skipped: int


def _file_stamp(path: str) -> list:
    try:
        st = os.stat(path)
        return [path, st.st_size, st.st_mtime_ns]
    except OSError:
        return [path, None, None]


def feature_cache_key(*, arch: str, variant: str, weights: str | None, transform: str,
                      samples: list[tuple[str, int]]) -> str:
    """Changes when any image, the weights file, the architecture or the preprocessing changes."""
    digest = hashlib.sha256()
    digest.update(json.dumps([arch, variant, _file_stamp(weights) if weights else None, transform]).encode())
    for path, label in samples:
        digest.update(json.dumps([_file_stamp(path), label]).encode())
    return digest.hexdigest()[:32]


def compute_head_inputs(model: nn.Module, head_name: str, samples, transform, *, device,
                        batch_size: int = 32, num_workers: int = 0) -> Features:
    """Run the frozen model once over ``samples`` and keep what its head receives."""
    captured = []
    hook = model.get_submodule(head_name).register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    loader = DataLoader(ListDataset(samples, transform), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=collate_skipping_unreadable, pin_memory=device.type == "cuda")
    feats, labels, indices, skipped = [], [], [], 0
    model.eval()
    try:
        # no_grad rather than inference_mode: the features later feed a head that needs autograd.
        with torch.no_grad():
            for images, y, idx, n_skipped in loader:
                skipped += n_skipped
                if images is None:
                    continue
                model(as_input(images, device))
                feats.append(captured.pop().flatten(1).float().cpu())
                labels.append(y)
                indices.append(idx)
    finally:
        hook.remove()
    if not feats:
        return Features(torch.empty(0, 0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), skipped)
    return Features(torch.cat(feats), torch.cat(labels), torch.cat(indices), skipped)


# Oldest entries are removed beyond this total; TLD_FEATURE_CACHE_BYTES to change it.
MAX_CACHE_BYTES = int(os.environ.get("TLD_FEATURE_CACHE_BYTES", 2 * 1024**3))


def prune_cache(folder: Path, max_bytes: int = MAX_CACHE_BYTES, keep: Path | None = None) -> list[Path]:
    """Delete the least recently used entries until the folder holds at most ``max_bytes``."""
    entries = sorted(folder.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    total, removed = 0, []
    for path in entries:
        total += path.stat().st_size
        if total > max_bytes and path != keep:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def cached_head_inputs(cache_dir: Path | None, key: str, compute) -> tuple[Features, bool]:
    """Load features stored under ``key`` or compute and store them; also say which happened."""
    path = Path(cache_dir) / "features" / f"{key}.pt" if cache_dir else None
    if path and path.is_file():
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            os.utime(path)  # mark as recently used for pruning
            return Features(data["features"], data["labels"], data["indices"], int(data["skipped"])), True
        except Exception:  # a damaged cache entry is only a cache miss
            pass
    features = compute()
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"features": features.features, "labels": features.labels,
                           "indices": features.indices, "skipped": features.skipped}, path)
        prune_cache(path.parent, keep=path)
    return features, False
