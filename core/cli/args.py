"""What every command shares: argument types that refuse words, nan and inf, the parser that prints one
``error: …`` line, the training flags made from TrainConfig's fields, and progress lines."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

from ..platform.errors import ConfigError
from ..spec.archs import OFFLINE_ARCH, PREFERRED_ARCH
from ..spec.config import TrainConfig, field_default, field_range
from ..spec.records import Final

EXIT_USER_ERROR = 2


def number(low, high, kind: type = int):
    """An argparse type for a ``kind`` from ``low`` to ``high`` (inclusive); words, nan and inf are refused."""
    def parse(text: str):
        try:
            value = kind(text) if kind is int else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be from {low:,} to {high:,}, got {text}")
        return value
    return parse


def field_type(name: str):
    """The flag type of a TrainConfig field: its own range, so the flag refuses what the config would."""
    low, high = field_range(name)
    return number(low, high, type(field_default(name)))


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: one line, exit 2, like ours
        self.exit(EXIT_USER_ERROR, f"error: {message} (see {self.prog} --help)\n")


WEIGHTS_HELP = ("pretrained (default: found on this machine, as the app does), none (random initialisation) "
                "or a state-dict FILE")


def drain(stream) -> Final | None:
    """Run a record stream to its end (a rank that prints nothing); its Final record."""
    final = None
    for record in stream:
        if isinstance(record, Final):
            final = record
    return final


def train_flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, its default and help text taken from the field."""
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("flag") == "":
            continue
        names = [train_flag(f), *f.metadata.get("aliases", ())]
        text = f.metadata["help"].replace("%", "%%")  # a share in the text, not an argparse format
        if isinstance(f.default, bool):
            if f.default:
                parser.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false",
                                    help=f"turn off: {text}")
            else:
                parser.add_argument(*names, dest=f.name, action="store_true", help=text)
            continue
        kind = field_type(f.name) if f.metadata.get("low") is not None else str
        if f.name == "arch":  # no default here: without --arch the app's rule picks one (weights.default_arch)
            parser.add_argument(*names, dest=f.name, default=None, help=text + (
                f" (default: {PREFERRED_ARCH} when its pretrained weights are on this machine, else {OFFLINE_ARCH})"))
            continue
        parser.add_argument(*names, dest=f.name, type=kind, default=f.default, choices=f.metadata.get("choices"),
                            help=text + (f" (default {f.default})" if f.default is not None else ""))


def config_from_args(args) -> tuple[TrainConfig, str]:
    """The run's config, and a note to print once it proved valid (why the architecture was chosen)."""
    from ..models.weights import NO_WEIGHTS, PRETRAINED, default_arch, resolve_weights
    from ..spec.archs import get_arch

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    if not values["data_root"] and not values["lists_dir"]:
        raise ConfigError("train needs --data ROOT (class folders) or --lists DIR (train.txt / test.txt)")
    why = ""
    if values["arch"] is None:  # no --arch: what the app does (resnet18 when its weights are here)
        values["arch"], why = default_arch(args.weights if args.weights not in (PRETRAINED, NO_WEIGHTS) else None)
    if getattr(args, "exclude_file", None):
        from ..analysis.datacheck import read_path_list

        values["exclude"] = tuple(read_path_list(args.exclude_file))
    if getattr(args, "keep_together_file", None):
        from ..analysis.datacheck import duplicate_groups_from_json

        values["keep_together"] = tuple(tuple(g) for g in duplicate_groups_from_json(args.keep_together_file))
    if values["data_root"] and not getattr(args, "no_version", False):
        values.update(_version_fields(values["data_root"], values.get("keep_together") or ()))
    cfg = TrainConfig(**values)
    cfg.weights = resolve_weights(get_arch(cfg.arch), args.weights)
    return cfg, why


def _version_fields(data_root: str, keep_together) -> dict:
    """The data root's dataset version (``fix``) as config fields: a run reads the data as the user corrected it."""
    from ..data.versions import load_version

    fields = load_version(data_root).config_fields()
    fields["keep_together"] = (*keep_together, *fields["keep_together"])
    return fields


def progress_line(describe):
    """A progress record's line on stderr: the first and the last, and on a terminal one a second between."""
    last = [0.0]

    def show(record) -> None:
        if not hasattr(record, "done"):
            return
        now = time.monotonic()
        if record.done in (0, record.total) or (sys.stderr.isatty() and now - last[0] >= 1.0):
            last[0] = now
            print(describe(record), file=sys.stderr, flush=True)
    return show


def download_line(done: int, total: int | None) -> None:
    if sys.stdout.isatty():
        print(f"\rdownloading… {done / 1e6:.0f} MB" + (f" of {total / 1e6:.0f} MB" if total else ""), end="",
              flush=True)


def check_data_first(cfg: TrainConfig) -> None:
    """Refuse bad data before a run folder is made for it."""
    from ..data.split import read_split

    if cfg.data_root and not Path(cfg.data_root).is_dir():
        raise ConfigError(f"data root '{cfg.data_root}' is not a folder; give a folder with one sub-folder per class")
    if cfg.lists_dir:
        read_split(cfg.lists_dir)


def add_run_settings(p) -> None:
    """The settings of a run, for a command that works with the run's model and cache without training it."""
    add_train_flags(p)
    p.add_argument("--weights", default="pretrained", help=WEIGHTS_HELP)
    p.add_argument("--cache-dir", help="where cached backbone features are kept (default: the workspace's cache)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache on disk")



def print_class_scores(per_class, averages, most_confused, shown: int | None = None) -> None:
    """The per-class table (precision, recall, F1, support) and the most confused pairs, as ``report`` and a scored
    ``predict`` print them; ``shown``: at most this many classes (the JSON has them all)."""
    listed = per_class if shown is None else per_class[:shown]
    print(f"{'class':<24} precision  recall     f1  support")
    for s in [*listed, *averages]:
        print(f"{s.name:<24} {s.precision:9.3f} {s.recall:7.3f} {s.f1:6.3f} {s.support:8d}")
    if len(listed) < len(per_class):
        print(f"… and {len(per_class) - len(listed):,} more classes (--json has them all)")
    for pair in most_confused[:5]:
        print(f"most confused: {pair.sentence()}")
