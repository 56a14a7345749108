"""Dataset versions: the user's decisions about their images, kept in the workspace, never in their folder.

A data check finds a wasp filed under ants, or the same photo twice; the user decides: relabel it, drop it, keep
one of the copies, keep a group of copies on one side of the split. Each decision is a ``Change`` (what, which
images, the new class, the reason, when) appended to the data root's version file
(``workspace/versions/<root>-<tag>.json``). The folder itself is never moved, renamed or written: the split and
every run read the version instead, through ``Edits`` (relabelled, dropped, kept together).

The version number counts the decisions made and undone (v0: the folder as it is); it only grows, so "v3" names
one state for good, and a run records the number and the edits it used (``TrainConfig.dataset_version``,
``relabel``, ``drop``, ``keep_together``): a resumed run splits exactly as it began, whatever was decided since.

Writers take the file's lock (``filelock``) and replace it atomically: two clicks at once both land, in turn.
Readers never write and never create: a missing file is v0. A damaged file is refused with what to do, never
read as "no changes" (that would train on labels the user corrected).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable

from filelock import FileLock

from ..platform.errors import DatasetError
from ..platform.io import atomic_write_json, atomic_write_text, read_json_file
from ..platform.workspace import workspace_dir
from ..spec.choices import Choice
from .split import Edits, Split

FORMAT = 1
MAX_VERSION_BYTES = 64 * 1024**2  # 100,000 changes of a long path each; a larger file is refused, not read
MAX_CHANGES = 100_000
MAX_PATHS = 1_000_000  # images named by all changes together (as many as a run may leave out)
MAX_REASON = 500  # characters of a reason kept


class Action(Choice):
    """What a change does to its images."""

    RELABEL = "relabel"  # every path gets ``label``
    DROP = "drop"  # every path leaves the dataset (train, validation and test)
    KEEP_ONE = "keep one"  # the first path stays, the others leave (copies of one photo)
    KEEP_TOGETHER = "keep together"  # the paths land on one side of the split (copies, kept for training)


@dataclass(frozen=True)
class Change:
    action: Action
    paths: tuple[str, ...]
    label: str = ""  # the new class (RELABEL only)
    reason: str = ""
    time: float = field(default_factory=time.time)
    version: int = 0  # the version this change made

    def describe(self) -> str:
        names = ", ".join(Path(p).name for p in self.paths[:3]) + (f" (+{len(self.paths) - 3})"
                                                                     if len(self.paths) > 3 else "")
        if self.action is Action.RELABEL:
            return f"relabel {names} as {self.label}"
        if self.action is Action.KEEP_ONE:
            others = len(self.paths) - 1
            return f"keep {Path(self.paths[0]).name}, drop {others} cop{'y' if others == 1 else 'ies'}"
        return f"{self.action.value} {names}"

    def to_json(self) -> dict:
        return {"action": self.action.value, "paths": list(self.paths), "label": self.label, "reason": self.reason,
                "time": self.time, "version": self.version}

    @classmethod
    def from_json(cls, data) -> "Change":
        if not isinstance(data, dict):
            raise ValueError("a change is not an object")
        paths = data.get("paths")
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
            raise ValueError("a change's paths are not a list of paths")
        if data.get("action") not in Action.values():
            raise ValueError(f"unknown action {str(data.get('action'))[:40]!r}")
        label, reason = data.get("label", ""), data.get("reason", "")
        stamp, version = data.get("time", 0.0), data.get("version", 0)
        if not isinstance(label, str) or not isinstance(reason, str) or not isinstance(stamp, (int, float)) \
                or not isinstance(version, int):
            raise ValueError("a change's label, reason, time or version has the wrong type")
        return cls(Action(data["action"]), tuple(paths), label, reason[:MAX_REASON], float(stamp), version)


@dataclass(frozen=True)
class DatasetVersion:
    """The decisions in force for one data root: ``number`` (v0: none) and the changes, oldest first."""

    root: str
    number: int = 0
    changes: tuple[Change, ...] = ()

    @property
    def name(self) -> str:
        return f"v{self.number}"

    def edits(self) -> Edits:
        """What the split applies (worked out once per version: pages ask for every card and table row)."""
        return self._edits

    @cached_property
    def _edits(self) -> Edits:
        relabel: dict[str, str] = {}
        drop: set[str] = set()
        together: list[tuple[str, ...]] = []
        for change in self.changes:
            if change.action is Action.RELABEL:
                relabel.update(dict.fromkeys(change.paths, change.label))
            elif change.action is Action.DROP:
                drop.update(change.paths)
            elif change.action is Action.KEEP_ONE:
                drop.update(change.paths[1:])
            else:
                together.append(change.paths)
        return Edits(relabel, frozenset(drop), tuple(together))

    def config_fields(self) -> dict:
        """The TrainConfig fields a run of this version carries (merge ``keep_together`` with the caller's)."""
        edits = self.edits()
        return {"dataset_version": self.name if self.number else "",
                "relabel": tuple(sorted(edits.relabel.items())), "drop": tuple(sorted(edits.drop)),
                "keep_together": edits.together}

    def status_of(self, path: str) -> str:
        """What this version decided about one image, in a few words ("" when nothing)."""
        edits = self.edits()
        if path in edits.drop:
            return "dropped"
        if path in edits.relabel:
            return f"relabelled as {edits.relabel[path]}"
        return "kept together" if any(path in group for group in edits.together) else ""


# ----------------------------------------------------------------------------- where a version lives
def versions_dir() -> Path:
    return workspace_dir() / "versions"


def _key(root: str | os.PathLike) -> str:
    resolved = Path(root).expanduser().resolve()
    return f"{resolved.name or 'root'}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:12]}"


def version_file(root: str | os.PathLike, folder: str | os.PathLike | None = None) -> Path:
    return Path(folder or versions_dir()) / f"{_key(root)}.json"


def _parse(data, root: str) -> DatasetVersion:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not a version file of format {FORMAT}")
    changes, number = data.get("changes"), data.get("number")
    if not isinstance(changes, list) or len(changes) > MAX_CHANGES:
        raise ValueError(f"its changes are not a list of at most {MAX_CHANGES:,}")
    if not isinstance(number, int) or number < len(changes):
        raise ValueError("its version number is missing or smaller than its changes")
    parsed = tuple(Change.from_json(c) for c in changes)
    if sum(len(c.paths) for c in parsed) > MAX_PATHS:
        raise ValueError(f"its changes name more than {MAX_PATHS:,} images")
    return DatasetVersion(root, number, parsed)


def load_version(root: str | os.PathLike, folder: str | os.PathLike | None = None) -> DatasetVersion:
    """The version in force for ``root`` (v0 when none was made). Reads only. DatasetError: the file is damaged."""
    path = version_file(root, folder)
    try:
        data = read_json_file(path, limit=MAX_VERSION_BYTES)
    except FileNotFoundError:
        return DatasetVersion(str(root))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(_damaged(path, exc)) from None
    try:
        return _parse(data, str(root))
    except (ValueError, TypeError) as exc:
        raise DatasetError(_damaged(path, exc)) from None


def _damaged(path: Path, exc: BaseException) -> str:
    return (f"the dataset version file '{path}' cannot be used ({type(exc).__name__}: {str(exc)[:120]}); it is left "
            "as it is. Move it away (or set it aside on the Dataset page) to start again from the folder as it is")


def _save(version: DatasetVersion, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"format": FORMAT, "root": version.root, "number": version.number,
                             "changes": [c.to_json() for c in version.changes]})


