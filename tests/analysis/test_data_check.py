"""Checking the data (core.analysis.datacheck, core.data.health, the group-aware split, exclusions): planted
problems are found."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from core.analysis.datacheck import (
    DataReport,
    _Links,
    _near_links,
    _top_neighbours,
    check_data,
    data_fingerprint,
    duplicate_groups_from_json,
    load_report,
    read_path_list,
    save_report,
)
from core.data.demo import generate_demo
from core.data.health import Header, Unreadable, read_header
from core.data.split import read_split, split_dataset
from core.platform.errors import ConfigError, DatasetError
from core.spec.config import TrainConfig
from core.spec.records import follow
from tests.conftest import ROOT


def drain(stream):
    """Run a check to its end; the Progress records and the report."""
    seen = []
    return seen, follow(stream, seen.append)


def plant(root):
    """Planted problems in a demo dataset: an exact copy and a resized re-encoded copy of one circle, a star filed
    under square, a text file and a cut-off JPEG named as images, and a class of two images."""
    circle = root / "circle" / "circle_000.jpg"
    shutil.copy(circle, root / "circle" / "zz_exact_copy.jpg")
    Image.open(circle).resize((200, 200)).save(root / "circle" / "zz_resized_copy.png")
    shutil.copy(root / "star" / "star_003.jpg", root / "square" / "zz_mislabeled.jpg")
    (root / "square" / "zz_notes.jpg").write_text("not an image")
    data = (root / "cross" / "cross_001.jpg").read_bytes()
    (root / "cross" / "zz_cut.jpg").write_bytes(data[: len(data) // 2])
    (root / "tiny").mkdir()
    for i in range(2):
        shutil.copy(root / "triangle" / f"triangle_00{i}.jpg", root / "tiny" / f"t{i}.jpg")
    return root


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return plant(generate_demo(tmp_path_factory.mktemp("planted") / "shapes", per_class=(14, 14), seed=3))


@pytest.fixture(scope="module")
def checked(planted, lite0_file, tmp_path_factory):
    """The planted data's split (seed chosen so the copies straddle it) and its full report."""
    cache = tmp_path_factory.mktemp("cache")
    split = _straddling_split(planted)
    records, report = drain(check_data(split, arch="efficientnet_lite0", weights=str(lite0_file), cache_dir=cache))
    return split, records, report, cache


def _straddling_split(root):
    """A seed whose split puts the circle and its two copies on both sides (the leakage to find)."""
    for seed in range(50):
        split = split_dataset(root, 0.6, seed)
        train = {p for p, _ in split.train + split.val}
        copies = [str(root / "circle" / n) for n in ("circle_000.jpg", "zz_exact_copy.jpg", "zz_resized_copy.png")]
        if len({p in train for p in copies}) == 2:
            return split
    raise AssertionError("no seed splits the copies")


