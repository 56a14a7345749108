"""Export a trained run for use outside this project: TorchScript or ONNX, each with a JSON sidecar
that says everything needed to feed the model (classes, input size, resize/crop, mean/std).

    python -m core export RUN_DIR --format torchscript|onnx [--out FILE]

The exported model takes a float batch (N, 3, crop, crop), already resized, centre-cropped and
normalised as the sidecar says, and returns logits; softmax(logits / temperature), with the sidecar's
temperature (core.calibration), gives the calibrated probabilities the app shows.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import ConfigError, RunError
from .io import atomic_file, atomic_write_json
from .predict import Predictor
from .rundir import RunDir

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}


def sidecar(predictor: Predictor, fmt: str, figures: dict) -> dict:
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
    atomic_write_json(side, sidecar(predictor, fmt, run_figures(run_dir)))
    return out, side


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
    from .figures import accuracy_of
    from .rundir import read_records

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
