"""Benchmark: the tutorial's recipe against this project's trainer, on the same data, in one run.

Prints figures; it is not a test. Ratios are measured against baselines from the same run,
since these machines are shared and noisy.

    python bench/benchmark.py [--images 400] [--epochs 5] [--arch auto] [--skip-flip] [--rss-images 4000]

(a) the tutorial's recipe as written; (b) this project's CLI with its defaults, as a new process
(cold: interpreter start and imports included; warm: the feature cache filled by the cold run);
(c) the fastest single forward pass over the same images this machine can do (the best of the
variants tried: memory layout, BatchNorm folding, batch size). Then: bf16's effect, the feature
pass on a busy machine, peak memory, cold prediction, and what importing costs. Last, the data check
(``python -m core inspect``) on 400 and on 10,000 images: cold, and with the features cached.

    python bench/benchmark.py --only datacheck [--check-sizes 400 10000]   # just the data check figures
    python bench/benchmark.py --only datacheck --images 100000   # the check at scale, on cached synthetic features
    python bench/benchmark.py --only labels   # copies and label suspects against planted truth
    python bench/benchmark.py --only archs [--arch-images 100] [--reference]  # every architecture's feature pass
    python bench/benchmark.py --only recipes [--photos DIR]   # head only vs the fine_tune recipe (bench/recipes.py)

The architectures' table: for each, the frozen feature pass (what a default run spends its time on) as the
trainer runs it (BatchNorm folded, channels_last, its batch size, threads and decoding workers), each in a
process of its own for its peak memory. The figures go to the workspace (``arch_speed.json``, which the
pages' architecture chooser reads as "this machine"); ``--reference`` also writes bench/arch_speed.json,
the figures shipped for machines that never ran it.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

import core  # noqa: F401  first: it sets OMP_WAIT_POLICY before torch loads OpenMP (see core/__init__.py)
from core.data.datasets import Letterbox, ListDataset, build_transform, collate_skipping_unreadable
from core.data.demo import draw_shape
from core.data.split import read_list_file, split_dataset, write_split
from core.models.surgery import adapt_model, trainable_parameters
from core.models.weights import find_weights, resolve_weights
from core.platform.accel import fold_batchnorm, plan_threads, to_channels_last
from core.runs.files import read_records
from core.spec.archs import ARCHITECTURES
from core.spec.records import Features as FeaturesRecord
from core.spec.records import follow


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

    def __init__(self, list_files: list[Path], train: bool):
        rows = (line.rstrip("\n").split("\t") for f in list_files for line in open(f, encoding="utf-8"))
        self.items = [(path, int(label)) for path, label in rows]
        flips = [T.RandomHorizontalFlip(), T.RandomVerticalFlip()] if train else []
        self.transform = T.Compose(flips + [Letterbox(224), T.ToTensor()])

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        return self.transform(Image.open(path).convert("RGB")), label


def recipe(arch: str, weights: str, lists: Path, epochs: int) -> float:
    # The tutorial has no validation split: it trains on the whole training share (train + val) and reports its
    # last epoch's test accuracy, which chooses nothing.
    train_data = DataLoader(RecipeDataset([lists / "train.txt", lists / "val.txt"], True), batch_size=8, shuffle=True,
                            num_workers=4)
    test_data = DataLoader(RecipeDataset([lists / "test.txt"], False), batch_size=8, shuffle=False, num_workers=4)
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


# ----------------------------------------------------------------------------- (b) the project's CLI
def cli(*args, env=None) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "core", *map(str, args)], capture_output=True, text=True,
                            env=env)
    seconds = time.perf_counter() - t
    if result.returncode != 0:
        raise SystemExit(f"the CLI failed: {result.stderr}")
    return seconds, result


def project_run(arch: str, lists: Path, epochs: int, out: Path, cache: Path, *extra) -> tuple[float, object]:
    seconds, _ = cli("train", "--lists", lists, "--arch", arch, "--epochs", epochs, "--out", out,
                     "--cache-dir", cache, *extra)
    return seconds, read_records(out)


def feature_rate(records) -> float:
    features = records.of(FeaturesRecord)
    return sum(f.images for f in features) / max(sum(f.seconds for f in features), 1e-9)


# ----------------------------------------------------------------------------- (c) the limit
def forward_pass(arch: str, samples, *, batch: int, channels_last: bool, fold: bool) -> float:
    """Images per second of one inference pass over ``samples``, decoding included."""
    spec = ARCHITECTURES[arch]
    threads, workers = plan_threads()
    torch.set_num_threads(threads)
    loader = DataLoader(ListDataset(samples, build_transform(spec.transforms())), batch_size=batch,
                        num_workers=workers, collate_fn=collate_skipping_unreadable)
    model = spec.build().eval()
    if fold:
        fold_batchnorm(model)
    if channels_last:
        to_channels_last(model)
    t = time.perf_counter()
    with torch.inference_mode():
        for x, *_ in loader:
            model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    return len(samples) / (time.perf_counter() - t)


VARIANTS = [("plain (batch 8, default layout)", dict(batch=8, channels_last=False, fold=False)),
            ("channels_last, batch 8", dict(batch=8, channels_last=True, fold=False)),
            ("channels_last + folded BN, batch 4", dict(batch=4, channels_last=True, fold=True)),
            ("channels_last + folded BN, batch 8", dict(batch=8, channels_last=True, fold=True)),
            ("channels_last + folded BN, batch 16", dict(batch=16, channels_last=True, fold=True))]


# ----------------------------------------------------------------------------- extras
def busy_loop() -> subprocess.Popen:
    """Another program keeping one core busy, as a browser or a build would."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def run_measured(command: list) -> tuple[str, float]:
    """Run ``command``; its stdout and its peak resident memory in MiB, as the kernel counted it (a wrapper
    process whose only child it is)."""
    wrapper = ("import resource, subprocess, sys; out = subprocess.run(sys.argv[1:], check=True, capture_output=True, "
               "text=True).stdout; print(out); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    result = subprocess.run([sys.executable, "-c", wrapper, *map(str, command)], capture_output=True, text=True,
                            check=True)
    *out, rss = result.stdout.rstrip("\n").splitlines()
    return "\n".join(out), int(rss) / 1024  # ru_maxrss is in KiB