# ----------------------------------------------------------------------------- health, from headers
def test_headers_name_what_is_wrong_without_decoding(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "ok.jpg")  # noise: the pixel data is long, a cut leaves the header whole
    Image.new("L", (40, 30)).save(tmp_path / "grey.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    whole = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[:-200])
    png = (tmp_path / "grey.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[:-20])
    assert read_header(str(tmp_path / "ok.jpg")) == Header(40, 30, "RGB", "JPEG", len(whole))
    assert read_header(str(tmp_path / "grey.png")).mode == "L"
    reasons = {name: read_header(str(tmp_path / name)) for name in ("empty.jpg", "text.png", "cut.jpg", "cut.png",
                                                                    "gone.jpg")}
    assert all(isinstance(r, Unreadable) for r in reasons.values())
    assert "empty" in reasons["empty.jpg"].reason and "not an image" in reasons["text.png"].reason
    assert "truncated" in reasons["cut.jpg"].reason and "truncated" in reasons["cut.png"].reason
    assert "vanished" in reasons["gone.jpg"].reason
    assert "over the limit" in read_header(str(tmp_path / "ok.jpg"), max_pixels=1000).reason


def test_the_split_leaves_unreadable_files_out_and_says_why(planted):
    split = split_dataset(planted, 0.6, 0)
    listed = {p for p, _ in split.train + split.val + split.test}
    assert not any(p.endswith(("zz_notes.jpg", "zz_cut.jpg")) for p in listed)
    reasons = {s.path.rsplit("/", 1)[1]: s.reason for s in split.skipped if s.unreadable}
    assert set(reasons) == {"zz_notes.jpg", "zz_cut.jpg"}
    assert "truncated" in reasons["zz_cut.jpg"]


# ----------------------------------------------------------------------------- the whole check
def test_planted_problems_are_found(checked):
    split, records, report, _ = checked
    names = {u.path.rsplit("/", 1)[1] for u in report.health.unreadable}
    assert names == {"zz_notes.jpg", "zz_cut.jpg"}
    assert any("tiny" in w for w in report.health.warnings)  # a class of two images is named
    assert report.too_small == ["tiny"]

    circle_group = next(g for g in report.duplicates if any("zz_exact_copy" in m.path for m in g.members))
    members = {m.path.rsplit("/", 1)[1] for m in circle_group.members}
    assert {"circle_000.jpg", "zz_exact_copy.jpg", "zz_resized_copy.png"} <= members
    assert circle_group.leak and circle_group in report.leaks
    conflict = next(g for g in report.duplicates if any("zz_mislabeled" in m.path for m in g.members))
    assert conflict.kind == "exact" and conflict.conflict
    assert "have a copy in the training split" in report.leak_effect()

    # 70 images: confident learning estimates two flips, and the star filed under square is the third least
    # self-confident image, so it is shown with the hard cases (and in the conflict group above)
    shown = sorted(report.label_issues + report.hard_cases, key=lambda i: i.score)
    assert "zz_mislabeled.jpg" in [i.path.rsplit("/", 1)[1] for i in shown[:3]]
    top = next(i for i in shown if i.path.endswith("zz_mislabeled.jpg"))
    assert (top.given, top.suggested) == ("square", "star")
    assert not {i.path for i in report.label_issues} & {i.path for i in report.hard_cases}
    assert [i.score for i in report.label_issues] == sorted(i.score for i in report.label_issues)

    assert report.baseline and 0.8 <= report.baseline.accuracy <= 1.0 and report.baseline.folds >= 2
    assert len(report.embedding) == len(split.train) + len(split.val) + len(split.test)
    assert {r.phase for r in records} >= {"headers", "features", "neighbours", "folds"}


def test_the_json_report_has_the_promised_keys_and_reads_back(checked, tmp_path):
    _, _, report, _ = checked
    data = json.loads(json.dumps(report.to_json()))
    assert {"health", "duplicates", "leaks", "label_issues", "baseline", "embedding"} <= set(data)
    assert {"path", "reason"} == set(data["health"]["unreadable"][0])
    assert {"path", "split", "label"} == set(data["duplicates"][0][0])
    assert {"path", "given", "suggested", "score"} <= set(data["label_issues"][0])
    assert {"accuracy", "std", "folds"} <= set(data["baseline"])
    assert {"path", "x", "y", "label", "split"} == set(data["embedding"][0])
    assert DataReport.from_json(data).to_json() == data
    save_report(report, tmp_path)
    assert load_report(tmp_path, report.fingerprint).to_json() == data


def test_a_damaged_stored_report_is_refused_with_a_message(checked, tmp_path):
    _, _, report, _ = checked
    path = save_report(report, tmp_path)
    for damage in ('{"version": 1, "health"', '[1, 2]', json.dumps({**report.to_json(), "health": {"classes": 3}})):
        path.write_text(damage)
        with pytest.raises(DatasetError, match="run the check again"):
            load_report(tmp_path, report.fingerprint)
    assert load_report(tmp_path, "0" * 32) is None


def test_a_head_only_run_after_the_check_computes_no_feature_again_a_staged_one_its_own_pass(
        checked, planted, lite0_file, tmp_path):
    from core.spec.records import Features
    from core.training.run import train

    split, _, report, cache = checked
    cfg = TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(planted), epochs=1,
                      seed=split.seed, recipe="single")
    features = [r for r in train(cfg, tmp_path / "run", cache_dir=cache) if isinstance(r, Features)]
    assert [f.from_disk for f in features] == [True, True, True]  # train, validation, test: all the check's
    # the staged recipe (the default) trains on the activations where the last stage begins: its own one pass
    staged = [r for r in train(cfg.changed(recipe="fine_tune", stage2_epochs=1), tmp_path / "staged", cache_dir=cache)
              if isinstance(r, Features)]
    assert [f.from_disk for f in staged] == [False, False, False]


def test_a_run_leaving_the_suspects_out_and_the_finder_compute_no_feature_after_the_check(
        checked, planted, lite0_file, tmp_path):
    """The check's features serve later users: a run that leaves the check's training suspects out (a subset of
    the list the check computed) and the learning-rate finder."""
    from core.spec.records import Features, Progress
    from core.training.lr_find import find_lr
    from core.training.run import train

    split, _, report, cache = checked
    suspects = tuple(i.path for i in report.label_issues if i.split == "train") or (split.train[0][0],)
    cfg = TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(planted), epochs=1,
                      seed=split.seed, exclude=suspects, recipe="single")
    records = list(train(cfg, tmp_path / "run", cache_dir=cache))
    assert records[0].excluded == len(suspects)
    assert [f.from_disk for f in records if isinstance(f, Features)] == [True, True, True]
    assert not [r for r in records if isinstance(r, Progress) and r.phase == "features"]
    found = list(find_lr(cfg, cache_dir=cache, num_it=5))
    assert found and not [r for r in found if isinstance(r, Progress) and r.phase == "features"]


