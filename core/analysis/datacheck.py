"""Know the data before training: health, duplicates and leakage, an embedding map, label issues and a baseline.

``check_data(split, …)`` is the one entry (the "Check the data" page and ``python -m core inspect`` both call
it). It is a generator: it yields ``Progress`` records through every phase, so a caller shows progress and
stops it by closing the generator, and it returns a ``DataReport``.

Everything after the health section works on the frozen backbone's features: the very tensors a head-only
run trains on, read from and written to the same feature cache under the same keys, so a run right after a
check computes no feature again (and the other way round). Without pretrained weights those sections are
left out, and the report says why: a random body's neighbours mean nothing.

The maintained libraries do the statistics: scikit-learn (PCA, t-SNE, k-NN, logistic regression, stratified
group folds) and cleanlab (confident learning). Memory never grows as n²: similarities are computed a block
of rows at a time and only each image's nearest neighbours are kept.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generator

import numpy as np

from ..data.health import ClassHealth, Flagged, Header, HealthReport, HealthTally, ImageSize, Sample, Unreadable
from ..data.phash import HASH_DISTANCE, close_pairs, hash_images
from ..data.split import Split, read_list_file, read_split, split_dataset
from ..platform.errors import DatasetError, UserError
from ..platform.io import MAX_LIST_BYTES, atomic_write_text, open_regular, parse_json, read_json_file
from ..runs.rundir import RunDir, load_config
from ..spec.archs import get_arch
from ..spec.choices import Freeze
from ..spec.config import DEFAULT_VAL_RATIO, TrainConfig
from ..spec.records import Progress, ProgressMeter
from ..spec.states import Phase

REPORT_VERSION = 2  # 2: groups say which test found them, the threshold says how it was chosen, hard cases
NEAR_FLOOR, NEAR_CEILING = 0.90, 0.995  # the data-derived feature threshold stays within these
FENCE = 3.0  # Tukey's far-out fence: Q1 − 3 × IQR of the log distances to the nearest neighbour
LABEL_METHOD = "low_self_confidence"  # cleanlab's filter for the suspects (measured best: see _label_issues)
EXACT_SEARCH = 20_000  # up to this many images the neighbours are exact (blocked matrix products); above, an index
NEIGHBOURS = 10  # per image, the most similar others considered (bounds the work by the output)
BLOCK_ROWS = 1024  # rows of the similarity matrix computed at once: memory BLOCK_ROWS × n, never n × n
MIN_PER_CLASS = 3  # a class needs this many readable images to take part in the cross-validation
MAX_FOLDS = 5
TSNE_IN_PROCESS = 1500  # up to this many points t-SNE takes under about 2 s; above, it runs beside the progress
CHUNK = 2 * 1024 * 1024  # hashing reads files in 2 MiB pieces


# ----------------------------------------------------------------------------- the report
@dataclass
class Member:
    path: str
    split: str
    label: int


SAME_BYTES, PIXELS, FEATURES = "same bytes", "perceptual hash", "features"
TESTS = (SAME_BYTES, PIXELS, FEATURES)  # the tests that join copies, in the order a group names them


@dataclass
class DuplicateGroup:
    kind: str  # "exact" (the same bytes) or "near" (a perceptual hash or backbone features found them alike)
    similarity: float  # the weakest feature link that joined the group (1.0: no feature link)
    members: list[Member]
    found_by: str = ""  # the tests that joined it: "same bytes", "perceptual hash", "features", joined by " + "

    @property
    def leak(self) -> bool:
        """Copies on both sides of the split: the test accuracy counts images that were trained on."""
        return len({m.split for m in self.members}) > 1

    @property
    def conflict(self) -> bool:
        """Copies filed under different classes: at least one label is wrong."""
        return len({m.label for m in self.members}) > 1


@dataclass
class LabelIssue:
    path: str
    split: str
    given: str
    suggested: str
    score: float  # cleanlab's label quality (self-confidence: the probability of the given class); low: suspect
    confidence: float  # the probability of the suggested class
    given_label: int
    suggested_label: int
    found_by: str = "confident learning"  # or "prediction disagrees" (cleanlab's predicted_neq_given)


@dataclass
class Baseline:
    accuracy: float  # mean over folds of a logistic-regression head on the features
    std: float
    folds: int
    knn_accuracy: float
    knn_std: float
    images: int
    classes: int


@dataclass
class MapPoint:
    path: str
    x: float
    y: float
    label: int
    split: str


@dataclass
class DataReport:
    source: str
    arch: str
    weights: str | None
    classes: list[str]
    train: int
    test: int
    health: HealthReport
    duplicates: list[DuplicateGroup] = field(default_factory=list)
    label_issues: list[LabelIssue] = field(default_factory=list)  # confident learning: the list to act on
    hard_cases: list[LabelIssue] = field(default_factory=list)  # the model disagrees, confident learning does not
    baseline: Baseline | None = None
    embedding: list[MapPoint] = field(default_factory=list)
    embedding_method: str = ""
    embedding_total: int = 0  # the images the map stands for (it draws a sample of them beyond MAP_POINTS)
    notes: list[str] = field(default_factory=list)  # why a section is missing or partial
    too_small: list[str] = field(default_factory=list)  # classes left out of label checking and the baseline
    near_threshold: float = NEAR_CEILING
    threshold_rule: str = ""  # how near_threshold was chosen (from the data, or given)
    hash_distance: int = HASH_DISTANCE
    features_from_cache: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    val: int = 0  # validation images (part of the training share; reports stored before it say 0)
    fingerprint: str = ""  # data_fingerprint: the images, labels, architecture and weights
    split_fingerprint: str = ""  # which side each image was on
    created: float = field(default_factory=time.time)

    @property
    def leaks(self) -> list[DuplicateGroup]:
        return [g for g in self.duplicates if g.leak]

    @property
    def conflicts(self) -> list[DuplicateGroup]:
        return [g for g in self.duplicates if g.conflict]

    @property
    def leaked_test_images(self) -> list[str]:
        """Test images with a copy in the training split."""
        return sorted({m.path for g in self.leaks for m in g.members if m.split == "test"})

    def leak_effect(self) -> str | None:
        """What the leaks do to the test figure, in one sentence (None: no leak)."""
        leaked = len(self.leaked_test_images)
        if not leaked:
            return None
        share = leaked / max(self.test, 1)
        return (f"{leaked} of {self.test} test images ({100 * share:.1f}%) have a copy in the training split. A model "
                f"can answer those from memory, so the test accuracy can overstate what it does on new images by up "
                f"to {100 * share:.1f} points. Re-split keeping each duplicate group on one side to measure honestly.")

    def to_json(self) -> dict:
        """The report for scripts: the keys ``python -m core inspect --json`` promises, and the details."""
        def group(g: DuplicateGroup) -> list[dict]:
            return [asdict(m) for m in g.members]

        health = asdict(self.health)
        health["imbalance"] = self.health.imbalance
        return {
            "version": REPORT_VERSION, "source": self.source, "arch": self.arch, "weights": self.weights,
            "classes": self.classes, "train": self.train, "val": self.val, "test": self.test, "created": self.created,
            "fingerprint": self.fingerprint, "split_fingerprint": self.split_fingerprint,
            "near_threshold": self.near_threshold, "threshold_rule": self.threshold_rule,
            "hash_distance": self.hash_distance,
            "features_from_cache": self.features_from_cache, "seconds": self.seconds, "notes": self.notes,
            "too_small": self.too_small,
            "health": health,
            "duplicates": [group(g) for g in self.duplicates],
            "duplicate_groups": [{"kind": g.kind, "similarity": g.similarity, "found_by": g.found_by, "leak": g.leak,
                                  "conflict": g.conflict, "members": group(g)} for g in self.duplicates],
            "leaks": [group(g) for g in self.leaks],
            "leak_effect": self.leak_effect(),
            "label_issues": [asdict(i) for i in self.label_issues],
            "hard_cases": [asdict(i) for i in self.hard_cases],
            "baseline": asdict(self.baseline) if self.baseline else None,
            "embedding": [asdict(p) for p in self.embedding],
            "embedding_method": self.embedding_method, "embedding_total": self.embedding_total,
        }

    @classmethod
    def from_json(cls, data: dict) -> "DataReport":
        """A stored report back; DatasetError when it is damaged or from another version."""
        try:
            if data.get("version") != REPORT_VERSION:
                raise DatasetError(f"the stored data check was made by another version of this app (report format "
                                   f"{str(data.get('version'))[:10]}, this one writes {REPORT_VERSION}); run the check "
                                   "again")
            h = data["health"]
            health = HealthReport([ClassHealth(**c) for c in h["classes"]], dict(h["formats"]), dict(h["modes"]),
                                  [ImageSize(**s) for s in h["sizes"]], [Flagged(**f) for f in h["small"]],
                                  [Flagged(**f) for f in h["converted"]], [Unreadable(**u) for u in h["unreadable"]],
                                  int(h["input_size"]), list(h["warnings"]))
            groups = [DuplicateGroup(g["kind"], float(g["similarity"]), [Member(**m) for m in g["members"]],
                                     str(g["found_by"])) for g in data["duplicate_groups"]]
            return cls(
                source=str(data["source"]), arch=str(data["arch"]), weights=data["weights"],
                classes=[str(c) for c in data["classes"]], train=int(data["train"]), test=int(data["test"]),
                health=health, duplicates=groups, label_issues=[LabelIssue(**i) for i in data["label_issues"]],
                hard_cases=[LabelIssue(**i) for i in data["hard_cases"]],
                baseline=Baseline(**data["baseline"]) if data["baseline"] else None,
                embedding=[MapPoint(**p) for p in data["embedding"]], embedding_method=str(data["embedding_method"]),
                embedding_total=int(data["embedding_total"]),
                notes=[str(n) for n in data["notes"]], too_small=[str(c) for c in data["too_small"]],
                near_threshold=float(data["near_threshold"]), threshold_rule=str(data["threshold_rule"]),
                hash_distance=int(data["hash_distance"]), features_from_cache=bool(data["features_from_cache"]),
                seconds={str(k): float(v) for k, v in data["seconds"].items()}, fingerprint=str(data["fingerprint"]),
                split_fingerprint=str(data["split_fingerprint"]), created=float(data["created"]),
                val=int(data.get("val", 0)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DatasetError(f"the stored data check is damaged ({type(exc).__name__}: {str(exc)[:100]}); "
                               "run the check again") from None


# ----------------------------------------------------------------------------- where reports live
def data_fingerprint(split: Split, arch: str, weights: str | None,
                     also: list[tuple[str, int]] | tuple = ()) -> str:
    """Names a check: the images and their labels (whichever side they are on), the architecture and the
    weights file. A run finds the check of its data by it, whatever its split (``also``: images a run left out)."""
    digest = hashlib.sha256(json.dumps([arch, str(weights) if weights else None, split.classes]).encode())
    for path, label in sorted([*split.train, *split.val, *split.test, *also]):
        digest.update(f"{label}\t{path}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


def split_fingerprint(split: Split) -> str:
    """Which side each image is on: a check's leakage figures hold for this split only."""
    digest = hashlib.sha256()
    for side, samples in (("train", [*split.train, *split.val]), ("test", split.test)):
        for path, label in samples:
            digest.update(f"{side}\t{label}\t{path}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


def report_path(folder: str | os.PathLike, fingerprint: str) -> Path:
    return Path(folder) / f"{fingerprint}.json"


def save_report(report: DataReport, folder: str | os.PathLike) -> Path:
    path = report_path(folder, report.fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report.to_json(), ensure_ascii=False))
    return path