def _updated(root, folder, update) -> DatasetVersion:
    """Read, change and write the version under its lock: concurrent writers land one after the other."""
    path = version_file(root, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=30):
        version = update(load_version(root, folder))
        _save(version, path)
    return version


def record(root: str | os.PathLike, action: Action | str, paths: Iterable[str], *, label: str = "",
           reason: str = "", classes: list[str] | None = None, known: set[str] | None = None,
           folder: str | os.PathLike | None = None) -> DatasetVersion:
    """Add one decision and return the new version. ``classes``: the data's classes (a relabel must name one);
    ``known``: the data's image paths (every path must be one of them). Refused with a message, nothing written,
    when either is wrong."""
    action = Action(action)
    paths = tuple(dict.fromkeys(str(p) for p in paths))
    if not paths:
        raise DatasetError("name at least one image")
    if action is Action.RELABEL and (not label or (classes is not None and label not in classes)):
        raise DatasetError(f"relabel needs one of this data's classes, got {label!r}"
                           + (f" (allowed: {', '.join(classes)})" if classes else ""))
    if action in (Action.KEEP_ONE, Action.KEEP_TOGETHER) and len(paths) < 2:
        raise DatasetError(f"{action.value} needs a group of at least two images")
    unknown = [p for p in paths if known is not None and p not in known]
    if unknown:
        raise DatasetError(f"{len(unknown)} path(s) are no image of this data, e.g. '{unknown[0]}' (give the path of "
                           "an image under the data root, as `python -m core split ROOT` lists it)")

    def add(version: DatasetVersion) -> DatasetVersion:
        if sum(len(c.paths) for c in version.changes) + len(paths) > MAX_PATHS:
            raise DatasetError(f"this dataset version would name more than {MAX_PATHS:,} images; export the "
                               "corrected dataset and start from it")
        if len(version.changes) >= MAX_CHANGES:
            raise DatasetError(f"this dataset version holds {MAX_CHANGES:,} changes, the most allowed; export the "
                               "corrected dataset and start from it")
        change = Change(action, paths, label if action is Action.RELABEL else "", reason[:MAX_REASON],
                        version=version.number + 1)
        return DatasetVersion(version.root, version.number + 1, (*version.changes, change))

    return _updated(root, folder, add)