def test_a_check_with_the_letterbox_serves_a_letterboxed_run_and_not_a_plain_one(planted, lite0_file, tmp_path):
    from core.spec.records import Features
    from core.training.run import train

    split = split_dataset(planted, 0.6, 1)
    cache = tmp_path / "cache"
    drain(check_data(split, arch="efficientnet_lite0", weights=str(lite0_file), cache_dir=cache, letterbox=True))
    base = dict(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(planted), epochs=1, seed=1,
                recipe="single")
    boxed = [r.from_disk for r in train(TrainConfig(**base, letterbox=True), tmp_path / "boxed", cache_dir=cache)
             if isinstance(r, Features)]
    plain = [r.from_disk for r in train(TrainConfig(**base), tmp_path / "plain", cache_dir=cache)
             if isinstance(r, Features)]
    assert boxed == [True, True, True] and plain == [False, False, False]


def test_group_aware_resplit_keeps_every_group_on_one_side(checked, planted):
    split, _, report, _ = checked
    groups = [[m.path for m in g.members] for g in report.duplicates]
    assert report.leaks  # the plain split does leak
    grouped = split_dataset(planted, 0.6, split.seed, keep_together=groups)
    side = ({p: "train" for p, _ in grouped.train} | {p: "val" for p, _ in grouped.val}
            | {p: "test" for p, _ in grouped.test})
    assert all(len({side[p] for p in g}) == 1 for g in groups)
    everything = grouped.train + grouped.val + grouped.test
    assert sorted(everything) == sorted(split.train + split.val + split.test)  # nothing lost or moved
    plain = split_dataset(planted, 0.6, split.seed, keep_together=[])
    assert (plain.train, plain.val, plain.test) == (split.train, split.val, split.test)  # exactly the plain split


def test_without_pretrained_weights_the_feature_sections_say_why(planted):
    _, report = drain(check_data(split_dataset(planted, 0.6, 0), arch="efficientnet_lite0", weights=None))
    assert report.baseline is None and not report.embedding and not report.label_issues
    assert any("pretrained" in n for n in report.notes)
    assert any(g.kind == "exact" for g in report.duplicates)  # exact copies need no features