def load_report(folder: str | os.PathLike, fingerprint: str) -> DataReport | None:
    """The stored check of these data, or None; DatasetError when the file is there but damaged."""
    path = report_path(folder, fingerprint)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"the stored data check cannot be read ({exc}); run the check again") from None
    try:
        data = parse_json(text)
    except ValueError:
        raise DatasetError("the stored data check is damaged (not JSON: half-written?); run the check again") from None
    if not isinstance(data, dict):
        raise DatasetError("the stored data check is damaged (not a report); run the check again")
    return DataReport.from_json(data)


def read_path_list(path: str | os.PathLike) -> list[str]:
    """Image paths from a file: one per line, or the label-issue CSV this module writes (its ``path`` column)."""

    try:
        with open_regular(path, MAX_LIST_BYTES) as f:
            text = f.read().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read the path list '{path}' ({exc})") from None
    lines = text.splitlines()
    if lines and lines[0].split(",")[0].strip() == "path":
        try:
            rows = list(csv.DictReader(lines))  # a field over csv's limit (128 KiB) is an error, not a crash
        except csv.Error as exc:
            raise DatasetError(f"the path list '{path}' is not a CSV of this program ({exc})") from None
        return [row["path"] for row in rows if isinstance(row.get("path"), str) and row["path"]]
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def duplicate_groups_from_json(path: str | os.PathLike) -> list[list[str]]:
    """The duplicate groups of a report that ``inspect --json`` wrote (for ``--keep-together``)."""
    try:
        data = read_json_file(path)
        groups = [[str(m["path"]) for m in group] for group in data["duplicates"]]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"'{path}' is not a report of `python -m core inspect --json` ({type(exc).__name__}: "
                           f"{str(exc)[:80]})") from None
    return groups