def peak_rss_mb(*args) -> float:
    """Peak resident memory of one CLI process (``python -m core *args``)."""
    return run_measured([sys.executable, "-m", "core", *args])[1]


def cold_seconds(command: list[str], n: int = 3) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def import_costs(top: int = 6) -> list[tuple[float, str]]:
    imports = "import core.cli.main, core.training.run, core.inference.predict"
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", imports],
                            capture_output=True, text=True)
    costs = []
    for line in result.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|(\s*)(\S+)", line)
        if match and len(match.group(2)) <= 3:  # top-level and first-level imports
            costs.append((int(match.group(1)) / 1e6, match.group(3)))
    return sorted(costs, reverse=True)[:top]


def freeze_mode_figures(arch: str, lists: Path, tmp: Path, epochs: int) -> None:
    """Seconds per epoch for each freeze mode (pretrained, no augmentation: the cached modes compute the
    frozen part's output once, then train on it)."""
    for mode in ("head", "last_block", "all"):
        seconds, records = project_run(arch, lists, epochs, tmp / f"mode_{mode}", tmp / "cache-modes",
                                       "--freeze", mode)
        per_epoch = statistics.mean(e.seconds for e in records.epochs)
        once = sum(f.seconds for f in records.of(FeaturesRecord))
        print(f"freeze {mode:10s}: {per_epoch:6.2f} s per epoch" +
              (f" after a {once:.1f} s pass through the frozen part" if once else " (full forward)") +
              f"   test accuracy {records.final.test_acc:.3f}   {records.start.trainable_params:,} trainable "
              f"parameters   ({seconds:.1f} s in all)")


