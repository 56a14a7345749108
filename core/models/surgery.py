"""Model surgery: adapt an ImageNet model to N classes, load pretrained weights, freeze.

Follows the tutorial step by step (build, swap the head, pop the head's keys from the
pretrained state dict, drop keys the model lacks, update and load, freeze) and returns a
``SurgeryReport`` of everything that happened, in the spirit of ``load_state_dict``'s
incompatible-keys result.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..platform.errors import ConfigError
from ..spec.archs import get_arch
from ..spec.config import FREEZE_MODES
from .weights import check_fits, load_state_dict_file


@dataclass
class ParamInfo:
    name: str
    shape: list[int]
    numel: int
    trainable: bool


@dataclass
class SurgeryReport:
    arch: str
    head_variant: str
    num_classes: int
    weights_source: str  # a file path, or "random initialisation"
    pretrained: bool
    head_name: str
    head_kind: str
    head_before: str
    head_after: str
    head_in_features: int
    head_out_features: int
    architecture_before: str
    architecture_after: str
    freeze: str
    trained_modules: list[str] = field(default_factory=list)  # what trains in this freeze mode ("" = everything)
    modes: dict[str, list[str]] = field(default_factory=dict)  # the same for every freeze mode, to compare
    popped_keys: list[str] = field(default_factory=list)
    dropped_keys: list[str] = field(default_factory=list)
    loaded_keys: int = 0
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    parameters: list[ParamInfo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def trainable(self) -> list[ParamInfo]:
        return [p for p in self.parameters if p.trainable]

    @property
    def frozen(self) -> list[ParamInfo]:
        return [p for p in self.parameters if not p.trainable]

    @property
    def trainable_count(self) -> int:
        return sum(p.numel for p in self.trainable)

    @property
    def frozen_count(self) -> int:
        return sum(p.numel for p in self.frozen)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(trainable_count=self.trainable_count, frozen_count=self.frozen_count)
        return d

    def format(self, architectures: bool = True) -> str:
        lines = [
            f"architecture : {self.arch} (head variant: {self.head_variant}) for {self.num_classes} classes",
            f"weights      : {self.weights_source}",
            f"head         : {self.head_name}: {self.head_before} → {self.head_kind} by {self.head_after}",
            f"popped keys  : {_key_list(self.popped_keys)}",
            f"dropped keys : {_key_list(self.dropped_keys)}",
            f"loaded keys  : {self.loaded_keys}",
            f"missing keys : {_key_list(self.missing_keys)}",
            f"unexpected   : {_key_list(self.unexpected_keys)}",
            f"freeze       : {self.freeze} ({FREEZE_MODES[self.freeze]})",
            f"trainable    : {self.trainable_count:,} parameters in {len(self.trainable)} tensors "
            f"({', '.join(p.name for p in self.trainable[:6])}{' …' if len(self.trainable) > 6 else ''})",
            f"frozen       : {self.frozen_count:,} parameters in {len(self.frozen)} tensors",
        ]
        lines += [f"note         : {n}" for n in self.notes]
        if architectures:
            lines += ["", "--- before ---", self.architecture_before, "", "--- after ---", self.architecture_after]
        return "\n".join(lines)


def _key_list(keys: list[str], limit: int = 8) -> str:
    if not keys:
        return "(none)"
    shown = ", ".join(keys[:limit])
    return f"{shown} … ({len(keys)} in all)" if len(keys) > limit else shown


def _is_under(name: str, module_name: str) -> bool:
    return module_name == "" or name == module_name or name.startswith(module_name + ".")


def trained_modules(arch: str, head_name: str, mode: str) -> list[str]:
    """The modules whose parameters train in freeze ``mode`` ("" is the whole model), from the table."""
    if mode not in FREEZE_MODES:
        raise ConfigError(f"freeze mode '{mode}' does not exist; allowed: {', '.join(FREEZE_MODES)}")
    return {"head": [head_name], "last_block": [*get_arch(arch).last_stage, head_name], "all": [""]}[mode]


def freeze_model(model: nn.Module, modules: list[str]) -> None:
    """Only the parameters under ``modules`` train."""
    for name, param in model.named_parameters():
        param.requires_grad = trains_in(modules, name)


def set_train_mode(model: nn.Module, modules: list[str]) -> None:
    """Put the modules that train in training mode, keeping the frozen part in eval mode.

    A frozen part is a fixed function only if its BatchNorm layers use their running
    statistics and its dropout is off (fastai's ``train_bn=False`` choice); it is also what
    makes its cached output give the same result as the full forward pass.
    """
    model.eval()
    for name in modules:
        model.get_submodule(name).train()


@dataclass
class _Loading:
    popped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _load_pretrained(model: nn.Module, spec, change, weights) -> _Loading:
    """The recipe: pop the old head's keys, drop keys the model lacks, check the fit, update and load."""
    state, notes = load_state_dict_file(weights)
    model_state = model.state_dict()
    popped = [k for k in change.popped_keys if state.pop(k, None) is not None]
    dropped = sorted(k for k in state if k not in model_state)
    state = {k: v for k, v in state.items() if k in model_state}
    check_fits(spec, state, model_state, change.head_name, str(weights))
    model_state.update(state)
    unexpected = list(model.load_state_dict(model_state).unexpected_keys)
    missing = [k for k in model_state if k not in state]
    if missing:
        notes.append("missing keys are expected when the model is being adapted: "
                     "they belong to the new head and start from random initialisation")
    return _Loading(popped, dropped, len(state), missing, unexpected, notes)


def _random_init(model: nn.Module, freeze: str) -> _Loading:
    notes = ["no weights file: every layer starts from random initialisation (training from scratch)"]
    if freeze != "all":
        notes.append("with random weights and a frozen body, layers that never learn feed the ones that "
                     "train (with only the head training, a linear classifier on random features); choose "
                     "'every layer trains' (--freeze all) to train from scratch properly")
    return _Loading(missing=list(model.state_dict()), notes=notes)


def adapt_model(arch: str, num_classes: int, *, weights: str | os.PathLike | None = None,
                head_variant: str | None = None, freeze: str = "head", seed: int | None = None
                ) -> tuple[nn.Module, SurgeryReport]:
    """Build ``arch`` for ``num_classes``, load pretrained weights from a file, freeze; report it all."""
    spec = get_arch(arch)
    variant = spec.variant(head_variant)
    if num_classes < 1:
        raise ConfigError(f"number of classes must be at least 1, got {num_classes}")
    if seed is not None:
        torch.manual_seed(seed)  # the new head's initial weights depend on it
    model = spec.build()
    before = str(model)
    change = variant.apply(model, spec.head, num_classes)

    loading = _load_pretrained(model, spec, change, weights) if weights is not None else _random_init(model, freeze)
    notes = ([change.note] if change.note else []) + loading.notes
    freeze_model(model, trained_modules(arch, change.head_name, freeze))  # an unknown mode is refused here
    modes = {mode: trained_modules(arch, change.head_name, mode) for mode in FREEZE_MODES}
    params = [ParamInfo(n, list(p.shape), p.numel(), p.requires_grad) for n, p in model.named_parameters()]
    report = SurgeryReport(
        arch=spec.name, head_variant=variant.name, num_classes=num_classes,
        weights_source=str(weights) if weights is not None else "random initialisation",
        pretrained=weights is not None, head_name=change.head_name, head_kind=change.kind,
        head_before=change.before, head_after=change.after,
        head_in_features=change.in_features, head_out_features=change.out_features,
        architecture_before=before, architecture_after=str(model), freeze=freeze,
        trained_modules=modes[freeze], modes=modes,
        popped_keys=loading.popped, dropped_keys=loading.dropped, loaded_keys=loading.loaded,
        missing_keys=loading.missing, unexpected_keys=loading.unexpected, parameters=params, notes=notes,
    )
    return model, report


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def trains_in(modules: list[str], parameter: str) -> bool:
    """Whether ``parameter`` trains when ``modules`` do (a report's ``modes[mode]``: the Surgery page's columns)."""
    return any(_is_under(parameter, m) for m in modules)


def optimizer_groups(model: nn.Module, head_name: str, lr: float, body_factor: float) -> list[dict]:
    """The trainable parameters in SGD groups: the head at ``lr``, the body's trainable layers at
    ``lr × body_factor`` (fastai's discriminative learning rates: pretrained layers move slower)."""
    head: list[nn.Parameter] = []
    body: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (head if _is_under(name, head_name) else body).append(param)
    groups = [{"params": head, "lr": lr, "name": "head"}]
    if body:
        groups.append({"params": body, "lr": lr * body_factor, "name": "body"})
    return groups