def label_issues_csv(issues: list[LabelIssue]) -> str:

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["path", "split", "given", "suggested", "score", "confidence", "found_by"])
    for i in issues:
        writer.writerow([i.path, i.split, i.given, i.suggested, f"{i.score:.4f}", f"{i.confidence:.4f}", i.found_by])
    return out.getvalue()


# ----------------------------------------------------------------------------- exact duplicates
def _sha256(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    except OSError:  # deleted while the check runs: no longer anyone's duplicate
        return None
    return digest.hexdigest()


def _exact_groups(headers: dict[str, Header]) -> Generator[Progress, None, list[list[str]]]:
    """Paths with the same bytes: only files of equal size are hashed. Yields Progress; returns [[path, …]]."""
    by_size: dict[int, list[str]] = defaultdict(list)
    for path, header in headers.items():
        by_size[header.bytes].append(path)
    candidates = [p for paths in by_size.values() if len(paths) > 1 for p in paths]
    meter = ProgressMeter(Phase.HASHES, len(candidates), split="all")
    yield meter.first()
    by_hash: dict[str, list[str]] = defaultdict(list)
    for path in candidates:
        digest = _sha256(path)
        if digest:
            by_hash[digest].append(path)
        record = meter.advance(1)
        if record:
            yield record
    return [paths for paths in by_hash.values() if len(paths) > 1]


# ----------------------------------------------------------------------------- near duplicates
class _Links:
    """Pairs of sample positions that are copies of each other, each with the test that found it (a position in
    ``TESTS``) and, for feature links, the similarity. The groups of copies are the connected components of these
    links (scipy's csgraph); a group's similarity is its weakest feature link."""

    def __init__(self, n: int):
        self.n = n
        self._rows: list[np.ndarray] = []
        self._cols: list[np.ndarray] = []
        self._similarity: list[np.ndarray] = []
        self._tests: list[np.ndarray] = []

    def add(self, rows, cols, similarity, test: str) -> None:
        self._rows.append(np.asarray(rows, dtype=np.int64).ravel())
        self._cols.append(np.asarray(cols, dtype=np.int64).ravel())
        self._similarity.append(np.broadcast_to(np.asarray(similarity, dtype=np.float64),
                                                self._rows[-1].shape).ravel())
        self._tests.append(np.full(len(self._rows[-1]), TESTS.index(test), dtype=np.int64))

    def _edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not self._rows:
            empty = np.zeros(0, np.int64)
            return empty, empty, np.zeros(0), empty
        return (np.concatenate(self._rows), np.concatenate(self._cols), np.concatenate(self._similarity),
                np.concatenate(self._tests))

    def group_ids(self) -> np.ndarray:
        """The group of every position (a position with no link is a group of its own)."""
        # deferred: scipy's submodules take a while to import; only this computation needs them
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        rows, cols, _, _ = self._edges()
        graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(self.n, self.n))
        return connected_components(graph, directed=False)[1]

    def components(self, exact_ids: np.ndarray | None = None) -> tuple[dict[int, list[int]], np.ndarray, np.ndarray]:
        """group id → its positions for every group of two or more, every group's weakest feature link (1.0: none)
        and the tests that joined it (a bit per position in ``TESTS``). ``exact_ids``: each position's group of
        identical files (-1: none); any link inside one counts as "same bytes" only (identical files are also
        alike by hash and features, which says nothing more). Work by the groups found, not a pass over images."""
        ids = self.group_ids()
        rows, cols, similarity, tests = self._edges()
        if exact_ids is not None:
            inside = (exact_ids[rows] >= 0) & (exact_ids[rows] == exact_ids[cols])
            tests = np.where(inside, TESTS.index(SAME_BYTES), tests)
            similarity = np.where(inside, 1.0, similarity)
        weakest = np.ones(self.n)
        by_features = tests == TESTS.index(FEATURES)
        np.minimum.at(weakest, ids[rows[by_features]], similarity[by_features])
        found_by = np.zeros(self.n, dtype=np.int64)
        np.bitwise_or.at(found_by, ids[rows], 1 << tests)
        sizes = np.bincount(ids, minlength=1)
        order, ends = np.argsort(ids, kind="stable"), np.cumsum(sizes)
        members = {int(g): order[ends[g] - sizes[g]:ends[g]].tolist() for g in np.flatnonzero(sizes > 1)}
        return members, weakest, found_by


def _top_neighbours(features: np.ndarray) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """Every image's ``NEIGHBOURS`` most similar others by cosine: (similarities (n, k), their positions (n, k)),
    most similar first. Exact up to ``EXACT_SEARCH`` images (a block of rows at a time); above, through an index
    (``_indexed_neighbours``), never n × n. Yields Progress."""
    n = len(features)
    meter = ProgressMeter(Phase.NEIGHBOURS, n, split="all")
    yield meter.first()
    k = min(NEIGHBOURS, n - 1)
    if k < 1:
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    if n > EXACT_SEARCH:
        return (yield from _indexed_neighbours(features, k, meter))
    # deferred: this module is used without torch (the split, listing runs, --help); importing it costs seconds
    import torch

    x = torch.nn.functional.normalize(torch.as_tensor(features, dtype=torch.float32), dim=1)
    values, columns = [], []
    for start in range(0, n, BLOCK_ROWS):
        block = x[start:start + BLOCK_ROWS] @ x.T
        block[torch.arange(len(block)), torch.arange(start, start + len(block))] = -2.0  # not its own neighbour
        top = block.topk(k, dim=1)
        values.append(top.values.numpy())
        columns.append(top.indices.numpy())
        record = meter.advance(len(block))
        if record:
            yield record
    return np.concatenate(values), np.concatenate(columns).astype(np.int64)


INDEX_DIMENSIONS = 128  # the index searches the features' first principal components (cosine kept to ~0.01)


