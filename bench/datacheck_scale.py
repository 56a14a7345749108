"""The data check's figures against planted truth, and at scale (bench/benchmark.py --only labels / datacheck).

``label_figures``: generated photos (core.data.planted) with 5% of the labels flipped and 10 resized re-encoded
copies, checked for real (Lite0 features); prints how many copies were found, the false groups, and the precision
and recall of each of cleanlab's filters on the same out-of-fold probabilities, with cleanlab's standalone
``CleanLearning(LogisticRegression)`` on the same features beside them.

``scale_figures``: N small image files in 10 class folders whose backbone features are synthetic (class centres
plus a low-rank spread, planted near copies and flipped labels) and written into the feature cache under the
real extractor's identity, so ``check_data`` runs end to end (headers, exact and perceptual hashes, neighbours,
cross-validation, the map) with every feature "from the cache", in minutes instead of a 100,000-image pass.
Each check runs in a process of its own for its peak memory.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLASSES = 10
DIMENSIONS = 1280  # EfficientNet-Lite0's pooled features
SPREAD = 48  # the low-rank directions images of a class vary along


# ----------------------------------------------------------------------------- labels and copies, planted photos
def label_figures(arch: str, tmp: Path, seeds: tuple[int, ...] = (0, 1, 2), per_class: int = 80) -> None:
    from core.analysis import datacheck as dc
    from core.data.planted import generate_planted
    from core.data.split import split_dataset
    from core.models.weights import resolve_weights
    from core.spec.archs import ARCHITECTURES
    from core.spec.config import TrainConfig
    from core.spec.records import follow

    weights = resolve_weights(ARCHITECTURES[arch])
    filters = ("low_self_confidence", "prune_by_noise_rate", "prune_by_class", "both", "confident_learning",
               "predicted_neq_given")
    totals: dict[str, list[tuple[float, float]]] = {name: [] for name in ("the check as shipped", *filters,
                                                                          "CleanLearning")}
    for seed in seeds:
        planted = generate_planted(tmp / f"planted{seed}", per_class=per_class, seed=seed)
        split = split_dataset(planted.root)
        report = follow(dc.check_data(split, arch=arch, weights=weights, cache_dir=tmp / "cache"), lambda r: None)
        copies = [frozenset(pair) for pair in planted.copies]
        groups = [frozenset(m.path for m in g.members) for g in report.duplicates]
        found = sum(any(c <= g for g in groups) for c in copies)
        false = sum(not any(g <= c for c in copies) for g in groups)
        flipped = {path for path, _, _ in planted.flipped}
        baseline = f"{report.baseline.accuracy:.3f}" if report.baseline else "none"
        print(f"planted photos, seed {seed}: {len(split.train) + len(split.val) + len(split.test)} images, "
              f"{len(flipped)} flipped labels, {len(copies)} resized (0.8×) JPEG-60 copies: {found} of {len(copies)} "
              f"copies found, {false} false groups; feature threshold {report.near_threshold:.3f}; linear baseline "
              f"{baseline}")
        suspects = {i.path for i in report.label_issues}
        totals["the check as shipped"].append((len(suspects & flipped) / max(len(suspects), 1),
                                               len(suspects & flipped) / len(flipped)))
        cfg = TrainConfig(arch=arch, weights=weights, freeze="head")
        features, kept, _ = follow(dc._features(split, cfg, tmp / "cache"), lambda r: None)
        labels = np.array([s.label for s in kept])
        # the same out-of-fold probabilities for every filter (folds by image: the 10 copies weigh nothing here)
        oof, _, _ = follow(dc._cross_validate(features, labels, np.arange(len(kept)), 5), lambda r: None)
        for name in filters:
            totals[name].append(_precision_recall(_flagged(labels, oof, name), kept, flipped))
        totals["CleanLearning"].append(_precision_recall(_clean_learning(features, labels), kept, flipped))
    print("label suspects on the planted flips (mean over seeds " + ", ".join(map(str, seeds)) + "):")
    for name, figures in totals.items():
        p, r = np.mean(figures, axis=0)
        f1 = 2 * p * r / max(p + r, 1e-9)
        print(f"    {name:22s} precision {p:.2f}  recall {r:.2f}  F1 {f1:.2f}"
              + ("   ← the check's suspects" if name == dc.LABEL_METHOD else ""))


def _flagged(labels: np.ndarray, oof: np.ndarray, name: str) -> np.ndarray:
    from cleanlab.filter import find_label_issues

    return np.flatnonzero(find_label_issues(labels, oof, filter_by=name, n_jobs=1))


def _clean_learning(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    from cleanlab.classification import CleanLearning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, C=0.1))
    issues = CleanLearning(model, seed=0, cv_n_folds=5).find_label_issues(features, labels)
    return np.flatnonzero(issues["is_label_issue"].to_numpy())


def _precision_recall(flagged: np.ndarray, kept, flipped: set[str]) -> tuple[float, float]:
    paths = {kept[i].path for i in flagged}
    hits = len(paths & flipped)
    return hits / max(len(paths), 1), hits / max(len(flipped), 1)


# ----------------------------------------------------------------------------- scale
def make_scale_data(root: Path, n: int, seed: int = 0) -> dict:
    """n small JPEGs in CLASSES folders (their pixels random, so no two are alike to a hash) with 1% planted
    resized copies and 2% of the images filed under a wrong class. Returns what was planted."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    true = rng.integers(0, CLASSES, n)
    filed = true.copy()
    flips = rng.choice(n, size=n // 50, replace=False)
    filed[flips] = (true[flips] + rng.integers(1, CLASSES, len(flips))) % CLASSES
    copies = rng.choice(np.setdiff1d(np.arange(n), flips), size=n // 100, replace=False)
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = root / f"class{filed[i]}" / f"{i:06d}.jpg"
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # smooth 32 × 32 pictures: 8 × 8 blocks enlarged
        Image.fromarray(pixels).resize((32, 32), Image.Resampling.BICUBIC).save(path, quality=85)
        paths.append(str(path))
    for j, i in enumerate(copies):
        copy = Path(paths[i]).with_name(f"{Path(paths[i]).stem}_copy.jpg")
        with Image.open(paths[i]) as image:
            image.resize((26, 26), Image.Resampling.BICUBIC).save(copy, quality=60)
    return {"true": true, "filed": filed, "flips": flips, "copies": copies, "paths": paths}


def synthetic_features(true: np.ndarray, copies: np.ndarray, seed: int = 0) -> dict[int, np.ndarray]:
    """Features with a class structure: class centres, a low-rank spread, a little isotropic noise; a copy's
    features are its original's with a small change (as resizing and re-encoding give)."""
    rng = np.random.default_rng(seed + 1)
    centres = rng.normal(0, 1, (CLASSES, DIMENSIONS)).astype(np.float32)
    basis = rng.normal(0, 1, (CLASSES, SPREAD, DIMENSIONS)).astype(np.float32) / np.sqrt(SPREAD)
    features = np.empty((len(true), DIMENSIONS), np.float32)
    for start in range(0, len(true), 10_000):
        block = true[start:start + 10_000]
        z = rng.normal(0, 1.0, (len(block), SPREAD)).astype(np.float32)
        features[start:start + 10_000] = (centres[block] + np.einsum("nk,nkd->nd", z, basis[block])
                                          + rng.normal(0, 0.3, (len(block), DIMENSIONS)).astype(np.float32))
    return {int(i): features[i] + rng.normal(0, 0.05, DIMENSIONS).astype(np.float32) for i in copies} | \
        {-1: features}  # the copies' rows, and every original's under -1


def cache_features(root: Path, cache: Path, arch: str, planted: dict) -> None:
    """Write the synthetic features into the feature cache as the check's extractor would have."""
    import torch

    from core.analysis.datacheck import load_split
    from core.features.cache import FeatureSet, store_cached_features
    from core.features.extractor import FeatureExtractor
    from core.models.weights import resolve_weights
    from core.spec.archs import ARCHITECTURES
    from core.spec.config import TrainConfig

    rows = synthetic_features(planted["true"], planted["copies"])
    originals = rows.pop(-1)
    row_of = {p: i for i, p in enumerate(planted["paths"])}
    for i in planted["copies"]:
        row_of[str(Path(planted["paths"][i]).with_name(f"{Path(planted['paths'][i]).stem}_copy.jpg"))] = -1 - int(i)
    split = load_split(str(root))
    cfg = TrainConfig(arch=arch, weights=resolve_weights(ARCHITECTURES[arch]), freeze="head")
    extractor = FeatureExtractor.build(cfg, len(split.classes), cache_dir=cache)
    for samples in (split.train, split.val, split.test):
        picked = [row_of[p] for p, _ in samples]
        x = np.stack([originals[r] if r >= 0 else rows[-1 - r] for r in picked])
        features = FeatureSet(torch.from_numpy(x), torch.tensor([label for _, label in samples]),
                              torch.arange(len(samples)), 0)
        store_cached_features(cache, extractor.identity, samples, features)


def one_check(root: str, cache: str, arch: str) -> dict:
    """The whole check of ``root`` in this process: its seconds by phase, its peak memory, what it found."""
    from core.analysis.datacheck import check_data, load_split
    from core.models.weights import resolve_weights
    from core.spec.archs import ARCHITECTURES
    from core.spec.records import follow

    t0 = time.time()
    split = load_split(root)
    t_split = time.time() - t0
    weights = resolve_weights(ARCHITECTURES[arch])
    report = follow(check_data(split, arch=arch, weights=weights, cache_dir=cache), lambda r: None)
    return {"seconds": time.time() - t0, "split": t_split, "phases": report.seconds,
            "rss_mb": _peak_rss_mb(),
            "from_cache": report.features_from_cache, "groups": [sorted(m.path for m in g.members)
                                                                 for g in report.duplicates],
            "suspects": [i.path for i in report.label_issues], "map": len(report.embedding),
            "baseline": report.baseline.accuracy if report.baseline else None, "threshold": report.near_threshold}


def _peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM; ru_maxrss can carry the parent's high-water mark)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scale_figures(arch: str, keep: Path, n: int) -> None:
    """``keep``: a folder outside the repository where the images and their cached features stay between runs
    of the benchmark (writing 100,000 takes minutes)."""
    t0 = time.time()
    folder = keep / f"scale-{n}"
    root, cache, truth = folder / "images", folder / "cache", folder / "planted.npz"
    if truth.is_file():
        stored = np.load(truth)
        planted = {k: stored[k] for k in stored.files}
        planted["paths"] = [str(root / f"class{planted['filed'][i]}" / f"{i:06d}.jpg") for i in range(n)]
        print(f"data check at {n:,} images: the images and their synthetic features from {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
        planted = make_scale_data(root, n)
        cache_features(root, cache, arch, planted)
        np.savez(truth, **{k: v for k, v in planted.items() if k != "paths"})
        print(f"data check at {n:,} images: {time.time() - t0:.0f} s to write the images and cache their synthetic "
              f"features ({CLASSES} classes, {len(planted['copies']):,} planted resized copies, "
              f"{len(planted['flips']):,} flipped labels) into {folder}")
    shutil.rmtree(cache / "phash", ignore_errors=True)  # the first check hashes every image
    for attempt in ("first check (perceptual hashes computed)", "second check (hashes cached too)"):
        result = _in_process_of_its_own(root, cache, arch)
        phases = ", ".join(f"{k} {v:.1f}" for k, v in result["phases"].items())
        print(f"    {attempt}: {result['seconds']:.1f} s (scanning the folders {result['split']:.1f} s; {phases}); "
              f"peak RSS {result['rss_mb']:.0f} MB; features from the cache: {result['from_cache']}")
    _found(result, planted)


def _in_process_of_its_own(root: Path, cache: Path, arch: str) -> dict:
    code = ("import json, sys; sys.path.insert(0, 'bench'); import datacheck_scale as d; "
            f"print(json.dumps(d.one_check({str(root)!r}, {str(cache)!r}, {arch!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, env=os.environ.copy())
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _found(result: dict, planted: dict) -> None:
    paths = planted["paths"]
    copies = {frozenset((paths[i], str(Path(paths[i]).with_name(f"{Path(paths[i]).stem}_copy.jpg"))))
              for i in planted["copies"]}
    groups = [frozenset(g) for g in result["groups"]]
    found = sum(any(c <= g for g in groups) for c in copies)
    false = sum(not any(g <= c for c in copies) for g in groups)
    flipped = {paths[i] for i in planted["flips"]}
    suspects = set(result["suspects"])
    hits = len(suspects & flipped)
    print(f"    found {found:,} of {len(copies):,} planted copies ({false} other groups); label suspects "
          f"{len(suspects):,}: precision {hits / max(len(suspects), 1):.2f}, recall {hits / len(flipped):.2f}; "
          f"the map draws {result['map']:,} points; baseline {result['baseline']:.3f}")