def test_images_deleted_meanwhile_and_one_class_get_messages_not_tracebacks(tmp_path, lite0_file):
    root = generate_demo(tmp_path / "d", per_class=(4, 4), seed=1)
    split = split_dataset(root, 0.6, 0)
    gone = split.train[0][0]
    (tmp_path / "gone").write_bytes(b"")
    import os

    os.remove(gone)
    _, report = drain(check_data(split, arch="efficientnet_lite0", weights=str(lite0_file)))
    assert any(u.path == gone and "vanished" in u.reason for u in report.health.unreadable)
    assert report.baseline is not None

    lists = tmp_path / "one"
    lists.mkdir()
    (lists / "train.txt").write_text("".join(f"{p}\t0\n" for p, _ in split.train[1:4]))
    (lists / "test.txt").write_text(f"{split.test[0][0]}\t0\n")
    _, one = drain(check_data(read_split(lists), arch="efficientnet_lite0", weights=str(lite0_file)))
    assert one.baseline is None and any("two classes" in n for n in one.notes)
    assert any("class" in w for w in one.health.warnings)

    nothing = tmp_path / "none"
    nothing.mkdir()
    (nothing / "train.txt").write_text(f"{tmp_path / 'gone'}\t0\n")
    (nothing / "test.txt").write_text(f"{tmp_path / 'missing.jpg'}\t1\n")
    _, empty = drain(check_data(read_split(nothing), arch="efficientnet_lite0", weights=str(lite0_file)))
    assert empty.health.readable == 0 and "no image could be read" in empty.notes[0]


def test_near_duplicates_are_found_a_block_at_a_time_as_brute_force_finds_them(monkeypatch):
    import core.analysis.datacheck as datacheck

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 64)).astype(np.float32)
    x[10] = x[200] + 0.01 * rng.normal(size=64)
    x[50] = x[51] + 0.01 * rng.normal(size=64)
    monkeypatch.setattr(datacheck, "BLOCK_ROWS", 7)  # many blocks: the result must not depend on them
    links = _Links(len(x))
    values, columns = drain(_top_neighbours(x))[1]
    _near_links(values, columns, 0.96, links)
    components, weakest, _ = links.components()
    found = sorted(sorted(m) for m in components.values() if len(m) > 1)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -1)
    brute = sorted({tuple(sorted(p)) for p in zip(*np.nonzero(sims >= 0.96))})
    assert found == [list(p) for p in brute] == [[10, 200], [50, 51]]
    group = links.group_ids()[10]
    assert weakest[group] == pytest.approx(sims[10, 200], abs=1e-5) and weakest[links.group_ids()[0]] == 1.0


# ----------------------------------------------------------------------------- runs that use the check
def test_a_run_leaves_excluded_images_out_of_training_only(colour_data, lite0_file, tmp_path):
    from core.spec.records import Start
    from core.training.run import train

    split = split_dataset(colour_data, 0.6, 0)
    out = [split.train[0][0], split.test[0][0]]
    cfg = TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(colour_data), epochs=1,
                      exclude=tuple(out))
    start = next(r for r in train(cfg, tmp_path / "run") if isinstance(r, Start))
    assert (start.train_size, start.test_size, start.excluded) == (len(split.train) - 1, len(split.test), 1)
    run_split = read_split(tmp_path / "run" / "lists")
    assert out[0] not in {p for p, _ in run_split.train} and out[1] in {p for p, _ in run_split.test}
    assert (tmp_path / "run" / "lists" / "excluded.txt").read_text().startswith(out[0] + "\t")


