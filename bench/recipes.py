"""The recipes side by side: head only (the old default), the staged recipe (the default now) and the body's last
stage in one stage, with SGD and AdamW, and the default with cached augmented views, on a real photo set and on
a generated set made hard on purpose. Each run is a whole process with a cache of its own (a first run's cost:
the feature pass included); every choice is made on validation and the test split is read once. Accuracy comes
with its 95% Wilson interval; each recipe's gain over the first row (the old default) is paired on the same test
images, with its own 95% interval (the project's paired bootstrap, as the runs' comparison shows it). Times are
ratios against the first row's, measured in the same run.

    python bench/benchmark.py --only recipes [--photos DIR]   # DIR: class folders of real photos
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from benchmark import cli

from core.data.planted import generate_planted
from core.platform.figures import accuracy_of, paired_difference
from core.runs.files import read_records

# (name, the train flags besides the data, arch and weights); the first is the baseline of every ratio
OLD_DEFAULT = ["--recipe", "single", "--optimizer", "sgd", "--lr", "1e-3"]
RECIPES = [
    ("head only, SGD lr 1e-3 (the old default)", OLD_DEFAULT),
    ("head only, AdamW lr 3e-3", ["--recipe", "single"]),
    ("staged, SGD lr 1e-3 (5 + 3 epochs)", ["--recipe", "fine_tune", "--optimizer", "sgd", "--lr", "1e-3"]),
    ("staged, AdamW lr 3e-3 (the default)", []),
    ("last stage + head, one stage, SGD lr 1e-3", ["--freeze", "last_block", "--optimizer", "sgd", "--lr", "1e-3"]),
    ("the default with 2 cached views", ["--aug-views", "2"]),
    ("the default with 4 cached views", ["--aug-views", "4"]),
]


def hard_photos(root: Path) -> Path:
    """Generated scenes (small shapes among distractor blobs on photo-like backgrounds), 5 classes of 200, with
    8% of the photos filed under a wrong class: overlapping classes and label noise."""
    if not root.is_dir():
        generate_planted(root, per_class=200, classes=5, copies=0, flip_share=0.08, seed=11)
    return root


def _correct(run: Path) -> dict[str, bool]:
    return {p["path"]: p["label"] == p["pred"] for p in json.loads((run / "predictions.json").read_text())}


def recipe_table(name: str, data: Path, arch: str, tmp: Path, recipes=RECIPES) -> None:
    print(f"\n{name}: {data}")
    print(f"{'recipe':42} {'test accuracy (95% CI)':>26} {'gain over the first (95% CI)':>30} {'time':>8} "
          f"{'× first':>9}")
    base_time, base_correct = None, None
    for i, (label, flags) in enumerate(recipes):
        out = tmp / f"{data.name}-{i}"
        t0 = time.perf_counter()
        cli("train", "--data", data, "--arch", arch, "--weights", "pretrained", "--out", out,
            "--cache-dir", tmp / f"{data.name}-cache-{i}", *flags)
        seconds = time.perf_counter() - t0
        final = read_records(out).final
        interval = accuracy_of(final.test_acc, final.test_n)
        correct = _correct(out)
        if base_time is None:
            base_time, base_correct = seconds, correct
        shared = sorted(set(base_correct) & set(correct))
        gain = paired_difference([correct[p] for p in shared], [base_correct[p] for p in shared]) if i else None
        gain_text = f"{gain.difference:+.3f} ({gain.low:+.3f} to {gain.high:+.3f})" if gain else "–"
        stages = ", ".join(f"stage {e.stage} epoch {e.epoch}" for e in read_records(out).epochs if e.best)
        print(f"{label:42} {final.test_acc:.3f} ({interval.low:.3f}–{interval.high:.3f}) n={final.test_n:<5}"
              f" {gain_text:>30} {seconds:7.0f}s {seconds / base_time:8.1f}×   chosen: {stages.split(', ')[-1]}")


def recipe_figures(arch: str, tmp: Path, photos: Path | None, hard_root: Path) -> None:
    print("Recipes: each a whole process with its own cache (first-run cost); chosen on validation, tested once")
    if photos is not None:
        recipe_table("real photos", photos, arch, tmp)
    recipe_table("hard generated set", hard_photos(hard_root), arch, tmp)
