"""Prediction from a finished run: rebuild the model from the checkpoint's own config."""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from ..data.datasets import Preprocess, build_transform
from ..data.images import ImageSource, open_image
from ..data.split import IMG_EXTENSIONS, MAX_CLASSES, has_file_allowed_extension
from ..models.surgery import adapt_model
from ..models.weights import check_finite, load_state_dict_file
from ..platform.accel import as_input, inference_copy, resolve_device, to_channels_last
from ..platform.errors import RunError, UserError, WeightsError, not_finite_message
from ..runs.checkpoint import read_checkpoint
from ..runs.rundir import RunDir
from ..spec.archs import get_arch
from ..spec.config import TrainConfig


def checkpoint_path(run_or_file: str | os.PathLike) -> Path:
    path = Path(run_or_file)
    if path.is_dir():
        found = RunDir(path).checkpoint()
        if found is None:
            raise RunError(f"run '{path}' has no checkpoint yet; wait for its first epoch to finish")
        return found
    if not path.is_file():
        raise RunError(f"'{path}' is neither a run folder nor a checkpoint file")
    return path


def _class_names(classes: str | None) -> list[str]:
    if not classes:
        raise RunError("a bare state dict names no classes; give --classes a,b,… in label order (or a file)")
    path = Path(classes)
    names = path.read_text(encoding="utf-8").split() if path.is_file() else classes.split(",")
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise RunError(f"no class names in {classes!r}")
    return names


def read_temperature(run_or_file: str | os.PathLike) -> tuple[float | None, int | None]:
    """The temperature the checkpoint prediction uses keeps, and that checkpoint's epoch."""
    checkpoint = read_checkpoint(checkpoint_path(run_or_file))
    return checkpoint.temperature, checkpoint.epoch