def _indexed_neighbours(features: np.ndarray, k: int, meter: ProgressMeter
                        ) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """Approximate neighbours of many images: PCA to ``INDEX_DIMENSIONS``, then faiss's inverted-file index (about
    4·√n cells, 16 searched per query), a block of queries at a time. Near copies sit in the same cell as their
    original, so the close pairs that matter are found; similarities are then recomputed exactly on the full
    features for the pairs kept."""
    n = len(features)
    reduced, index = yield from _in_thread(_built_index, features, phase=Phase.NEIGHBOURS)
    columns = np.zeros((n, k), np.int64)
    step = BLOCK_ROWS * 4
    for start in range(0, n, step):
        _, found = index.search(reduced[start:start + step], k + 1)
        rows = np.arange(start, start + len(found))[:, None]
        unusable = (found == rows) | (found < 0)  # the image itself, or no more candidates in its cells
        order = np.argsort(unusable, axis=1, kind="stable")  # usable ones first, in the index's order
        columns[start:start + len(found)] = np.where(np.take_along_axis(unusable, order, 1), -1,
                                                     np.take_along_axis(found, order, 1))[:, :k]
        record = meter.advance(len(found))
        if record:
            yield record
    return _exact_similarities(features, columns)


def _built_index(features: np.ndarray):
    """The features' first ``INDEX_DIMENSIONS`` principal components, unit length, and faiss's inverted-file index
    over them (about 4·√n cells, 16 searched per query)."""
    # deferred: faiss loads a large native library; only a check this large needs it
    import faiss

    reduced = _principal_components(features, INDEX_DIMENSIONS)
    faiss.normalize_L2(reduced)
    n, d = reduced.shape
    cells = int(4 * np.sqrt(n))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT)
    sample = np.sort(np.random.default_rng(0).choice(n, size=min(n, 40 * cells), replace=False))  # faiss asks 39
    index.train(reduced[sample])
    index.add(reduced)
    index.nprobe = 16
    return reduced, index


