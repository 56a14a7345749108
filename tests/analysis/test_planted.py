"""The data check against planted truth: generated photos with resized re-encoded copies and flipped labels."""
from pathlib import Path

import numpy as np
import pytest

from core.analysis.datacheck import NEAR_CEILING, NEAR_FLOOR, check_data, near_threshold_from
from core.data.phash import HASH_DISTANCE, close_pairs, hash_images
from core.data.planted import generate_planted
from core.data.split import split_dataset
from core.spec.records import follow


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return generate_planted(tmp_path_factory.mktemp("planted") / "set", per_class=60, seed=0)


@pytest.fixture(scope="module")
def report(planted, lite0_file, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return follow(check_data(split_dataset(planted.root), arch="efficientnet_lite0", weights=str(lite0_file),
                             cache_dir=cache), lambda record: None)


def groups(report) -> list[frozenset[str]]:
    return [frozenset(m.path for m in g.members) for g in report.duplicates]


def test_resized_copies_are_found_at_the_defaults_with_no_false_group(planted, report):
    found = groups(report)
    copies = [frozenset(pair) for pair in planted.copies]
    assert sum(any(c <= g for g in found) for c in copies) >= 9
    assert all(any(g <= c for c in copies) for g in found), [sorted(map(lambda p: Path(p).name, g)) for g in found]
    assert all("perceptual hash" in g.found_by for g in report.duplicates)
    assert report.threshold_rule.startswith("from the data") and NEAR_FLOOR <= report.near_threshold <= NEAR_CEILING


def test_label_suspects_are_mostly_the_flipped_photos(planted, report):
    flipped = {path for path, _, _ in planted.flipped}
    suspects = {i.path for i in report.label_issues}
    precision, recall = len(suspects & flipped) / len(suspects), len(suspects & flipped) / len(flipped)
    # measured 0.67 / 0.90 and 0.64 / 0.90 on 400 photos (bench/benchmark.py --only labels); floors below that
    assert precision >= 0.45 and recall >= 0.7, (precision, recall)
    hard = {i.path for i in report.hard_cases}
    assert not hard & suspects
    union = suspects | hard
    assert len(union & flipped) / len(union) < precision  # the disagreements alone would list more correct photos


def test_the_near_threshold_follows_the_data():
    rng = np.random.default_rng(0)
    spread = 1 - rng.uniform(0.2, 0.6, 1000)  # photos: nearest neighbours from 0.4 to 0.8 alike
    tight = 1 - rng.uniform(0.05, 0.1, 1000)  # images that all look alike to the backbone
    loose_t, rule = near_threshold_from(spread)
    tight_t, _ = near_threshold_from(tight)
    assert NEAR_FLOOR <= loose_t < tight_t <= NEAR_CEILING
    assert "median" in rule and "Tukey" in rule


def test_hashes_are_cached_and_plain_pictures_never_pair(tmp_path):
    import random

    from PIL import Image

    from core.data.planted import resized_copy, scene
    rng = random.Random(1)
    paths = []
    for i in range(6):
        path = tmp_path / f"{i}.jpg"
        scene("circle", rng).save(path, quality=90)
        paths.append(str(path))
    resized_copy(Path(paths[0]), tmp_path / "copy.jpg")
    for name, colour in (("blue.png", (0, 0, 255)), ("red.png", (255, 0, 0))):
        Image.new("RGB", (64, 64), colour).save(tmp_path / name)
    paths += [str(tmp_path / n) for n in ("copy.jpg", "blue.png", "red.png")]
    codes, kept = follow(hash_images(paths, tmp_path / "cache"), lambda r: None)
    assert kept.tolist() == list(range(7))  # the two flat pictures have no hash
    rows, cols, distances = close_pairs(codes)
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 6)] and distances[0] <= HASH_DISTANCE
    cached = list((tmp_path / "cache" / "phash").glob("*.json"))
    assert len(cached) == 1
    again, _ = follow(hash_images(paths, tmp_path / "cache"), lambda r: None)
    assert np.array_equal(again, codes)
    (tmp_path / "cache" / "phash" / cached[0].name).write_text("{")  # damaged: read as empty, hashed again
    again, _ = follow(hash_images(paths, tmp_path / "cache"), lambda r: None)
    assert np.array_equal(again, codes)


def test_the_scale_paths_agree_with_the_exact_ones(monkeypatch):
    """Above EXACT_SEARCH the neighbours come from faiss's index, the folds from groups and k-NN from the lists;
    above SCALE_CV the head sees principal components; the map draws a sample. Forced here on 3,000 points."""
    from core.analysis import datacheck as dc

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (4, 256))
    labels = rng.integers(0, 4, 3000)
    basis = rng.normal(0, 1, (16, 256))  # features vary along a few directions, as a backbone's do
    x = (centres[labels] + rng.normal(0, 0.5, (3000, 16)) @ basis + rng.normal(0, 0.05, (3000, 256))).astype(np.float32)
    x[1000] = x[2000] + 0.01  # one planted near copy
    exact_values, exact_columns = follow(dc._top_neighbours(x), lambda r: None)
    monkeypatch.setattr(dc, "EXACT_SEARCH", 500)
    values, columns = follow(dc._top_neighbours(x), lambda r: None)
    assert columns[1000, 0] == 2000 and values[1000, 0] > 0.99
    recall = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(exact_columns[:, :5], columns[:, :5])])
    assert recall > 0.9, recall  # the index finds (nearly) the exact nearest neighbours
    same = columns[:, 0] == exact_columns[:, 0]
    assert same.mean() > 0.9 and np.allclose(values[same, 0], exact_values[same, 0], atol=1e-4)  # exact cosines

    groups = np.arange(3000)
    groups[1000] = groups[2000]
    folds = list(dc._fold_indices(labels, groups, 5, at_scale=True))
    assert sorted(np.concatenate([held for _, held in folds]).tolist()) == list(range(3000))
    assert all((1000 in held) == (2000 in held) for _, held in folds)  # copies on one side
    monkeypatch.setattr(dc, "SCALE_CV", 1000)
    oof, linear, knn = follow(dc._cross_validate(dc._principal_components(x, 64), labels, groups, 5,
                                                 neighbours=columns), lambda r: None)
    assert np.mean(linear) > 0.9 and np.mean(knn) > 0.85 and oof.shape == (3000, 4)
    assert len(dc._map_sample(3000)) == 3000 and len(dc._map_sample(20_000)) == dc.MAP_POINTS