def datacheck_figures(arch: str, tmp: Path, sizes: list[int]) -> None:
    """The data check's seconds: cold (the feature pass, shared with training, dominates) and with the
    features cached (everything else: headers, hashes, neighbours, cross-validation, the map), in this
    process so imports are not counted, plus the peak memory of the cached run as a new process."""
    from core.analysis.datacheck import check_data, load_split
    from core.platform.workspace import cache_dir

    t_imports, _ = timed(_import_check_libraries)
    print(f"data check: importing scikit-learn and cleanlab {t_imports:.2f} s (once per process; not counted below)")
    weights = resolve_weights(ARCHITECTURES[arch])
    for n in sizes:
        data = make_photos(tmp / f"check{n}", n, seed=2)
        t_cold, _ = cli("inspect", "--lists", write_split(split_dataset(data, 0.6, 0), tmp / f"check{n}-lists"),
                        "--arch", arch)
        split = load_split(lists_dir=str(tmp / f"check{n}-lists"))
        t_warm, report = timed(follow, check_data(split, arch=arch, weights=weights, cache_dir=cache_dir()))
        rss = peak_rss_mb("inspect", "--lists", tmp / f"check{n}-lists", "--arch", arch)
        print(f"data check, {n:6d} images: cold CLI {t_cold:6.1f} s (imports and the feature pass included); "
              f"features cached {t_warm:5.2f} s beyond imports [" +
              ", ".join(f"{k} {v:.2f}" for k, v in report.seconds.items() if k != "features") +
              f"]; peak RSS of the cached CLI run {rss:.0f} MB; {len(report.duplicates)} duplicate groups; "
              + (f"baseline {report.baseline.accuracy:.3f}" if report.baseline else "no baseline"))


PHONE_CACHE = Path(os.environ.get("TLD_BENCH_CACHE", Path.home() / ".cache" / "tld-bench"))


def make_phone_photos(n: int) -> tuple[Path, Path]:
    """n photo-like 12-megapixel JPEGs (4032×3024) in two classes, and the same photos at 504×378, written
    once to a cache folder (generating them takes about a second each)."""
    from core.data.demo import phone_photo

    big, small = PHONE_CACHE / f"phone-{n}" / "12mp", PHONE_CACHE / f"phone-{n}" / "504x378"
    done = PHONE_CACHE / f"phone-{n}" / ".complete"
    if not done.exists():
        rng = random.Random(3)
        for k in range(n):
            shape = ("circle", "star")[k % 2]
            for root in (big, small):
                (root / shape).mkdir(parents=True, exist_ok=True)
            photo = phone_photo(shape, rng)
            photo.save(big / shape / f"{k:04d}.jpg", quality=90)
            photo.resize((504, 378), Image.LANCZOS).save(small / shape / f"{k:04d}.jpg", quality=90)
        done.touch()
    return big, small


def phone_figures(arch: str, tmp: Path, n: int) -> None:
    """Real photo sizes: the feature pass, a cold prediction and a thumbnail on 12-megapixel JPEGs against
    the same photos at 504×378, in one run."""
    from core.data.images import thumbnail_jpeg

    t_make, (big, small) = timed(make_phone_photos, n)
    print(f"phone photos: {n} JPEGs of 4032×3024 ({sum(p.stat().st_size for p in big.rglob('*.jpg')) / n / 1e6:.1f} MB "
          f"each) and the same at 504×378 ({t_make:.0f} s to make or find them in {big.parent})")
    sets = {"12 MP": big, "504×378": small}
    rates, accuracy, runs = {}, {}, {}
    for k, (name, root) in enumerate(sets.items()):
        lists = write_split(split_dataset(root, 0.6, 0), tmp / f"phone-lists-{k}")
        _, records = project_run(arch, lists, 1, tmp / f"phone-run-{k}", tmp / f"phone-cache-{k}")
        rates[name], accuracy[name], runs[name] = feature_rate(records), records.final.test_acc, records
    print(f"feature pass: 12 MP {rates['12 MP']:.1f} images/s vs 504×378 {rates['504×378']:.1f} images/s = "
          f"{rates['12 MP'] / rates['504×378']:.2f}× (target ≥ 0.7×); test accuracy {accuracy['12 MP']:.3f} vs "
          f"{accuracy['504×378']:.3f}\n    decoding: {runs['12 MP'].start.decoding}")
    one_big, one_small = sorted((big / "star").iterdir())[0], sorted((small / "star").iterdir())[0]
    t_big = cold_seconds([sys.executable, "-m", "core", "predict", str(tmp / "phone-run-0"), str(one_big)])
    t_small = cold_seconds([sys.executable, "-m", "core", "predict", str(tmp / "phone-run-0"), str(one_small)])
    print(f"cold single-image predict: 12 MP {t_big:.2f} s vs 504×378 {t_small:.2f} s = {t_big / t_small:.2f}× "
          "(target ≤ 1.3×)")
    for name, root in sets.items():
        paths = sorted(root.rglob("*.jpg"))[:20]
        t, _ = timed(lambda: [thumbnail_jpeg(p, 112, square=True) for p in paths])
        print(f"thumbnail (the Dataset page's, 112 px) of a {name} photo: {1000 * t / len(paths):.0f} ms")


