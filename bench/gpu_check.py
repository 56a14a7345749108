"""One short check of the CUDA path: train the frozen (cached features) and the full path on the
generated dataset, predict, and print images/s, peak GPU memory and the share of time spent
waiting for data. Prints figures; not a test.

    python bench/gpu_check.py [--images 400] [--epochs 2]

Without a GPU it runs the same steps on the CPU as a dry run (small and quick) and says so.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from benchmark import make_photos  # the same generated photos as the benchmark (bench/ is the script's folder)

from core.data.split import split_dataset, write_split
from core.inference.predict import Predictor
from core.models.weights import resolve_weights
from core.spec.archs import get_arch
from core.spec.config import TrainConfig
from core.training.run import train


def run(cfg: TrainConfig, out: Path) -> None:
    t0 = time.perf_counter()
    records = list(train(cfg, out))
    seconds = time.perf_counter() - t0
    final, start = records[-1], records[0]
    epochs = [r for r in records if r.type == "epoch"]
    features = [r for r in records if r.type == "features"]
    images = start.train_size * len(epochs)
    print(f"  freeze {cfg.freeze:10s} {start.feature_path:15s} on {start.device_name}: {final.status}, "
          f"test accuracy {final.test_acc} (epoch {final.best_epoch} chosen on {final.chosen_on}), "
          f"{seconds:.1f} s in all, threads {start.threads}, workers {start.workers}")
    if features:
        feature_s = sum(f.seconds for f in features)
        print(f"    feature pass: {(start.train_size + start.test_size) / max(feature_s, 1e-9):.0f} images/s")
    train_ips = [e.images_per_s for e in epochs if e.images_per_s]
    if train_ips:
        print(f"    training: {sum(train_ips) / len(train_ips):.0f} images/s per epoch (mean over {len(epochs)})")
    print(f"    epochs took {sum(e.seconds for e in epochs):.1f} s for {images} training images")


def data_wait_share(cfg: TrainConfig, lists: Path) -> float:
    """The share of a full-forward epoch spent waiting for the next batch of images."""
    from core.data.datasets import ListDataset, build_transform, collate_skipping_unreadable
    from core.data.split import read_split
    from core.models.surgery import adapt_model

    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    split = read_split(lists)
    model, _ = adapt_model(cfg.arch, len(split.classes), weights=cfg.weights, freeze="all")
    model.to(device).train()
    loader = torch.utils.data.DataLoader(ListDataset(split.train, build_transform(get_arch(cfg.arch).transforms())),
                                         batch_size=cfg.batch_size, num_workers=max(cfg.num_workers, 0),
                                         collate_fn=collate_skipping_unreadable, pin_memory=device.type == "cuda")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    waiting = computing = 0.0
    t = time.perf_counter()
    for x, y, _, _ in loader:
        got = time.perf_counter()
        waiting += got - t
        loss = torch.nn.functional.cross_entropy(model(x.to(device, non_blocking=True)), y.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        computing += t - got
    return waiting / max(waiting + computing, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    if gpu:
        print(f"GPU: {torch.cuda.get_device_name(0)} · torch {torch.__version__} · CUDA {torch.version.cuda}")
    else:
        print("No GPU is present: a dry run of the same steps on the CPU (small, so it stays quick). "
              "The figures below are the CPU's, not a GPU's.")
        args.images, args.epochs = min(args.images, 60), 1
    arch = "efficientnet_lite0"
    weights = resolve_weights(get_arch(arch))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_photos(tmp / "photos", args.images)
        lists = write_split(split_dataset(data), tmp / "lists")
        common = dict(arch=arch, weights=weights, lists_dir=str(lists), epochs=args.epochs, batch_size=32 if gpu else 8)
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        print(f"{args.images} JPEGs of 500×375, {args.epochs} epochs")
        run(TrainConfig(freeze="head", **common), tmp / "frozen")
        run(TrainConfig(freeze="last_block", **common), tmp / "last_block")
        run(TrainConfig(freeze="all", **common), tmp / "full")
        share = data_wait_share(TrainConfig(freeze="all", num_workers=-1, **common), lists)
        print(f"  full path: {100 * share:.0f}% of an epoch is spent waiting for images")
        predictor = Predictor.load(tmp / "frozen")
        image = next((data / "star").iterdir())
        for _ in range(3):
            predictor.probabilities(image)
        t0 = time.perf_counter()
        for _ in range(20):
            predictor.probabilities(image)
        print(f"  prediction on {predictor.device}: {(time.perf_counter() - t0) / 20 * 1000:.1f} ms per image (warm)")
        if gpu:
            print(f"  peak GPU memory: {torch.cuda.max_memory_allocated() / 1024**2:.0f} MiB")


if __name__ == "__main__":
    main()
