"""What a user needs to choose an architecture: size, input, ImageNet accuracy, speed here, weights here.

Everything comes from the table (``core.spec.archs``), the weights' own meta, the weights manager and the
benchmark's measurements; nothing is typed in. Speeds are the frozen feature pass (what a default run
spends its time on), measured by ``python bench/benchmark.py --only archs``: on this machine when that
has been run here (the file in the workspace), else the figures the project measured on its reference
machine (``bench/arch_speed.json``), and the chooser says which.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..platform.io import atomic_write_json, read_json_file
from ..platform.workspace import workspace_dir
from ..spec.archs import ARCHITECTURES, get_arch
from .weights import find_weights, list_sources

REFERENCE_SPEEDS = Path(__file__).resolve().parents[2] / "bench" / "arch_speed.json"  # core/models/ → the repository
MAX_SPEED_FILE = 1 << 20  # a few kB in practice; a larger file is not ours


def measured_speeds_file() -> Path:
    """Where the benchmark keeps this machine's figures."""
    return workspace_dir() / "arch_speed.json"


@dataclass(frozen=True)
class Speed:
    images_per_s: float
    peak_rss_mib: float | None
    batch: int | None
    where: str  # "this machine" or the reference machine's description

    @property
    def seconds_per_100(self) -> float:
        return 100 / self.images_per_s


@dataclass(frozen=True)
class ArchChoice:
    name: str
    summary: str
    parameters: int
    input_size: int
    imagenet_top1: float | None  # percent, from the weights' meta
    speed: Speed | None  # the frozen feature pass; None when never measured
    weights_here: str | None  # where the weights are on this machine (a path), None when they are not
    looked_in: tuple[str, ...]  # every place searched, in order (for "no weights here")
    offline: bool  # the weights ship with the app (a pip package)

    @property
    def weights_status(self) -> str:
        if not self.weights_here:
            return "no"
        return "yes (in the app)" if self.offline else "yes"


def places_looked(sources) -> tuple[str, ...]:
    """Where the weights manager looked on this machine (``weights.list_sources``; a download is not a place)."""
    return tuple(s.path or s.kind for s in sources if s.kind != "download")


def _finite_positive(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def read_speeds(path: Path, where: str | None = None) -> dict[str, Speed]:
    """The figures in a speed file; {} when it is missing, damaged or not ours (a page must never fail on it)."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_SPEED_FILE:
            return {}
        data = read_json_file(path)
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("archs"), dict):
        return {}
    label = where or f"the project's reference machine ({str(data.get('machine') or 'not described')[:200]})"
    speeds = {}
    for name, row in data["archs"].items():
        if name not in ARCHITECTURES or not isinstance(row, dict):
            continue
        rate = _finite_positive(row.get("images_per_s"))
        if rate is None:
            continue
        batch = row.get("batch")
        speeds[name] = Speed(rate, _finite_positive(row.get("peak_rss_mib")),
                             batch if isinstance(batch, int) and not isinstance(batch, bool) and batch > 0 else None,
                             label)
    return speeds


def known_speeds() -> dict[str, Speed]:
    """This machine's figures where measured, the reference machine's for the rest."""
    speeds = read_speeds(REFERENCE_SPEEDS)
    speeds.update(read_speeds(measured_speeds_file(), where="this machine"))
    return speeds


def write_speeds(path: Path, machine: str, rows: dict[str, dict]) -> None:
    """The benchmark's figures: {arch: {images_per_s, peak_rss_mib, batch}}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"machine": machine, "archs": rows})


def describe(name: str, speeds: dict[str, Speed] | None = None,
             user_file: str | os.PathLike | None = None) -> ArchChoice:
    spec = get_arch(name)
    speeds = known_speeds() if speeds is None else speeds
    found = find_weights(spec, user_file)
    return ArchChoice(
        name=spec.name, summary=spec.summary, parameters=spec.num_params, input_size=spec.input_size,
        imagenet_top1=spec.imagenet_top1, speed=speeds.get(name),
        weights_here=(found.path or found.kind) if found else None,
        looked_in=places_looked(list_sources(spec, user_file)),
        offline=spec.packaged is not None,
    )


def architecture_choices() -> list[ArchChoice]:
    """Every architecture of the table, in its order."""
    speeds = known_speeds()
    return [describe(name, speeds) for name in ARCHITECTURES]


def offline_choices() -> list[str]:
    """The architectures whose weights ship with the app and are installed."""
    return [name for name, spec in ARCHITECTURES.items() if spec.packaged and _installed(spec.packaged.path())]


def _installed(path: str | None) -> bool:
    return path is not None and Path(path).is_file()


def _weights_text(name: str) -> str:
    spec = get_arch(name)
    if spec.packaged:
        return f"ship with the app (`{spec.packaged.package}`)"
    return f"torchvision `{spec.weights!r}`"


def markdown_table() -> str:
    """The docs' architecture table (docs/architectures.md), from the table, the weights' meta and the shipped
    reference speeds
    (never this machine's, so the docs do not depend on where it is generated)."""
    speeds = read_speeds(REFERENCE_SPEEDS)
    lines = ["| arch | head | last stage (`--freeze last_block`) | parameters | input | ImageNet top-1 | weights "
             "| s / 100 images |",
             "| --- | --- | --- | ---: | ---: | ---: | --- | ---: |"]
    for name, spec in ARCHITECTURES.items():
        choice = describe(name, speeds)
        variants = " or ".join(f"`{v.name}`" for v in spec.variants)
        stage = ", ".join(f"`{m}`" for m in spec.last_stage)
        top1 = f"{choice.imagenet_top1:.1f}%" if choice.imagenet_top1 is not None else "-"
        speed = f"{choice.speed.seconds_per_100:.1f}" if choice.speed else "-"
        lines.append(f"| `{name}` | `{spec.head}` ({variants}) | {stage} | {choice.parameters / 1e6:.1f} M "
                     f"| {choice.input_size} | {top1} | {_weights_text(name)} | {speed} |")
    return "\n".join(lines)


def text_table(choices: list[ArchChoice]) -> str:
    """The chooser as plain text, for ``python -m core archs``."""
    rows = [("architecture", "params", "input", "top-1", "s/100", "weights here")]
    for c in choices:
        rows.append((c.name, f"{c.parameters / 1e6:.1f} M", f"{c.input_size} px",
                     f"{c.imagenet_top1:.1f}%" if c.imagenet_top1 is not None else "-",
                     f"{c.speed.seconds_per_100:.1f}" if c.speed else "-",
                     c.weights_status + ("" if c.offline else f": {c.weights_here}") if c.weights_here
                     else "no (looked in " + ", ".join(c.looked_in) + ")"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    where = sorted({c.speed.where for c in choices if c.speed})
    lines.append(f"s/100: seconds per 100 images of the frozen feature pass, measured on {' and '.join(where)}"
                 if where else "s/100: not measured (python bench/benchmark.py --only archs)")
    return "\n".join(lines)