def search_figures(arch: str, lists: Path, cache: Path) -> None:
    """The learning-rate finder and the 50-trial head search on the cached features of a finished run
    (the feature pass is the run's; these figures are what comes after it), in this process."""
    from core.spec.config import TrainConfig
    from core.training.lr_find import find_lr
    from core.training.tune import tune_head

    cfg = TrainConfig(arch=arch, weights=resolve_weights(ARCHITECTURES[arch]), lists_dir=str(lists))
    follow(find_lr(cfg, cache_dir=cache, num_it=10))  # imports and loads once, not counted below
    t_find, found = timed(follow, find_lr(cfg, cache_dir=cache))
    t_tune, tuned = timed(follow, tune_head(cfg, cache_dir=cache, trials=50))
    pruned = sum(t.state == "pruned" for t in tuned.trials)
    print(f"learning-rate finder on cached features: {t_find:.2f} s for {len(found.lrs)} steps (suggests "
          f"{found.suggestion:.2g}); head search: {t_tune:.1f} s for 50 trials ({pruned} pruned, {tuned.folds}-fold "
          f"cross-validation on {tuned.train_images} training images, best {100 * tuned.best_score:.1f}%)")


def report_figures(run_dir: Path) -> None:
    """The after-training report of a finished run (python -m core report), in this process after a first
    call has imported what it needs, and the same as a new process."""
    from core.analysis.report import run_report

    run_report(run_dir)  # imports scikit-learn and scipy once
    t_report, report = timed(run_report, run_dir)
    t_cli, _ = cli("report", run_dir)
    c = report.calibration
    print(f"after-training report, {report.tested} test images: {t_report:.2f} s beyond imports "
          f"({t_cli:.1f} s as a new process); ECE {c.ece:.3f} raw, {c.ece_calibrated:.3f} temperature-scaled "
          f"(T = {c.temperature:.2f})")