def _exact_similarities(features: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cosine of every image with each of its candidate neighbours (-1 in ``columns``: none, similarity -2),
    on the full features, a block of rows at a time (memory: a block × k × d); sorted most similar first."""
    norms = np.empty(len(features), np.float32)
    for start in range(0, len(features), 8192):  # np.linalg.norm(axis=1) squares the whole array into a copy
        block = features[start:start + 8192]
        norms[start:start + 8192] = np.sqrt(np.einsum("nd,nd->n", block, block))
    norms = np.maximum(norms, 1e-12)
    values = np.full(columns.shape, -2.0, np.float32)
    for start in range(0, len(features), 2048):
        block = columns[start:start + 2048]
        safe = np.where(block >= 0, block, 0)
        dots = np.einsum("nd,nkd->nk", features[start:start + 2048], features[safe])
        cosine = dots / norms[start:start + 2048, None] / norms[safe]
        values[start:start + 2048] = np.where(block >= 0, cosine, -2.0)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(values, order, 1), np.take_along_axis(columns, order, 1)


def near_threshold_from(nearest: np.ndarray) -> tuple[float, str]:
    """The feature similarity above which two images are near copies, from these data: a pair must be a far
    outlier among every image's distance to its nearest neighbour (Tukey's far-out fence, Q1 − 3 × IQR, on the
    log of 1 − cosine), kept within [NEAR_FLOOR, NEAR_CEILING]. Photos whose neighbours are spread out get a lower
    threshold; data whose images all look alike to the backbone (the synthetic demo) get a higher one."""
    distances = np.log(np.clip(1.0 - nearest.astype(np.float64), 1e-6, None))
    q1, q3 = np.percentile(distances, [25, 75])
    fence = float(1.0 - np.exp(q1 - FENCE * (q3 - q1)))
    threshold = round(min(max(fence, NEAR_FLOOR), NEAR_CEILING), 4)
    median = float(np.median(nearest))
    bound = "" if threshold == round(fence, 4) else f", kept within {NEAR_FLOOR:g}–{NEAR_CEILING:g} (the fence is " \
                                                     f"{fence:.3f})"
    return threshold, (f"from the data: far above the {len(nearest):,} images' nearest-neighbour similarities "
                       f"(median {median:.3f}; Tukey's far-out fence on the log distance{bound})")


def _near_links(values: np.ndarray, columns: np.ndarray, threshold: float, links: _Links) -> None:
    rows, ranks = (values >= threshold).nonzero()
    links.add(rows, columns[rows, ranks], values[rows, ranks].astype(np.float64), FEATURES)


def _hash_links(readable: list[Sample], cache_dir) -> Generator[Progress, None, list[tuple[str, str]]]:
    """Pairs of paths whose perceptual hashes are within ``HASH_DISTANCE`` bits. Yields Progress."""
    codes, positions = yield from hash_images([s.path for s in readable], cache_dir)
    rows, cols, _ = (yield from _in_thread(close_pairs, codes, phase=Phase.PERCEPTUAL)) if len(codes) > 20_000 \
        else close_pairs(codes)
    return [(readable[positions[a]].path, readable[positions[b]].path) for a, b in zip(rows.tolist(), cols.tolist())]


# ----------------------------------------------------------------------------- features
def _features(split: Split, cfg: TrainConfig, cache_dir) -> Generator[Progress, None, tuple]:
    """The head's input for every readable image of both splits, by the extractor a run of ``cfg`` uses (the
    same cache: a run after the check computes no feature, nor a check after a run).

    Yields Progress; returns (features (n, d) float32, samples in the same order, whether all came from the
    cache)."""
    # deferred: the extractor imports torch; reading a stored report (`split --keep-together`) needs none of it
    from ..features.extractor import FeatureExtractor

    extractor = FeatureExtractor.build(cfg, len(split.classes), cache_dir=cache_dir)
    # validation images are the training share's: on the "train" side for leaks and the baseline
    lists = {"train": split.train, "val": split.val, "test": split.test}
    extracted = yield from extractor.extract(lists)
    from_disk = all(part.from_disk for part in extracted.values())
    present = [name for name, part in extracted.items() if len(part.features.labels)]  # (0, d) has no shape
    rows = sum(len(extracted[name].features.labels) for name in present)
    width = int(np.prod(extracted[present[0]].features.features.shape[1:])) if present else 0
    features, kept, at = np.empty((rows, width), np.float32), [], 0
    for name in present:  # one list at a time into one array, each list's tensor let go once copied
        found = extracted.pop(name).features
        features[at:at + len(found.labels)] = found.features.flatten(1).float().numpy()
        at += len(found.labels)
        side = "test" if name == "test" else "train"
        kept += [Sample(lists[name][i][0], lists[name][i][1], side) for i in found.indices.tolist()]
        del found
    return features, kept, from_disk


# ----------------------------------------------------------------------------- cross-validation
def _cross_validate(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, folds: int,
                    trainable: np.ndarray | None = None, neighbours: np.ndarray | None = None
                    ) -> Generator[Progress, None, tuple]:
    """Out-of-fold class probabilities of a logistic-regression head, and per-fold accuracies of it and of
    k-NN. Copies share a group, so none is ever in the training folds of its own copy. Yields Progress.

    The probabilities (the label check, which may look at every image) come from heads fitted on all the
    fold's other images. The accuracies (the baseline: what a head-only run should reach) come from heads
    fitted on ``trainable`` rows alone (the training share: train and validation) and are measured on those
    alone, so the baseline never reads a test label. ``neighbours``: each row's nearest rows by cosine (-1: none),
    already found for the near copies; given, k-NN votes among those in the fold's training rows instead of
    searching again (at scale, where a search per fold would cost minutes)."""
    # deferred: scikit-learn takes about a second to import; only this section needs it
    from sklearn.neighbors import KNeighborsClassifier

    n_classes = int(labels.max()) + 1
    oof = np.zeros((len(labels), n_classes))
    linear, knn = [], []
    meter = ProgressMeter(Phase.FOLDS, folds, split="all")
    yield meter.first()
    trainable = np.ones(len(labels), dtype=bool) if trainable is None else trainable
    at_scale = len(labels) > EXACT_SEARCH
    for fit_idx, held_idx in _fold_indices(labels, groups, folds, at_scale):
        fit_train, judged = fit_idx[trainable[fit_idx]], held_idx[trainable[held_idx]]
        # At scale one head per fold, on the training share (tens of thousands of images are plenty); below, the
        # label check's head also learns from the fold's test images, and the baseline's does not.
        baseline = _fitted_head(features[fit_train], labels[fit_train]) if at_scale and len(fit_train) else None
        head = baseline or _fitted_head(features[fit_idx], labels[fit_idx])
        oof[np.ix_(held_idx, head.classes_)] = head.predict_proba(features[held_idx])
        if len(judged) and len(np.unique(labels[fit_train])) >= 2:
            if baseline is None:
                baseline = head if trainable.all() else _fitted_head(features[fit_train], labels[fit_train])
            linear.append(float((baseline.predict(features[judged]) == labels[judged]).mean()))
            if neighbours is None:
                vote = KNeighborsClassifier(n_neighbors=min(5, len(fit_train)), metric="cosine")
                predicted = vote.fit(features[fit_train], labels[fit_train]).predict(features[judged])
            else:
                predicted = _knn_from_lists(neighbours[judged], fit_train, labels, n_classes)
            knn.append(float((predicted == labels[judged]).mean()))
        record = meter.advance(1)
        if record:
            yield record
    return oof, linear, knn


def _fold_indices(labels: np.ndarray, groups: np.ndarray, folds: int, at_scale: bool):
    """(fit rows, held rows) of each fold, every group of copies on one side. Below scale scikit-learn's
    StratifiedGroupKFold; at scale (its Python loop over groups takes minutes at 100,000) StratifiedKFold over the
    groups, each labelled by its first image, which is the same thing when nearly every group is one image."""
    # deferred: scikit-learn takes about a second to import; only this section needs it
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if not at_scale:
        yield from StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=0).split(labels, labels, groups)
        return
    ids, first = np.unique(groups, return_index=True)
    fold_of_group = np.zeros(len(ids), dtype=np.int64)
    for k, (_, held) in enumerate(StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
                                  .split(first, labels[first])):
        fold_of_group[held] = k
    fold = fold_of_group[np.searchsorted(ids, groups)]
    for k in range(folds):
        yield np.flatnonzero(fold != k), np.flatnonzero(fold == k)


def _knn_from_lists(candidates: np.ndarray, fit_rows: np.ndarray, labels: np.ndarray, n_classes: int,
                    k: int = 5) -> np.ndarray:
    """Majority vote of each row's first ``k`` candidates that are in ``fit_rows`` (ties: the nearer class)."""
    allowed = np.zeros(len(labels), dtype=bool)
    allowed[fit_rows] = True
    usable = (candidates >= 0) & allowed[np.where(candidates >= 0, candidates, 0)]
    rank = np.cumsum(usable, axis=1)
    voting = usable & (rank <= k)
    votes = np.zeros((len(candidates), n_classes))
    rows = np.nonzero(voting)[0]
    weight = 1.0 + 1e-3 * (k - rank[voting])  # a nearer neighbour breaks a tie
    np.add.at(votes, (rows, labels[candidates[voting]]), weight)
    return votes.argmax(axis=1)


def _fitted_head(x: np.ndarray, y: np.ndarray):
    """The linear head the check cross-validates: standardised features, L2-regularised logistic regression."""
    # deferred: scikit-learn takes about a second to import; only this section needs it
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, C=0.1)).fit(x, y)


def _label_issues(oof: np.ndarray, labels: np.ndarray, samples: list[Sample], names: list[str]
                  ) -> tuple[list[LabelIssue], list[LabelIssue]]:
    """cleanlab over the out-of-fold probabilities: (suspects, hard cases), each most suspect first by cleanlab's
    label quality score (self-confidence: the given class's probability).

    Suspects are ``find_label_issues(filter_by=LABEL_METHOD)``: as many images as confident learning estimates are
    mislabelled, those with the lowest self-confidence. Of cleanlab's filters it scored best on planted flips
    (bench/benchmark.py --only labels prints every filter's precision and recall and cleanlab's standalone
    CleanLearning; docs/data-check.md gives the figures). Hard cases are the images whose out-of-fold
    prediction is another class but which confident learning does not count as mislabelled
    (``predicted_neq_given`` less the suspects): atypical photos of their class as often as wrong labels, so they
    are shown apart, to look at rather than to act on."""
    # deferred: cleanlab (with scikit-learn) takes about a second to import; only this section needs it
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    confident = set(find_label_issues(labels, oof, filter_by=LABEL_METHOD, n_jobs=1).nonzero()[0].tolist())
    disagree = set(find_label_issues(labels, oof, filter_by="predicted_neq_given", n_jobs=1).nonzero()[0].tolist())
    scores = get_label_quality_scores(labels, oof)

    def listed(found: set[int], rule: str) -> list[LabelIssue]:
        issues = []
        for i in sorted(found, key=lambda i: (scores[i], samples[i].path)):
            suggested = int(oof[i].argmax())
            if suggested == labels[i]:  # confident learning may flag one whose best guess is its own class
                suggested = int(np.argsort(oof[i])[-2])
            issues.append(LabelIssue(samples[i].path, samples[i].split, names[labels[i]], names[suggested],
                                     float(scores[i]), float(oof[i, suggested]), int(labels[i]), suggested, rule))
        return issues

    return listed(confident, "confident learning"), listed(disagree - confident, "prediction disagrees")