@dataclass
class Predictor:
    model: torch.nn.Module
    classes: list[str]
    transform: Preprocess
    config: TrainConfig
    epoch: int
    source: str
    temperature: float | None = None  # divides the logits for calibrated probabilities; None: raw only

    @classmethod
    def _build(cls, cfg: TrainConfig, classes: list[str], state: dict, epoch: int, source: str,
               device: str = "auto", fold: bool = True, temperature: float | None = None) -> "Predictor":
        if not 0 < len(classes) <= MAX_CLASSES:  # the class count sizes the head before anything is checked
            raise RunError(f"'{source}' names {len(classes):,} classes; a model here has 1 to {MAX_CLASSES:,}")
        where = resolve_device(device)  # the GPU when there is one
        # weights=None: the state overwrites every tensor, no need to read the pretrained file.
        model, _ = adapt_model(cfg.arch, len(classes), head_variant=cfg.head_variant, freeze="all")
        try:
            check_finite(state, source)
            model.load_state_dict(state)
        except WeightsError as exc:
            raise RunError(str(exc)) from None
        except (RuntimeError, TypeError, AttributeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RunError(f"'{source}' does not fit {cfg.arch} with {len(classes)} classes ({first[:200]})") from None
        # Folding BatchNorm pays off over many images (the page keeps its predictor); tracing the model
        # for it costs more than it saves on a single one (the CLI's cold predict).
        model = inference_copy(model.to(where)) if fold else to_channels_last(model.to(where).eval())
        transform = build_transform(get_arch(cfg.arch).transforms(), letterbox=cfg.uses_letterbox)
        return cls(model, classes, transform, cfg, epoch, source, temperature)

    @classmethod
    def load(cls, run_or_file: str | os.PathLike, device: str = "auto", fold: bool = True) -> "Predictor":
        """A model from a run folder or a checkpoint this tool wrote (it carries its config and classes)."""
        path = checkpoint_path(run_or_file)
        checkpoint = read_checkpoint(path)
        cfg = checkpoint.train_config(path)
        return cls._build(cfg, checkpoint.classes[:MAX_CLASSES + 1], checkpoint.model, checkpoint.epoch or 0,
                          str(path), device, fold, checkpoint.temperature)

    @classmethod
    def from_state_dict(cls, file: str | os.PathLike, *, arch: str | None, classes: str | None,
                        head_variant: str | None = None, device: str = "auto", fold: bool = True) -> "Predictor":
        """A model from a bare state dict, such as the tutorial's ``model_resnet18.pth``."""
        if not arch:
            raise RunError("a bare state dict does not say its architecture; give --arch")
        names = _class_names(classes)
        path = Path(file)
        if not path.is_file():
            raise RunError(f"'{path}' is not a file")
        state, _ = load_state_dict_file(path)
        cfg = TrainConfig(arch=arch, head_variant=head_variant)  # a model, no data: nothing to train
        return cls._build(cfg, names, state, 0, str(path), device, fold)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def probabilities(self, image: ImageSource, *, calibrated: bool = True, tta: str | None = None) -> torch.Tensor:
        """Probabilities over all classes (they sum to 1): calibrated by the run's temperature when it has one
        (``calibrated=False``: the raw softmax), averaged over test-time augmented views when ``tta`` names
        a mode (core.analysis.report.TTA_MODES)."""
        image = self.open(image)
        if tta:
            return self.batch_probabilities(self.views(image, tta), calibrated=calibrated).mean(0)
        return self.batch_probabilities(self.transform(image).unsqueeze(0), calibrated=calibrated)[0]

    def open(self, image: ImageSource):
        """The image decoded for this model: a large JPEG at reduced scale, never below what the
        preprocessing keeps (core.data.images.open_image)."""
        return open_image(image, min_side=self.transform.decode_min_side)

    def views(self, image, mode: str) -> torch.Tensor:
        """The test-time augmented views of an opened image, the plain one first."""
        try:
            return self.transform.views(image, mode)
        except ValueError as exc:
            raise RunError(str(exc)) from None

    @property
    def calibration_label(self) -> str:
        return (f"calibrated (temperature {self.temperature:.2f})" if self.temperature is not None
                else "raw (this run keeps no temperature)")

    def batch_probabilities(self, batch: torch.Tensor, *, calibrated: bool = True) -> torch.Tensor:
        """(n, classes) probabilities for a batch of preprocessed images; ``calibrated``: softmax(logits / T)
        with the run's temperature T, when it has one."""
        logits = self.batch_logits(batch)
        if calibrated and self.temperature is not None:
            logits = logits / self.temperature
        probabilities = logits.softmax(1)
        if not bool(torch.isfinite(probabilities).all()):  # finite logits that overflow once divided by T
            raise RunError(not_finite_message(self.source))
        return probabilities

    def batch_logits(self, batch: torch.Tensor) -> torch.Tensor:
        """(n, classes) logits on the CPU, checked finite."""
        x = as_input(batch, self.device)
        # bf16 on a GPU (tensor cores), full precision on the CPU
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        with torch.inference_mode(), autocast:
            logits = self.model(x).float()
        if not bool(torch.isfinite(logits).all()):
            raise RunError(not_finite_message(self.source))
        return logits.cpu()

    def predict(self, image: ImageSource, topk: int = 5, *, calibrated: bool = True,
                tta: str | None = None) -> list[tuple[str, float]]:
        probs = self.probabilities(image, calibrated=calibrated, tta=tta)
        values, indices = probs.topk(min(topk, len(self.classes)))
        return [(self.classes[i], v) for v, i in zip(values.tolist(), indices.tolist())]


# ----------------------------------------------------------------------------- many images
class Step(NamedTuple):
    """How far a batch prediction is: images done of the total."""
    done: int
    total: int


@dataclass
class Row:
    """One image's prediction in a batch: its top class, that class's probability, the top k."""
    path: str
    top_class: str | None
    probability: float | None
    topk: list[tuple[str, float]]
    error: str = ""

    def csv_fields(self) -> list:
        return [self.path, self.top_class or "", "" if self.probability is None else f"{self.probability:.6f}",
                "; ".join(f"{c}:{p:.6f}" for c, p in self.topk), self.error]


CSV_HEADER = ["path", "top_class", "probability", "topk", "error"]


def image_files(folder: str | os.PathLike) -> list[str]:
    """Every image under ``folder`` (recursively, hidden files left out), sorted."""

    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(os.fspath(folder)):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames)
                  if not f.startswith(".") and has_file_allowed_extension(f, IMG_EXTENSIONS)]
    return found


def predict_many(predictor: "Predictor", paths: list[str], *, topk: int = 5, batch_size: int = 16,
                 calibrated: bool = True):
    """Predict ``paths`` in batches, in inference mode. A generator: yields a Step (done, total) as it goes
    (for a progress bar), returns one Row per path, in order; an unreadable image gets its error."""
    rows: list[Row | None] = [None] * len(paths)
    k = min(topk, len(predictor.classes))
    for start in range(0, len(paths), batch_size):
        tensors, where = [], []
        for i in range(start, min(start + batch_size, len(paths))):
            try:
                tensors.append(predictor.transform(predictor.open(paths[i])))
                where.append(i)
            except UserError as exc:
                rows[i] = Row(paths[i], None, None, [], str(exc))
        if tensors:
            probs = predictor.batch_probabilities(torch.stack(tensors), calibrated=calibrated)
            values, indices = probs.topk(k, dim=1)
            for i, v, c in zip(where, values.tolist(), indices.tolist()):
                top = [(predictor.classes[j], p) for j, p in zip(c, v)]
                rows[i] = Row(paths[i], top[0][0], top[0][1], top)
        yield Step(min(start + batch_size, len(paths)), len(paths))
    return rows