def _import_check_libraries() -> None:
    import cleanlab.filter  # noqa: F401
    import cleanlab.rank  # noqa: F401
    import sklearn.decomposition  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.manifold  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import sklearn.neighbors  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None, help="images of the main benchmark (default 400); with "
                                                                   "--only datacheck: the scale check's images "
                                                                   "(cached synthetic features)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--arch", default="auto",
                        help="auto: resnet18 if its weights are on disk, else efficientnet_lite0")
    parser.add_argument("--skip-flip", action="store_true", help="leave out (b'), the flip-augmented run")
    parser.add_argument("--rss-images", type=int, default=4000, help="images for the large peak-memory run (0: skip)")
    parser.add_argument("--mode-epochs", type=int, default=3, help="epochs of each freeze-mode run (0: skip)")
    parser.add_argument("--check-sizes", type=int, nargs="*", default=[400, 10000],
                        help="image counts for the data check figures (none: skip)")
    parser.add_argument("--only", choices=["datacheck", "labels", "report", "phone", "search", "archs", "recipes"],
                        help="print only these figures")
    parser.add_argument("--phone-photos", type=int, default=100, help="12-megapixel photos for the phone-photo "
                                                                       "figures (0: skip)")
    parser.add_argument("--arch-images", type=int, default=100, help="images for each architecture's feature pass")
    parser.add_argument("--reference", action="store_true",
                        help="with --only archs: also write bench/arch_speed.json, the figures shipped with the "
                             "project")
    parser.add_argument("--photos", type=Path, help="with --only recipes: a folder of class folders of real photos "
                                                    "(fetched into a cache outside the repo; see docs/benchmark.md)")
    parser.add_argument("--feature-pass", help=argparse.SUPPRESS)  # one architecture's pass, in its own process
    parser.add_argument("--lists", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.feature_pass:
        print(json.dumps(feature_pass(args.feature_pass, Path(args.lists))))
        return

    arch = args.arch
    if arch == "auto":
        arch = "resnet18" if find_weights(ARCHITECTURES["resnet18"]) else "efficientnet_lite0"
    weights = resolve_weights(ARCHITECTURES[arch])
    threads, workers = plan_threads()
    print(f"torch {torch.__version__} · {os.cpu_count()} cores · plan: {threads} threads + {workers} workers · "
          f"arch {arch}\nweights: {weights}")
    from core.models.arch_choice import measured_speeds_file

    speed_file = measured_speeds_file()  # the real workspace, before the figures below move it
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["TLD_WORKSPACE"] = str(tmp / "workspace")
        if args.only == "archs":
            arch_figures(tmp, args.arch_images, speed_file, args.reference)
            return
        if args.only == "datacheck":
            if args.images:
                from datacheck_scale import scale_figures

                scale_figures(arch, PHONE_CACHE, args.images)
            else:
                datacheck_figures(arch, tmp, args.check_sizes)
            return
        if args.only == "recipes":
            from recipes import recipe_figures

            recipe_figures(arch, tmp, args.photos, PHONE_CACHE / "hard-planted")
            return
        if args.only == "labels":
            from datacheck_scale import label_figures

            label_figures(arch, tmp)
            return
        args.images = args.images or 400
        if args.only == "phone":
            phone_figures(arch, tmp, args.phone_photos)
            return
        data = make_photos(tmp / "photos", args.images)
        lists = write_split(split_dataset(data, 0.6, 0), tmp / "lists")
        if args.only in ("report", "search"):
            project_run(arch, lists, args.epochs, tmp / "run", tmp / "cache")
            if args.only == "report":
                report_figures(tmp / "run")
            else:
                search_figures(arch, lists, tmp / "cache")
            return
        samples = [s for name in ("train.txt", "val.txt", "test.txt") for s in read_list_file(lists / name)]
        print(f"data: {args.images} JPEGs of 500×375, 2 classes, 60/40 split; {args.epochs} epochs, batch 8, "
              "lr 1e-3, head only")

        # Three rounds of (c)'s variants (in alternating order), each followed by a cold (b) with an
        # empty cache: the machine's drift weighs on (b) and (c) alike, and medians keep one lucky or
        # unlucky pass from deciding a ratio.
        rounds, colds = [], []
        for r in range(3):
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
            measured = {name: forward_pass(arch, samples, **kw) for name, kw in order}
            rounds.append([measured[name] for name, _ in VARIANTS])
            colds.append(project_run(arch, lists, args.epochs, tmp / f"run_b_cold{r}", tmp / f"cache{r}"))
        rates = [(statistics.median(column), name) for column, (name, _) in zip(zip(*rounds), VARIANTS)]
        for (rate, name), column in zip(rates, zip(*rounds)):
            runs = ", ".join(f"{x:.1f}" for x in column)
            print(f"    (c) variant {name:38s}: {rate:6.1f} images/s   (median of {runs})")
        best_rate, best_name = max(rates)
        t_c = len(samples) / best_rate
        t_b, rec_b = sorted(colds, key=lambda run: run[0])[1]  # the median cold run
        cold_rates = sorted(feature_rate(records) for _, records in colds)
        shutil.copytree(tmp / f"cache{[run[0] for run in colds].index(t_b)}", tmp / "cache")

        t_warm, rec_warm = project_run(arch, lists, args.epochs, tmp / "run_b_warm", tmp / "cache")
        report_figures(tmp / "run_b_warm")
        search_figures(arch, lists, tmp / "cache")
        # the CLI ends with os._exit once its files are closed, so the baseline skips the teardown too
        t_imports = cold_seconds([sys.executable, "-c", "import core.cli.main, core.training.run, os; os._exit(0)"])
        t_a, acc_a = timed(recipe, arch, weights, lists, args.epochs)
        print(f"(a) tutorial recipe               : {t_a:7.1f} s   test accuracy {acc_a:.3f}")
        print(f"(b) project CLI, cold             : {t_b:7.1f} s   test accuracy {rec_b.final.test_acc:.3f}   "
              f"({rec_b.start.feature_path}; interpreter start and imports included)")
        print(f"(b) project CLI, warm cache       : {t_warm:7.1f} s   test accuracy {rec_warm.final.test_acc:.3f}   "
              f"({t_warm - t_imports:.1f} s beyond interpreter start + imports of {t_imports:.1f} s)")
        if not args.skip_flip:
            t_b2, rec_b2 = project_run(arch, lists, args.epochs, tmp / "run_b2", tmp / "cache", "--flip")
            print(f"(b') project CLI + flip           : {t_b2:7.1f} s   test accuracy {rec_b2.final.test_acc:.3f}   "
                  f"({rec_b2.start.feature_path})")
        print(f"(c) fastest forward pass          : {t_c:7.1f} s   ({best_name}, {best_rate:.1f} images/s)")
        b_rate = statistics.median(cold_rates)
        print(f"a/b = {t_a / t_b:.2f} (cold, the median of {', '.join(f'{t:.1f}' for t, _ in colds)} s)   "
              f"b/c = {t_b / t_c:.2f}   b's feature pass {b_rate:.1f} images/s = {b_rate / best_rate:.2f}× (c)'s   "
              f"(cold runs: {', '.join(f'{x:.1f}' for x in cold_rates)} images/s)")
        print(f"    bound: a (b) that only imported and ran (c)'s pass would give a/b = "
              f"{t_a / (t_imports + t_c):.2f} (imports {t_imports:.1f} s + (c) {t_c:.1f} s)")

        t_bf, rec_bf = project_run(arch, lists, args.epochs, tmp / "run_bf16", tmp / "cache", "--precision", "bf16")
        print(f"bf16 (fast, approximate)          : {t_bf:7.1f} s   test accuracy {rec_bf.final.test_acc:.3f}   "
              f"feature pass {feature_rate(rec_bf):.1f} images/s (fp32: {b_rate:.1f})")

        if args.mode_epochs:
            freeze_mode_figures(arch, lists, tmp, args.mode_epochs)

        hog = busy_loop()
        try:
            _, rec_loaded = project_run(arch, lists, 1, tmp / "run_loaded", tmp / "cache-loaded")
        finally:
            hog.kill()
            hog.wait()
        _, rec_quiet = project_run(arch, lists, 1, tmp / "run_quiet", tmp / "cache-quiet")
        quiet, loaded = feature_rate(rec_quiet), feature_rate(rec_loaded)
        print(f"feature pass, quiet vs one busy core beside it: {quiet:.1f} vs {loaded:.1f} images/s "
              f"= {loaded / quiet:.2f}×")

        rss_small = peak_rss_mb("train", "--lists", lists, "--arch", arch, "--epochs", 1, "--out", tmp / "rss1",
                                "--no-cache")
        print(f"peak RSS of a frozen-body run, {len(samples)} images: {rss_small:.0f} MB")
        if args.rss_images:
            big = make_photos(tmp / "many", args.rss_images, seed=1)
            rss_big = peak_rss_mb("train", "--data", big, "--arch", arch, "--epochs", 1, "--out", tmp / "rss2",
                                  "--no-cache")
            print(f"peak RSS of a frozen-body run, {args.rss_images} images: {rss_big:.0f} MB")

        rates = {}
        for nproc in (1, 2):
            out = tmp / f"ddp{nproc}"
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                       "-m", "core", "train", "--lists", str(lists), "--arch", arch, "--epochs", "1",
                       "--freeze", "all", "--out", str(out)]
            subprocess.run(command, capture_output=True, check=True)
            rates[nproc] = read_records(out).epochs[0].images_per_s
        print(f"full forward path, torchrun --nproc 1 vs 2: {rates[1]:.1f} vs {rates[2]:.1f} training images/s "
              f"= {rates[2] / rates[1]:.2f}× (2 processes share the same 2 cores here)")

        image = next((data / "star").iterdir())
        t_torch = cold_seconds([sys.executable, "-c", "import torch"])
        t_predict = cold_seconds([sys.executable, "-m", "core", "predict", str(tmp / "run_b_cold0"), str(image)])
        print(f"cold single-image predict {t_predict:.2f} s vs bare `import torch` {t_torch:.2f} s "
              f"= {t_predict / t_torch:.2f}×")
        print("import costs (cumulative seconds, core.cli.main + core.training.run + core.inference.predict): " +
              ", ".join(f"{name} {seconds:.2f}" for seconds, name in import_costs()))
        datacheck_figures(arch, tmp, args.check_sizes)
        if args.phone_photos:
            phone_figures(arch, tmp, args.phone_photos)


