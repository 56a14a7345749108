"""The app's choices that must outlive a browser reload (data root, split, model): a JSON file
in the workspace, so every page and every session sees the same current dataset and model."""
from __future__ import annotations

import json
from typing import Any

from .io import atomic_write_json
from .workspace import workspace_dir

DEFAULTS: dict[str, Any] = {
    "data_root": None,  # None: the demo dataset
    "train_ratio": 0.6,
    "seed": 0,
    "arch": None,  # None: resnet18 if its weights are on disk, else efficientnet_lite0
    "variant": None,
    "weights_mode": "pretrained",  # pretrained | scratch
    "weights_file": "",
    "freeze": "head",
}


def _path():
    return workspace_dir() / "app_state.json"


def load_state() -> dict[str, Any]:
    try:
        stored = json.loads(_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = {}
    return {**DEFAULTS, **{k: v for k, v in stored.items() if k in DEFAULTS}}


def save_state(**changes) -> dict[str, Any]:
    unknown = set(changes) - set(DEFAULTS)
    if unknown:
        raise KeyError(f"unknown app settings {sorted(unknown)}; allowed: {sorted(DEFAULTS)}")
    state = {**load_state(), **changes}
    atomic_write_json(_path(), state)
    return state
