"""Export a trained run for use outside this project: TorchScript or ONNX, each with a JSON sidecar
that says everything needed to feed the model (classes, input size, resize/crop, mean/std).

    python -m core export RUN_DIR --format torchscript|onnx [--out FILE]

The exported model takes a float batch (N, 3, crop, crop), already resized, centre-cropped and
normalised as the sidecar says, and returns logits; softmax(logits / temperature), with the sidecar's
temperature (core.training.calibration), gives the calibrated probabilities the app shows.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..platform.download import sha256_of
from ..platform.errors import ConfigError, RunError
from ..platform.figures import accuracy_of
from ..platform.io import atomic_file, atomic_write_json, read_json_file
from ..runs.checkpoint import read_checkpoint
from ..runs.files import read_records
from ..runs.rundir import RunDir
from .predict import Predictor, checkpoint_path

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}


def sidecar(predictor: Predictor, fmt: str, figures: dict, checkpoint: Path | None = None) -> dict:
    t = predictor.transform
    return {
        "format": fmt,
        "architecture": predictor.config.arch,
        "head_variant": predictor.config.head_variant or "replace",
        "classes": predictor.classes,
        "input": {"shape": [3, t.crop, t.crop], "dtype": "float32", "layout": "NCHW, batch first (any size)"},
        "preprocessing": {"resize_shorter_side": t.resize, "interpolation": t.mode, "centre_crop": t.crop,
                          "scale": "pixels / 255", "mean": t.mean.flatten().tolist(), "std": t.std.flatten().tolist(),
                          "letterbox": t.letterbox is not None},
        "output": ("logits, one per class in the order of 'classes'; softmax(logits / temperature) gives the "
                   "calibrated probabilities the app shows (plain softmax: the raw ones)"
                   if predictor.temperature is not None else
                   "logits, one per class in the order of 'classes'; softmax gives the (raw) probabilities"),
        "temperature": predictor.temperature,
        "epoch": predictor.epoch,
        # What it was exported from, so a later look can tell whether the run's checkpoint has changed since.
        "checkpoint": {"file": checkpoint.name, "sha256": sha256_of(checkpoint)} if checkpoint else None,
        **figures,
    }


def export(run_dir: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write the run's best model as ``fmt`` and its sidecar (``<file>.json``); return both paths."""
    if fmt not in FORMATS:
        raise ConfigError(f"export format '{fmt}' does not exist; allowed: {', '.join(FORMATS)}")
    predictor = Predictor.load(run_dir, device="cpu")
    model = predictor.model.eval()
    example = torch.zeros(1, 3, predictor.transform.crop, predictor.transform.crop)
    predictor.batch_probabilities(example)  # refuses a model whose outputs are not finite before anything is written
    out = Path(out) if out else RunDir(run_dir).export_file(predictor.config.arch, FORMATS[fmt])
    out.parent.mkdir(parents=True, exist_ok=True)
    export_model(model, fmt, example, out)
    side = out.with_suffix(out.suffix + ".json")
    atomic_write_json(side, sidecar(predictor, fmt, run_figures(run_dir), checkpoint_path(run_dir)))
    return out, side


@dataclass(frozen=True)
class StaleExport:
    """An exported model in a run's folder whose sidecar no longer matches the run's checkpoint."""
    file: str
    why: str

    def sentence(self) -> str:
        return f"{self.file} no longer matches this run's checkpoint ({self.why}); export it again before using it"


def stale_exports(run_dir: str | os.PathLike) -> list[StaleExport]:
    """The exports (``model_*.pt``/``.onnx`` with a ``.json`` sidecar) in a run folder made from another
    checkpoint than the one the run keeps now (a resumed run, a new best epoch), or for other classes. Reads
    only; a sidecar that cannot be read counts as not matching."""
    run = RunDir(run_dir)
    checkpoint = run.checkpoint()
    if checkpoint is None:
        return []
    current = None
    found = []
    for side in sorted([*run.path.glob("model_*.pt.json"), *run.path.glob("model_*.onnx.json")]):
        model_file = side.name.removesuffix(".json")
        try:
            meta = read_json_file(side, limit=MAX_SIDECAR_BYTES)
            recorded = meta.get("checkpoint") if isinstance(meta, dict) else None
            classes = meta.get("classes") if isinstance(meta, dict) else None
        except (OSError, UnicodeDecodeError, ValueError):
            found.append(StaleExport(model_file, "its sidecar cannot be read"))
            continue
        if current is None:
            current = _checkpoint_facts(checkpoint)
        why = _mismatch(recorded, classes, meta.get("epoch"), current)
        if why:
            found.append(StaleExport(model_file, why))
    return found


MAX_SIDECAR_BYTES = 64 * 1024**2  # 100,000 class names fit many times over


def _checkpoint_facts(checkpoint: Path) -> dict:
    read = read_checkpoint(checkpoint)
    return {"sha256": sha256_of(checkpoint), "classes": read.classes, "epoch": read.epoch}


def _mismatch(recorded, classes, epoch, current: dict) -> str:
    if classes != current["classes"]:
        return "it was exported for other classes"
    if isinstance(recorded, dict):
        return "" if recorded.get("sha256") == current["sha256"] else "the checkpoint has changed since it was exported"
    # Sidecars written before they named their checkpoint: the epoch is what can still be compared.
    if epoch != current["epoch"]:
        return f"it was exported from epoch {epoch}; the checkpoint is now epoch {current['epoch']}"
    return ""


def export_model(model: torch.nn.Module, fmt: str, example: torch.Tensor, out: Path) -> None:
    """Write ``model`` (in eval mode) as ``fmt`` to ``out``, traced on ``example``, with a batch size free to vary."""
    # ONNX has no operator for the fused attention that nn.MultiheadAttention uses in inference (ViT):
    # export through its plain ops. A process-wide switch, so it is put back at once.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        _trace_and_write(model, fmt, example, out)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _trace_and_write(model: torch.nn.Module, fmt: str, example: torch.Tensor, out: Path) -> None:
    with torch.inference_mode(False), torch.no_grad():
        if fmt == "torchscript":
            traced = torch.jit.trace(model, example)
            with atomic_file(out) as f:
                torch.jit.save(traced, f)
        else:
            _export_onnx(model, example, out)


def _export_onnx(model, example, out: Path) -> None:
    # deferred: only an ONNX export needs onnx
    import onnx

    tmp = out.with_name(f".{out.name}.partial")
    try:
        torch.onnx.export(model, (example,), str(tmp), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        onnx.checker.check_model(str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def run_figures(run_dir) -> dict:
    """What the run measured, as the report's --json and TensorBoard carry it: the validation accuracy that
    chose the epoch, and the test accuracy of that epoch's model with its 95% interval."""

    try:
        records = read_records(run_dir)
    except RunError:
        return {"chosen_on": None, "val_accuracy": None, "test": None, "test_accuracy": None}
    test = accuracy_of(records.test_acc, records.test_n)
    return {"chosen_on": records.chosen_on, "val_accuracy": records.val_acc,
            "test": test.to_json() if test else None, "test_accuracy": records.test_acc}


def export_bytes(run_dir: str | os.PathLike, fmt: str, folder: str | os.PathLike) -> tuple[bytes, bytes, str]:
    """The exported file's and sidecar's bytes, and the file name: for a download button."""
    path, side = export(run_dir, fmt, Path(folder) / f"model{FORMATS[fmt]}")
    return path.read_bytes(), side.read_bytes(), path.name