# ----------------------------------------------------------------------------- every architecture
def feature_pass(arch: str, lists: Path) -> dict:
    """One frozen feature pass of ``arch`` over the benchmark's images, as the trainer runs it."""
    from core.data.images import load_jpeg_decoder
    from core.features.cache import compute_frozen_outputs
    from core.platform.accel import inference_batch_size, inference_copy

    spec = ARCHITECTURES[arch]
    samples = [s for name in ("train.txt", "val.txt", "test.txt") for s in read_list_file(lists / name)]
    threads, workers = plan_threads()
    torch.set_num_threads(threads)
    load_jpeg_decoder()
    model, report = adapt_model(arch, 2, freeze="head", seed=0)  # random weights: the same work as real ones
    fast = inference_copy(model)
    batch = inference_batch_size(torch.device("cpu"))
    t = time.perf_counter()
    passes = compute_frozen_outputs(fast, report.head_name, samples, build_transform(spec.transforms()),
                                    device=torch.device("cpu"), batch_size=batch, num_workers=workers)
    for _ in passes:
        pass
    return {"images_per_s": len(samples) / (time.perf_counter() - t), "batch": batch}


def machine_description() -> str:
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{os.cpu_count()} cores{', ' + model if model else ''}; torch {torch.__version__}"


def arch_figures(tmp: Path, images: int, speed_file: Path, reference: bool) -> None:
    """The architectures' table: each pass in a fresh process (its peak memory is its own)."""
    from core.models.arch_choice import REFERENCE_SPEEDS, write_speeds

    data = make_photos(tmp / "arch-photos", images, seed=2)
    lists = write_split(split_dataset(data, 0.6, 0), tmp / "arch-lists")
    rows = {}
    print(f"frozen feature pass per architecture: {images} JPEGs of 500×375, the trainer's batch, layout and "
          "workers, random weights, one process each")
    print(f"{'architecture':20s} {'images/s':>9s} {'s / 100':>8s} {'batch':>6s} {'peak RSS MiB':>13s}")
    for arch in ARCHITECTURES:
        out, rss = run_measured([sys.executable, __file__, "--feature-pass", arch, "--lists", lists])
        row = {**json.loads(out.splitlines()[-1]), "peak_rss_mib": rss}
        rows[arch] = row
        print(f"{arch:20s} {row['images_per_s']:9.1f} {100 / row['images_per_s']:8.1f} {row['batch']:6d} "
              f"{row['peak_rss_mib']:13.0f}")
    machine = machine_description()
    write_speeds(speed_file, machine, rows)
    print(f"written to {speed_file} (the pages' chooser reads it as this machine's figures)")
    if reference:
        write_speeds(REFERENCE_SPEEDS, machine, rows)
        print(f"and to {REFERENCE_SPEEDS} (the figures shipped with the project)")


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


if __name__ == "__main__":
    main()
