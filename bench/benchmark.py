"""Benchmark: the tutorial's recipe against this project's trainer, on the same data, in one run.

Prints figures; it is not a test. Ratios are measured against baselines from the same run,
since these machines are shared and noisy.

    .venv/bin/python bench/benchmark.py [--images 400] [--epochs 5] [--arch auto] [--skip-flip]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from core.archs import ARCHITECTURES  # noqa: E402
from core.config import TrainConfig  # noqa: E402
from core.data import (Letterbox, ListDataset, build_transform, collate_skipping_unreadable, read_list_file,  # noqa: E402
                       split_dataset, write_split)
from core.demo import draw_shape  # noqa: E402
from core.predict import Predictor  # noqa: E402
from core.surgery import adapt_model, trainable_parameters  # noqa: E402
from core.train import train  # noqa: E402
from core.weights import find_weights  # noqa: E402


# ----------------------------------------------------------------------------- data
def make_photos(root: Path, n: int, seed: int = 0) -> Path:
    """n photo-sized (500×375) JPEGs in two classes."""
    rng = random.Random(seed)
    for k in range(n):
        shape = ("circle", "star")[k % 2]
        (root / shape).mkdir(parents=True, exist_ok=True)
        draw_shape(shape, rng, size=(500, 375)).save(root / shape / f"{k:05d}.jpg", quality=90)
    return root


# ----------------------------------------------------------------------------- (a) the recipe
class RecipeDataset(Dataset):
    """The tutorial's dataset: read path<TAB>label lines, letterbox, flips, ToTensor, no normalisation."""

    def __init__(self, list_file: Path, train: bool):
        rows = (line.rstrip("\n").split("\t") for line in open(list_file, encoding="utf-8"))
        self.items = [(path, int(label)) for path, label in rows]
        flips = [T.RandomHorizontalFlip(), T.RandomVerticalFlip()] if train else []
        self.transform = T.Compose(flips + [Letterbox(224), T.ToTensor()])

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        return self.transform(Image.open(path).convert("RGB")), label