def test_exclusions_and_groups_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="exclude must be a list of image paths"):
        TrainConfig(exclude=("", "a"))
    with pytest.raises(ConfigError, match="list files are already split"):
        TrainConfig(lists_dir=str(tmp_path), keep_together=(("a", "b"),))
    saved = json.dumps(TrainConfig(exclude=("a",), keep_together=(("a", "b"),)).to_dict())
    cfg = TrainConfig.from_dict(json.loads(saved))
    assert cfg.exclude == ("a",) and cfg.keep_together == (("a", "b"),)
    (tmp_path / "issues.csv").write_text("path,split,given\n/x/a.jpg,train,cat\n/x/b.jpg,test,dog\n")
    assert read_path_list(tmp_path / "issues.csv") == ["/x/a.jpg", "/x/b.jpg"]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DatasetError, match="not a report"):
        duplicate_groups_from_json(tmp_path / "bad.json")


@pytest.mark.slow
def test_inspect_command_writes_the_report_and_split_keeps_groups_together(planted, tmp_path):
    env = {**__import__("os").environ, "TLD_WORKSPACE": str(tmp_path / "ws")}
    out = tmp_path / "report.json"
    seed = str(_straddling_split(planted).seed)
    done = subprocess.run([sys.executable, "-m", "core", "inspect", "--data", str(planted), "--seed", seed,
                           "--json", str(out)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "across train and test" in done.stdout and "zz_mislabeled.jpg" in done.stdout
    assert "baseline: a linear head" in done.stdout
    data = json.loads(out.read_text())
    assert data["leaks"] and any(i["path"].endswith("zz_mislabeled.jpg")
                                 for i in data["label_issues"] + data["hard_cases"])
    assert (tmp_path / "ws" / "checks" / f"{data['fingerprint']}.json").is_file()  # the app shows it too
    lists = tmp_path / "lists"
    done = subprocess.run([sys.executable, "-m", "core", "split", str(planted), "--seed", seed, "--out", str(lists),
                           "--keep-together", str(out)], capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    grouped = read_split(lists)
    side = {p: "train" for p, _ in grouped.train} | {p: "test" for p, _ in grouped.test}
    assert all(len({side[m["path"]] for m in g}) == 1 for g in data["duplicates"])
    bad = subprocess.run([sys.executable, "-m", "core", "inspect"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert bad.returncode == 2 and "needs --data ROOT" in bad.stderr


def test_the_fingerprint_ignores_sides_but_not_images(planted):
    a, b = split_dataset(planted, 0.6, 0), split_dataset(planted, 0.6, 1)
    assert data_fingerprint(a, "efficientnet_lite0", None) == data_fingerprint(b, "efficientnet_lite0", None)
    assert data_fingerprint(a, "efficientnet_lite0", None) != data_fingerprint(a, "resnet18", None)
    fewer = split_dataset(planted, 0.6, 0)
    fewer.train = fewer.train[1:]
    assert data_fingerprint(fewer, "efficientnet_lite0", None) != data_fingerprint(a, "efficientnet_lite0", None)
    assert data_fingerprint(fewer, "efficientnet_lite0", None, also=[a.train[0]]) == \
        data_fingerprint(a, "efficientnet_lite0", None)


def test_all_identical_images_get_a_report_that_says_so_not_a_crash(tmp_path, lite0_file):
    """Every image a copy of its class's one photo: one group per class, nothing to hold out in a fold."""
    root = tmp_path / "same"
    for name, colour in (("blue", (30, 60, 220)), ("red", (220, 40, 40))):
        (root / name).mkdir(parents=True)
        picture = Image.new("RGB", (48, 48), colour)
        for i in range(12):
            picture.save(root / name / f"{name}_{i:02d}.png")
    records, report = drain(check_data(split_dataset(root, 0.6, 0), arch="efficientnet_lite0",
                                       weights=str(lite0_file), cache_dir=tmp_path / "cache"))
    assert report.baseline is None and report.label_issues == []
    assert any("no label check and no baseline" in n and "distinct image" in n for n in report.notes)
    assert {len(g.members) for g in report.duplicates if g.kind == "exact"} == {12}