# ----------------------------------------------------------------------------- the map
def _in_thread(fn, *args, phase: Phase = Phase.MAP) -> Generator[Progress, None, Any]:
    """Run ``fn`` beside the caller, yielding a Progress tick every half second so the page can redraw and
    Stop; returns its result. A stopped caller leaves the thread to finish on its own (its result is dropped)."""
    result: dict = {}

    def work():
        try:
            result["value"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller
            result["error"] = exc

    thread = threading.Thread(target=work, daemon=True, name="datacheck-map")
    thread.start()
    t0 = time.time()
    while thread.is_alive():
        thread.join(0.5)
        yield Progress(phase=phase, done=0, total=1, images_per_s=0.0, split=f"{time.time() - t0:.0f} s")
    if "error" in result:
        raise result["error"]
    return result["value"]


MAP_POINTS = 5000  # a map draws at most this many images (a browser draws them smoothly; t-SNE takes ~8 s)


def _map_sample(n: int) -> np.ndarray:
    """The images the map draws: all up to ``MAP_POINTS``, else a seeded random sample of that many (sorted). The
    map is computed on the sample itself: t-SNE's cost grows with the points, and only the drawn ones are seen.
    (Measured on 5,000 points of 50 components, 2 cores: scikit-learn's Barnes-Hut t-SNE 7.5 s, openTSNE 11.3 s.)"""
    if n <= MAP_POINTS:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size=MAP_POINTS, replace=False))


def _project(features: np.ndarray) -> tuple[np.ndarray, str]:
    # deferred: scikit-learn takes about a second to import; only this section needs it
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n, d = features.shape
    components = min(50, n, d)
    reduced = PCA(n_components=components, random_state=0).fit_transform(features)
    if n < 10:  # too few for t-SNE's neighbourhoods
        xy = reduced[:, :2] if components >= 2 else np.column_stack([reduced[:, 0], np.zeros(n)])
        return xy, "PCA (first two components; too few images for t-SNE)"
    perplexity = float(min(30, (n - 1) / 3))
    # 500 iterations (scikit-learn's default is 1000): the map settles well before, at half the time.
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0, max_iter=500).fit_transform(reduced)
    return xy, f"t-SNE (perplexity {perplexity:.3g}) of the first {components} PCA components"


# ----------------------------------------------------------------------------- the whole check
def _samples(split: Split) -> list[Sample]:
    return ([Sample(path, label, "train") for path, label in [*split.train, *split.val]]
            + [Sample(path, label, "test") for path, label in split.test])


def _timed(seconds: dict, name: str, t0: float) -> float:
    now = time.time()
    seconds[name] = round(now - t0, 3)
    return now


def check_data(split: Split, *, arch: str, weights: str | None, input_size: int | None = None,
               cache_dir: str | os.PathLike | None = None, near_threshold: float | None = None,
               device: str = "auto", source: str = "", letterbox: bool = False
               ) -> Generator[Progress, None, DataReport]:
    """Check ``split`` (from ``split_dataset`` or ``read_split``) for everything that makes a fine-tune
    disappoint. Yields Progress records; returns the DataReport. ``weights`` None: no feature sections.
    ``near_threshold``: the feature similarity of near copies; None chooses it from the data
    (``near_threshold_from``). ``letterbox``: the images are preprocessed as a run with the letterbox would (the
    features are that run's)."""
    if near_threshold is not None and not 0.5 <= near_threshold <= 1.0:
        raise DatasetError(f"the near-duplicate threshold must be from 0.5 to 1, got {near_threshold}")
    if input_size is None:
        input_size = get_arch(arch).transforms().crop_size[0]
    seconds: dict[str, float] = {}
    t0 = time.time()
    samples = _samples(split)
    tally = yield from _read_headers(split, samples, input_size)
    report = DataReport(source or split.root, arch, weights, list(split.classes), len(split.train), len(split.test),
                        tally.report(), near_threshold=near_threshold or NEAR_CEILING,
                        threshold_rule="given" if near_threshold is not None else "",
                        fingerprint=data_fingerprint(split, arch, weights), split_fingerprint=split_fingerprint(split),
                        val=len(split.val))
    t0 = _timed(seconds, "health", t0)
    readable = [s for s in samples if s.path in tally.headers]
    if not readable:
        report.notes.append("no image could be read, so nothing else can be checked")
        report.seconds = seconds
        return report
    report.notes += _degenerate_notes(split, readable)

    exact = yield from _exact_groups(tally.headers)
    t0 = _timed(seconds, "exact duplicates", t0)
    pixel_copies = yield from _hash_links(readable, cache_dir)
    t0 = _timed(seconds, "perceptual hashes", t0)
    if weights is None:
        report.notes.append("no pretrained weights for this architecture: near duplicates by features, the map, label "
                            "issues and the baseline need a pretrained backbone (a random one's neighbours mean "
                            "nothing); exact and pixel-level copies are still found")
        report.duplicates = _build_groups(readable, exact, pixel_copies, None)
        report.seconds = seconds
        return report

    cfg = TrainConfig(arch=arch, weights=weights, freeze=Freeze.HEAD, device=device, letterbox=letterbox)
    yield from _feature_sections(report, split, cfg, cache_dir, readable, (exact, pixel_copies), seconds)
    report.seconds = seconds
    return report


def _read_headers(split: Split, samples: list[Sample], input_size: int) -> Generator[Progress, None, HealthTally]:
    """Every image's header (no decode), tallied for the health section."""
    tally = HealthTally(split.classes, input_size,
                        [Unreadable(s.path, s.reason) for s in split.skipped if s.unreadable])
    meter = ProgressMeter(Phase.HEADERS, len(samples), split="all")
    yield meter.first()
    for sample in samples:
        tally.add(sample)
        record = meter.advance(1)
        if record:
            yield record
    return tally