def recipe(arch: str, weights: str, lists: Path, epochs: int) -> float:
    train_data = DataLoader(RecipeDataset(lists / "train.txt", True), batch_size=8, shuffle=True, num_workers=4)
    test_data = DataLoader(RecipeDataset(lists / "test.txt", False), batch_size=8, shuffle=False, num_workers=4)
    model, report = adapt_model(arch, 2, weights=weights, freeze="head", seed=0)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(trainable_parameters(model), lr=1e-3)
    size = len(train_data.dataset)
    for _ in range(epochs):
        model.train()
        for batch, (X, y) in enumerate(train_data):
            loss = loss_fn(model(X), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if batch % 10 == 0:
                _ = f"loss: {loss.item():>7f}  [{batch * len(X):>5d}/{size:>5d}]"
        model.eval()
        correct = 0
        with torch.no_grad():
            for X, y in test_data:
                correct += (model(X).argmax(1) == y).sum().item()
    return correct / len(test_data.dataset)


# ----------------------------------------------------------------------------- (b) the project
def project(arch: str, weights: str, lists: Path, epochs: int, run_dir: Path, flip: bool = False) -> tuple[float, str]:
    cfg = TrainConfig(arch=arch, weights=weights, lists_dir=str(lists), epochs=epochs, batch_size=8, lr=1e-3,
                      freeze="head", flip=flip)
    records = list(train(cfg, run_dir))  # no cache_dir: features are computed inside this run
    final = records[-1]
    assert final["status"] == "completed", final
    return final["final_acc"], records[0]["path"]


# ----------------------------------------------------------------------------- (c) the limit
# A plain forward pass: eval mode, inference_mode, the recipe's batch of 8, default layout.
def plain_forward(arch: str, lists: Path, workers: int) -> None:
    spec = ARCHITECTURES[arch]
    samples = read_list_file(lists / "train.txt") + read_list_file(lists / "test.txt")
    loader = DataLoader(ListDataset(samples, build_transform(spec.transforms())), batch_size=8,
                        num_workers=workers, collate_fn=collate_skipping_unreadable)
    model = spec.build().eval()
    with torch.inference_mode():
        for x, *_ in loader:
            model(x)


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


# ----------------------------------------------------------------------------- extras
def prediction_latency(run_dir: Path, image: Path, n: int = 50) -> tuple[float, float]:
    predictor = Predictor.load(run_dir)
    for _ in range(5):  # warm-up
        predictor.probabilities(image)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        predictor.probabilities(image)
        times.append(time.perf_counter() - t)
    times.sort()
    return statistics.median(times) * 1000, times[int(0.95 * (n - 1))] * 1000


def scan_and_split_100k(tmp: Path, n: int = 100_000) -> float:
    root = tmp / "many"
    for c in range(10):
        (root / f"class{c}").mkdir(parents=True)
    for k in range(n):
        (root / f"class{k % 10}" / f"img{k:06d}.jpg").touch()
    t = time.perf_counter()
    write_split(split_dataset(root), tmp / "many-lists")
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--arch", default="auto", help="auto: resnet18 if its weights are on disk, else efficientnet_lite0")
    parser.add_argument("--skip-flip", action="store_true", help="leave out (b'), the flip-augmented run")
    args = parser.parse_args()

    arch = args.arch
    if arch == "auto":
        arch = "resnet18" if find_weights(ARCHITECTURES["resnet18"]) else "efficientnet_lite0"
    weights = find_weights(ARCHITECTURES[arch]).path
    print(f"torch {torch.__version__} · {torch.get_num_threads()} threads · {os.cpu_count()} cores · arch {arch}")
    print(f"weights: {weights}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_photos(tmp / "photos", args.images)
        lists = write_split(split_dataset(data, 0.6, 0), tmp / "lists")
        print(f"data: {args.images} JPEGs of 500×375, 2 classes, 60/40 split; {args.epochs} epochs, batch 8, lr 1e-3, head only")

        t_c, _ = timed(plain_forward, arch, lists, plan_threads()[1])
        t_b, (acc_b, path_b) = timed(project, arch, weights, lists, args.epochs, tmp / "run_b")
        t_a, acc_a = timed(recipe, arch, weights, lists, args.epochs)
        print(f"(a) tutorial recipe        : {t_a:7.1f} s   test accuracy {acc_a:.3f}")
        print(f"(b) project trainer        : {t_b:7.1f} s   test accuracy {acc_b:.3f}   ({path_b})")
        if not args.skip_flip:
            t_b2, (acc_b2, path_b2) = timed(project, arch, weights, lists, args.epochs, tmp / "run_b2", flip=True)
            print(f"(b') project + flip        : {t_b2:7.1f} s   test accuracy {acc_b2:.3f}   ({path_b2})")
        print(f"(c) one plain forward pass : {t_c:7.1f} s")
        print(f"a/b = {t_a / t_b:.2f}   b/c = {t_b / t_c:.2f}")

        p50, p95 = prediction_latency(tmp / "run_b", next((data / "star").iterdir()))
        print(f"prediction latency ({arch}, warm, one 500×375 JPEG): p50 {p50:.1f} ms  p95 {p95:.1f} ms")
        if arch != "resnet18":
            run18 = tmp / "run_r18"
            list(train(TrainConfig(arch="resnet18", lists_dir=str(lists), epochs=1), run18))
            p50, p95 = prediction_latency(run18, next((data / "star").iterdir()))
            print(f"prediction latency (resnet18, warm, one 500×375 JPEG): p50 {p50:.1f} ms  p95 {p95:.1f} ms")
        print(f"scan + split + write lists of 100,000 empty image files: {scan_and_split_100k(tmp):.2f} s")


if __name__ == "__main__":
    main()
