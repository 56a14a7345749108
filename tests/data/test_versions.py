"""Dataset versions: decisions kept in the workspace, read by the split and runs; the user's folder untouched."""
import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from core.cli.main import main
from core.data.split import Edits, split_dataset
from core.data.versions import Action, export_copy, export_lists, load_version, record, undo, version_file
from core.platform.errors import DatasetError
from core.spec.config import ConfigError, TrainConfig
from tests.conftest import make_colour_dataset


def folder_digest(root: Path) -> str:
    """Every file's path, bytes and mtime under ``root``: equal digests mean the folder is byte-for-byte unchanged."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
            digest.update(str(path.stat().st_mtime_ns).encode())
    return digest.hexdigest()


@pytest.fixture
def root(tmp_path) -> Path:
    return make_colour_dataset(tmp_path / "colours", per_class=10)


def labels_of(split) -> dict[str, str]:
    return {p: split.classes[label] for p, label in [*split.train, *split.val, *split.test]}


def sides_of(split) -> dict[str, str]:
    return ({p: "train" for p, _ in split.train} | {p: "val" for p, _ in split.val}
            | {p: "test" for p, _ in split.test})


def test_relabel_reaches_the_split_and_undo_brings_it_back_with_the_folder_untouched(root):
    before = folder_digest(root)
    plain = split_dataset(root)
    blue = next(p for p, label in plain.test if plain.classes[label] == "blue")
    version = record(root, Action.RELABEL, [blue], label="red", reason="it is red", classes=plain.classes,
                     known=set(labels_of(plain)))
    assert version.name == "v1" and version.changes[0].reason == "it is red"
    edited = split_dataset(root, edits=load_version(root).edits())
    assert labels_of(edited)[blue] == "red"
    assert sides_of(edited) == sides_of(plain)  # every image stays on its side: only the label changed
    changed = {p for p in labels_of(plain) if labels_of(plain)[p] != labels_of(edited)[p]}
    assert changed == {blue}

    version, taken = undo(root)
    assert taken.action is Action.RELABEL and version.name == "v2" and not version.changes
    back = split_dataset(root, edits=version.edits())
    assert (back.train, back.val, back.test) == (plain.train, plain.val, plain.test)
    assert folder_digest(root) == before
    assert not any(p.name.startswith(".") for p in root.rglob("*"))  # no marker or lock left in the folder


def test_drop_keep_one_and_keep_together(root):
    plain = split_dataset(root)
    known = set(labels_of(plain))
    paths = sorted(known)
    record(root, "drop", [paths[0]], known=known)
    record(root, "keep one", [paths[1], paths[2], paths[3]], known=known)
    group = [paths[4], paths[15], paths[16]]  # two classes' images: kept on one side all the same
    record(root, "keep together", group, known=known)
    edits = load_version(root).edits()
    assert edits.drop == {paths[0], paths[2], paths[3]}
    split = split_dataset(root, edits=edits)
    listed = labels_of(split)
    assert paths[1] in listed and not ({paths[0], paths[2], paths[3]} & set(listed))
    sides = sides_of(split)
    assert len({"test" if sides[p] == "test" else "train" for p in group}) == 1


def test_refusals_write_nothing(root):
    plain = split_dataset(root)
    known = set(labels_of(plain))
    with pytest.raises(DatasetError, match="allowed: blue, red"):
        record(root, "relabel", [sorted(known)[0]], label="green", classes=plain.classes, known=known)
    with pytest.raises(DatasetError, match="no image of this data"):
        record(root, "drop", [str(root / "elsewhere.png")], known=known)
    with pytest.raises(DatasetError, match="at least two"):
        record(root, "keep one", [sorted(known)[0]], known=known)
    with pytest.raises(DatasetError, match="nothing to undo"):
        undo(root)
    assert not version_file(root).exists()


def test_reading_never_creates_and_a_damaged_file_is_refused_not_ignored(root):
    assert load_version(root).name == "v0"
    assert not version_file(root).parent.exists()  # readers never write
    record(root, "drop", [sorted(labels_of(split_dataset(root)))[0]])
    path = version_file(root)
    for damage in (b"{", b"[]", json.dumps({"format": 1, "number": 0, "changes": [{"action": "burn"}]}).encode(),
                   b"[" * 100_000):
        path.write_bytes(damage)
        with pytest.raises(DatasetError, match="cannot be used") as caught:
            load_version(root)
        assert "Move it away" in str(caught.value)
        assert path.read_bytes() == damage  # left as it is


def test_two_writers_at_once_both_land(root):
    known = sorted(labels_of(split_dataset(root)))
    errors = []

    def drop(path):
        try:
            record(root, "drop", [path])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=drop, args=(p,)) for p in known[:8]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    version = load_version(root)
    assert not errors and version.number == 8 and version.edits().drop == set(known[:8])
    assert sorted(c.version for c in version.changes) == list(range(1, 9))


def test_undo_one_change_by_its_version(root):
    known = sorted(labels_of(split_dataset(root)))
    record(root, "drop", [known[0]])
    record(root, "drop", [known[1]])
    version, taken = undo(root, 1)
    assert taken.paths == (known[0],) and version.edits().drop == {known[1]} and version.name == "v3"
    with pytest.raises(DatasetError, match="no change made version v1"):
        undo(root, 1)


def test_export_lists_and_a_copy_outside_the_root_only(root, tmp_path):
    plain = split_dataset(root)
    blue = next(p for p, label in plain.train if plain.classes[label] == "blue")
    record(root, "relabel", [blue], label="red", classes=plain.classes)
    version = load_version(root)
    split = split_dataset(root, edits=version.edits())
    before = folder_digest(root)
    with pytest.raises(DatasetError, match="inside the data root"):
        export_lists(split, version, root / "lists")
    out = export_lists(split, version, tmp_path / "corrected-lists")
    assert f"{blue}\t1\n" in (out / "train.txt").read_text()
    assert json.loads((out / "version.json").read_text())["version"] == "v1"
    copied = export_copy(split, tmp_path / "corrected")
    assert copied == 20 and (tmp_path / "corrected" / "red" / Path(blue).name).is_file()
    assert len(list((tmp_path / "corrected" / "blue").iterdir())) == 9
    with pytest.raises(DatasetError, match="not empty"):
        export_copy(split, tmp_path / "corrected")
    assert folder_digest(root) == before


def test_a_run_config_carries_the_version_and_refuses_bad_edits(root):
    edits = Edits.of_config(TrainConfig(data_root=str(root), relabel=(("a.png", "red"),), drop=("b.png",)))
    assert edits.relabel == {"a.png": "red"} and edits.drop == {"b.png"}
    # read back from JSON (config.json): lists become the tuples the config holds
    cfg = TrainConfig.from_dict(json.loads(json.dumps(TrainConfig(data_root=str(root), relabel=(("a.png", "red"),),
                                                                  dataset_version="v1").to_dict())))
    assert cfg.relabel == (("a.png", "red"),) and cfg.dataset_version == "v1"
    with pytest.raises(ConfigError, match="relabel must be a list of"):
        TrainConfig(data_root=str(root), relabel=(("a.png",),))
    with pytest.raises(ConfigError, match="apply to a data root"):
        TrainConfig(lists_dir=str(root), drop=("b.png",))


def test_the_cli_fixes_shows_undoes_and_the_run_config_reads_it(root, capsys, tmp_path):
    from core.cli.args import config_from_args
    from core.cli.main import build_parser

    plain = split_dataset(root)
    blue = next(p for p, label in plain.test if plain.classes[label] == "blue")
    relative = os.path.relpath(blue)
    assert main(["fix", str(root), "relabel", relative, "--as", "red", "--reason", "looks red"]) == 0
    assert "v1: relabel" in capsys.readouterr().out
    assert main(["fix", str(root), "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == "v1" and shown["relabelled"] == {blue: "red"}
    assert main(["fix", str(root), "relabel", blue, "--as", "green"]) == 2
    assert "allowed: blue, red" in capsys.readouterr().err

    args = build_parser().parse_args(["train", "--data", str(root), "--weights", "none", "--arch", "resnet18"])
    cfg, _ = config_from_args(args)
    assert cfg.dataset_version == "v1" and cfg.relabel == ((blue, "red"),)
    args = build_parser().parse_args(["train", "--data", str(root), "--weights", "none", "--arch", "resnet18",
                                      "--no-version"])
    assert config_from_args(args)[0].relabel == ()

    assert main(["fix", str(root), "export", str(tmp_path / "out")]) == 0
    assert f"{blue}\t1\n" in (tmp_path / "out" / "test.txt").read_text()
    assert main(["fix", str(root), "undo"]) == 0
    assert "took back v1" in capsys.readouterr().out
    assert main(["split", str(root), "--out", str(tmp_path / "lists")]) == 0
    assert f"{blue}\t0\n" in (tmp_path / "lists" / "test.txt").read_text()


def test_a_run_with_a_version_finds_the_check_of_the_folder_as_it_is(root, tmp_path):
    from core.analysis.datacheck import check_data, check_of_run, save_report
    from core.data.split import write_split
    from core.runs.rundir import RunDir
    from core.spec.records import follow

    plain = split_dataset(root)
    report = follow(check_data(plain, arch="efficientnet_lite0", weights=None), lambda r: None)
    save_report(report, tmp_path / "checks")
    blue = next(p for p, label in plain.train if plain.classes[label] == "blue")
    gone = next(p for p, label in plain.test if plain.classes[label] == "red")
    record(root, "relabel", [blue], label="red", classes=plain.classes)
    record(root, "drop", [gone])
    version = load_version(root)
    cfg = TrainConfig(arch="efficientnet_lite0", data_root=str(root), **version.config_fields())
    run = RunDir(tmp_path / "run")
    write_split(split_dataset(root, edits=version.edits()), run.lists)
    run.config.write_text(json.dumps(cfg.to_dict()))
    found = check_of_run(run.path, tmp_path / "checks")
    assert found is not None and found.fingerprint == report.fingerprint


def test_a_version_naming_too_many_images_is_refused(root, monkeypatch):
    from core.data import versions

    monkeypatch.setattr(versions, "MAX_PATHS", 3)
    known = sorted(labels_of(split_dataset(root)))
    record(root, "drop", known[:3])
    with pytest.raises(DatasetError, match="more than 3 images"):
        record(root, "drop", [known[3]])
    path = version_file(root)
    data = json.loads(path.read_text())
    data["changes"][0]["paths"] = known[:4]  # a file edited by hand past the bound
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="name more than 3 images"):
        load_version(root)