def _feature_sections(report: DataReport, split: Split, cfg: TrainConfig, cache_dir, readable: list[Sample],
                      copies: tuple, seconds: dict[str, float]) -> Generator[Progress, None, None]:
    """Near duplicates, label issues, the baseline and the map: all from the features a run of ``cfg`` uses.
    ``copies``: the exact groups and the perceptual-hash pairs found before."""
    t0 = time.time()
    features, kept, report.features_from_cache = yield from _features(split, cfg, cache_dir)
    t0 = _timed(seconds, "features", t0)
    if len(kept) < len(readable):
        report.notes.append(f"{len(readable) - len(kept)} image(s) could not be decoded for the features (damaged "
                            "beyond the header, or deleted meanwhile); they are left out of the feature sections")
    links = _Links(len(kept))
    neighbours = yield from _feature_section(report, features, links)
    exact, pixel_copies = copies
    report.duplicates = _build_groups(kept, exact, pixel_copies, links)
    t0 = _timed(seconds, "near duplicates", t0)
    yield from _label_section(report, features, kept, links, neighbours)
    t0 = _timed(seconds, "label issues and baseline", t0)
    if len(kept) >= 3:
        drawn = _map_sample(len(kept))
        points = features[drawn]
        xy, report.embedding_method = (yield from _in_thread(_project, points)) if len(drawn) > TSNE_IN_PROCESS \
            else _project(points)
        report.embedding = [MapPoint(kept[i].path, round(float(x), 3), round(float(y), 3), kept[i].label,
                                     kept[i].split) for i, (x, y) in zip(drawn.tolist(), xy)]
        report.embedding_total = len(kept)
    else:
        report.notes.append("fewer than 3 images with features: no map")
    _timed(seconds, "map", t0)


def _feature_section(report: DataReport, features: np.ndarray, links: _Links
                     ) -> Generator[Progress, None, np.ndarray | None]:
    """Near copies by features: each image's nearest neighbours, the threshold (from the data unless given),
    the links above it. Returns the neighbours (positions, -1: none) for k-NN, or None when there are none."""
    values, columns = yield from _top_neighbours(features)
    if values.shape[1] == 0:
        return None
    if report.threshold_rule != "given":
        report.near_threshold, report.threshold_rule = near_threshold_from(values[:, 0])
    _near_links(values, columns, report.near_threshold, links)
    return np.where(values > -2.0, columns, -1)


def _degenerate_notes(split: Split, readable: list[Sample]) -> list[str]:
    """What makes this data unfit for a run at all, said first (the sections below still run where they can)."""
    notes = []
    present = sorted({s.label for s in readable})
    if len(present) == 1:
        notes.append(f"every readable image is of one class ({split.classes[present[0]]}): a classifier needs at "
                     "least two, and a run on it is refused")
    if not split.test:
        notes.append("the test split is empty: a run would have nothing to measure its accuracy on")
    elif not any(s.split == "test" for s in readable):
        notes.append(f"none of the {len(split.test):,} test images can be read (see the health section): a run would "
                     "have nothing to measure its accuracy on")
    return notes


def _label_section(report: DataReport, features: np.ndarray, kept: list[Sample], links: _Links,
                   neighbours: np.ndarray | None = None) -> Generator[Progress, None, None]:
    """Label issues and the baseline, over the classes with enough images for cross-validation. ``neighbours``:
    each kept image's nearest others (``_top_neighbours``), for k-NN at scale."""
    counts = np.bincount([s.label for s in kept], minlength=len(report.classes))
    eligible = [c for c in range(len(report.classes)) if counts[c] >= MIN_PER_CLASS]
    report.too_small = [report.classes[c] for c in range(len(report.classes)) if 0 < counts[c] < MIN_PER_CLASS]
    if report.too_small:
        report.notes.append(f"classes with fewer than {MIN_PER_CLASS} readable images are too small for label "
                            f"checking and the baseline: {', '.join(report.too_small)}")
    if len(eligible) < 2:
        report.notes.append("label issues and the baseline need at least two classes with "
                            f"{MIN_PER_CLASS} or more images")
        return
    remap = np.full(len(report.classes), -1)
    remap[eligible] = np.arange(len(eligible))
    all_labels = remap[np.array([s.label for s in kept])]
    rows = np.flatnonzero(all_labels >= 0)
    labels = all_labels[rows]
    planned = _folds(report, links.group_ids()[rows], labels, len(eligible))
    if planned is None:
        return
    group_ids, folds = planned
    trainable = np.array([kept[i].split != "test" for i in rows])
    x, lists = features if len(rows) == len(kept) else features[rows], None
    if len(rows) > SCALE_CV:  # many images: the head on principal components (seconds, not minutes)
        x = yield from _in_thread(_principal_components, x, CV_DIMENSIONS, phase=Phase.FOLDS)
        report.notes.append(f"{len(rows):,} images: the linear head is cross-validated on the features' first "
                            f"{x.shape[1]} principal components")
    if len(kept) > EXACT_SEARCH:  # at scale: k-NN from the neighbours the index found
        report.notes.append(f"k-NN votes among each image's {NEIGHBOURS} nearest found by the index")
        if neighbours is not None:
            position = np.full(len(kept), -1)
            position[rows] = np.arange(len(rows))
            lists = np.where(neighbours[rows] >= 0, position[np.where(neighbours[rows] >= 0, neighbours[rows], 0)], -1)
    oof, linear, knn = yield from _cross_validate(x, labels, group_ids, folds, trainable, lists)
    _set_label_findings(report, oof, labels, [kept[i] for i in rows], eligible)
    if not linear:
        report.notes.append("no baseline: the training share has too few images of two classes to cross-validate")
        return
    report.baseline = Baseline(float(np.mean(linear)), float(np.std(linear)), folds, float(np.mean(knn)),
                               float(np.std(knn)), int(trainable.sum()), len(eligible))


CV_DIMENSIONS = 256  # above SCALE_CV images, the cross-validated head sees this many principal components
SCALE_CV = 5000  # measured at 10,000 images (2 cores): 1280-d heads took 21 s of the check's 53, 256-d ones 3