def undo(root: str | os.PathLike, made_by: int | None = None, folder: str | os.PathLike | None = None
         ) -> tuple[DatasetVersion, Change]:
    """Take back one change (the one that made version ``made_by``; the latest when None): a new version without
    it. Returns the new version and the change taken back."""
    taken: list[Change] = []

    def take_back(version: DatasetVersion) -> DatasetVersion:
        if not version.changes:
            raise DatasetError("nothing to undo: this data has no changes (v0 is the folder as it is)")
        target = version.changes[-1].version if made_by is None else made_by
        kept = tuple(c for c in version.changes if c.version != target)
        if len(kept) == len(version.changes):
            raise DatasetError(f"no change made version v{target} (changes in force: "
                               + ", ".join(f"v{c.version}" for c in version.changes) + ")")
        taken.extend(c for c in version.changes if c.version == target)
        return DatasetVersion(version.root, version.number + 1, kept)

    version = _updated(root, folder, take_back)
    return version, taken[0]


def set_aside(root: str | os.PathLike, folder: str | os.PathLike | None = None) -> Path | None:
    """Rename a damaged version file out of the way (the Dataset page's button); its new name, or None."""
    path = version_file(root, folder)
    if not path.exists():
        return None
    aside = path.with_name(f"{path.stem}.damaged-{int(time.time())}.json")
    path.rename(aside)
    return aside


# ----------------------------------------------------------------------------- exporting
def export_lists(split: Split, version: DatasetVersion, out: str | os.PathLike) -> Path:
    """The corrected split as list files (train.txt, val.txt, test.txt, classes.json, version.json) in ``out``,
    which must be outside the data root. Returns ``out``."""
    # deferred: split.write_split lives beside split_dataset; imported here to keep this module's top light
    from .split import write_split

    target = _outside(split.root, out)
    write_split(split, target, overwrite=True)
    atomic_write_text(target / "version.json", json.dumps({"root": split.root, "version": version.name,
                                                            "changes": [c.to_json() for c in version.changes]}))
    return target


def export_copy(split: Split, out: str | os.PathLike, progress=lambda done, total: None) -> int:
    """A corrected copy of the images: ``out/<class>/<file>`` for every kept image, under its corrected class.
    ``out`` must be outside the data root and empty (or missing); nothing is overwritten. Returns the images
    copied; ``progress(done, total)`` hears each one."""
    target = _outside(split.root, out)
    if target.exists() and any(target.iterdir()):
        raise DatasetError(f"'{target}' is not empty; give a new folder (nothing is overwritten)")
    samples = [*split.train, *split.val, *split.test]
    for done, (path, label) in enumerate(samples, 1):
        folder = target / split.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        name = Path(path).name
        destination = folder / name
        if destination.exists():  # two classes' files of one name landing in one class: keep both
            destination = folder / f"{Path(path).parent.name}-{name}"
        shutil.copy2(path, destination)
        progress(done, len(samples))
    return len(samples)


def _outside(root: str, out: str | os.PathLike) -> Path:
    target = Path(out).expanduser().resolve()
    base = Path(root).expanduser().resolve()
    if target == base or base in target.parents:
        raise DatasetError(f"'{target}' is inside the data root '{base}'; export outside it (the folder is never "
                           "written)")
    return target