def _principal_components(features: np.ndarray, dimensions: int) -> np.ndarray:
    """The first ``dimensions`` principal components (fitted on at most 20,000 rows), as float32."""
    # deferred: scikit-learn takes about a second to import; only this section needs it
    from sklearn.decomposition import PCA

    sample = np.sort(np.random.default_rng(0).choice(len(features), size=min(len(features), 20_000), replace=False))
    pca = PCA(n_components=min(dimensions, *features.shape), random_state=0).fit(features[sample])
    out = np.empty((len(features), pca.n_components_), np.float32)
    for start in range(0, len(features), 10_000):  # a block at a time: transform's centred copy stays small
        out[start:start + 10_000] = pca.transform(features[start:start + 10_000])
    return out


def _folds(report: DataReport, group_ids: np.ndarray, labels: np.ndarray, classes: int
           ) -> tuple[np.ndarray, int] | None:
    """The groups the folds keep together (copies) and the number of folds; None (said in the notes) when a class
    has fewer than two distinct images."""
    distinct = min(len(np.unique(group_ids[labels == c])) for c in range(classes))
    if distinct < 2 or len(np.unique(group_ids)) < 2:
        # Cross-validation needs two distinct images (groups of copies) in every class it checks: with all
        # images copies of one another there is nothing to hold out. Said, not crashed on.
        report.notes.append(f"no label check and no baseline: a class has {int(distinct)} distinct image(s) once "
                            "copies are grouped (the duplicates section lists them), and cross-validation needs "
                            "at least two in every class")
        return None
    folds = max(2, min(MAX_FOLDS, int(distinct)))
    if folds < MAX_FOLDS:
        report.notes.append(f"{folds}-fold cross-validation (the smallest class has {int(distinct)} distinct images)")
    return group_ids, folds


def _set_label_findings(report: DataReport, oof: np.ndarray, labels: np.ndarray, samples: list[Sample],
                        eligible: list[int]) -> None:
    names = [report.classes[c] for c in eligible]
    issues, hard = _label_issues(oof, labels, samples, names)

    def in_report_labels(found: list[LabelIssue]) -> list[LabelIssue]:
        return [LabelIssue(i.path, i.split, i.given, i.suggested, i.score, i.confidence, eligible[i.given_label],
                           eligible[i.suggested_label], i.found_by) for i in found]

    report.label_issues, report.hard_cases = in_report_labels(issues), in_report_labels(hard)


def _build_groups(samples: list[Sample], exact: list[list[str]], pixel_copies: list[tuple[str, str]],
                  near: _Links | None) -> list[DuplicateGroup]:
    """Exact groups (same bytes), pixel copies (perceptual hash) and near ones (similar features) joined; each
    group says which tests found it. Largest first, leaks before others."""
    position = {s.path: i for i, s in enumerate(samples)}
    links = near or _Links(len(samples))
    exact_ids = np.full(len(samples), -1, dtype=np.int64)
    for e, paths in enumerate(exact):
        members = [position[p] for p in paths if p in position]
        links.add(members[:1] * (len(members) - 1), members[1:], 1.0, SAME_BYTES)
        exact_ids[members] = e
    pairs = [(position[a], position[b]) for a, b in pixel_copies if a in position and b in position]
    if pairs:
        links.add([a for a, _ in pairs], [b for _, b in pairs], 1.0, PIXELS)
    found = []
    components, weakest, tests = links.components(exact_ids)
    for root, members in components.items():
        names = [name for bit, name in enumerate(TESTS) if tests[root] >> bit & 1]
        kind = "exact" if names == [SAME_BYTES] else "near"
        found.append(DuplicateGroup(kind, round(float(weakest[root]), 4),
                                    [Member(samples[m].path, samples[m].split, samples[m].label) for m in members],
                                    " + ".join(names)))
    found.sort(key=lambda g: (not g.leak, not g.conflict, -len(g.members), g.members[0].path))
    return found


def load_split(data_root: str | None = None, lists_dir: str | None = None, *, train_ratio: float = 0.6,
               seed: int = 0, val_ratio: float = DEFAULT_VAL_RATIO, allowed_roots=None) -> Split:
    """The split a check covers: a class-folder root split as a run would, or list files as they are."""

    if (data_root is None) == (lists_dir is None):
        raise DatasetError("give exactly one of a data root (class folders) or a lists folder (train.txt/test.txt)")
    if data_root is not None:
        return split_dataset(data_root, train_ratio, seed, val_ratio=val_ratio, allowed_roots=allowed_roots)
    assert lists_dir is not None
    return read_split(lists_dir)


def describe(progress: Progress) -> str:
    """One line for a progress record of the check."""
    phase = Phase(progress.phase)
    if phase is Phase.MAP or progress.split.endswith(" s"):  # work in a thread: the seconds it has taken
        return f"{phase.doing}… {progress.split}"
    where = f" ({progress.split})" if progress.split in ("train", "test") else ""
    return f"{phase.doing}{where}: {progress.done:,}/{progress.total:,}"



def check_of_run(run_dir: str | os.PathLike, folder: str | os.PathLike) -> DataReport | None:
    """The stored check of the images a run was trained and tested on (its left-out images included, and its
    dataset version's relabels and drops undone: a check describes the folder as it is), or None: none was made,
    or a file of the run or the check cannot be read."""

    run = RunDir(run_dir)
    try:
        cfg = load_config(run)
        split = read_split(run.lists)
        left_out = read_list_file(run.lists / "excluded.txt") if (run.lists / "excluded.txt").is_file() else []
        if cfg.data_root and (cfg.relabel or cfg.drop):
            left_out += _as_in_the_folder(split, cfg)
        return load_report(folder, data_fingerprint(split, cfg.arch, cfg.weights, also=left_out))
    except (UserError, OSError):
        return None


def _as_in_the_folder(split: Split, cfg: TrainConfig) -> list[tuple[str, int]]:
    """Undo a dataset version on a run's split, in place: relabelled images get their folder's class back; returns
    the dropped images with their folder's class (for ``data_fingerprint``'s ``also``)."""
    assert cfg.data_root is not None
    root = cfg.data_root
    index = {name: i for i, name in enumerate(split.classes)}

    def folder_class(path: str) -> int | None:
        try:
            parts = Path(path).relative_to(root).parts[:-1]
        except ValueError:
            return None
        return next((index[part] for part in parts if part in index), None)

    relabelled = dict(cfg.relabel)

    def as_filed(path: str, label: int) -> int:
        found = folder_class(path) if path in relabelled else None
        return label if found is None else found

    for side in (split.train, split.val, split.test):
        side[:] = [(p, as_filed(p, label)) for p, label in side]
    return [(p, label) for p in cfg.drop if (label := folder_class(p)) is not None]
