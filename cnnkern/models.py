"""The networks cnnkern trains, each with its training recipe.

Every model is defined once with torch.nn layers; `build(name, layers="cnnkern")`
is `cnnkern.convert` of that definition, so both variants have the same
modules at the same paths and load each other's state_dict. That is what lets
the two be compared step by step from the same initial weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .convert import convert


@dataclass(frozen=True)
class Recipe:
    """A model's training defaults (the flags of `python -m cnnkern train`)."""

    dataset: str
    epochs: int
    batch_size: int
    lr: float
    optimizer: str  # "sgd" | "adam"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    schedule: str = "constant"  # "constant" | "onecycle": linear warm-up over warmup_frac, then linear decay to 0
    warmup_frac: float = 0.0
    crop_padding: int = 0
    flip: bool = False
    gpu_dtype: str = "float32"  # activation dtype on a GPU; the CPU always trains in float32
    gpu_channels_last: bool = False
    note: str = ""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    recipe: Recipe
    factory: object = field(repr=False)


def _mnist_lenet() -> nn.Module:
    # The classic course network: pooling before the ReLU, as in pytorch/examples' first MNIST net.
    return nn.Sequential(
        nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(10, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Linear(320, 10),
    )


def _mnist_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2304, 10),
    )


def _cifar_lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 5), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(800, 32), nn.ReLU(), nn.Linear(32, 10),
    )


class Scale(nn.Module):
    """Multiplies by a constant: cifar-fast's logit temperature (no parameters)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def _conv_bn(cin: int, cout: int, pool: bool) -> list[nn.Module]:
    # conv -> (pool) -> BN -> ReLU: pooling before the normalisation, as the fast
    # CIFAR-10 recipes do (4x less BN work); BN directly followed by ReLU is what
    # convert() fuses into BatchNormReLU2d.
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers + [nn.BatchNorm2d(cout), nn.ReLU()]


def _cifar_fast() -> nn.Module:
    widths = (64, 256, 256)
    layers = _conv_bn(3, 32, pool=False)
    cin = 32
    for width in widths:
        layers += _conv_bn(cin, width, pool=True) + _conv_bn(width, width, pool=False)
        cin = width
    layers += [nn.MaxPool2d(4), nn.Flatten(), nn.Linear(cin, 10, bias=False), Scale(1 / 8)]
    return nn.Sequential(*layers)


MODELS: dict[str, ModelSpec] = {
    "mnist-lenet": ModelSpec(
        "mnist-lenet", (1, 28, 28), 10,
        Recipe("mnist", epochs=10, batch_size=64, lr=0.01, optimizer="sgd", momentum=0.5,
               note="about 98% after 10 epochs"),
        _mnist_lenet),
    "mnist-cnn": ModelSpec(
        "mnist-cnn", (1, 28, 28), 10,
        Recipe("mnist", epochs=5, batch_size=64, lr=1e-3, optimizer="adam", note="about 99%"),
        _mnist_cnn),
    "cifar-lenet5": ModelSpec(
        "cifar-lenet5", (3, 32, 32), 10,
        Recipe("cifar10", epochs=10, batch_size=128, lr=1e-3, optimizer="adam"),
        _cifar_lenet5),
    "cifar-fast": ModelSpec(
        "cifar-fast", (3, 32, 32), 10,
        Recipe("cifar10", epochs=10, batch_size=1024, lr=0.4, optimizer="sgd", momentum=0.9, nesterov=True,
               weight_decay=5e-4, label_smoothing=0.2, schedule="onecycle", warmup_frac=0.2, crop_padding=4,
               flip=True, gpu_dtype="bfloat16", gpu_channels_last=True,
               note="meant for a GPU: bfloat16, channels_last"),
        _cifar_fast),
}

DEFAULT_MODEL = {"mnist": "mnist-lenet", "fashion-mnist": "mnist-lenet", "idx": "mnist-lenet",
                 "cifar10": "cifar-lenet5"}
# Data sets a model's recipe data set stands for: every MNIST-format set has MNIST's image shape.
FAMILY = {"mnist": "mnist", "fashion-mnist": "mnist", "idx": "mnist", "cifar10": "cifar10"}

TORCHVISION = "torchvision:"
# How `torchvision:NAME` models train on CIFAR-10: a short ResNet-style recipe (SGD, one-cycle,
# crop and flip), bfloat16 and channels_last on a GPU.
TORCHVISION_RECIPE = Recipe("cifar10", epochs=10, batch_size=128, lr=0.05, optimizer="sgd", momentum=0.9,
                            nesterov=True, weight_decay=5e-4, schedule="onecycle", warmup_frac=0.15,
                            crop_padding=4, flip=True, gpu_dtype="bfloat16", gpu_channels_last=True,
                            note="a torchvision model, converted by cnnkern.convert")


def _torchvision_models():
    try:
        import torchvision
    except ImportError:
        raise ValueError(f"{TORCHVISION}NAME models need torchvision (pip install torchvision)") from None
    return torchvision.models


def _torchvision_model(name: str) -> nn.Module:
    return _torchvision_models().get_model(name, weights=None, num_classes=10)


def spec(name: str) -> ModelSpec:
    """The spec of model `name`: one of MODELS, or `torchvision:NAME` (any classification model of
    torchvision.models, untrained, 10 classes, for CIFAR-10's 3x32x32 images)."""
    if name in MODELS:
        return MODELS[name]
    if name.startswith(TORCHVISION) and name != TORCHVISION:
        tv = name[len(TORCHVISION):]
        zoo = _torchvision_models()
        if tv not in zoo.list_models(module=zoo):
            raise ValueError(f"torchvision has no classification model {tv!r} "
                             f"(torchvision.models.list_models(module=torchvision.models))")
        return ModelSpec(name, (3, 32, 32), 10, TORCHVISION_RECIPE, lambda: _torchvision_model(tv))
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}, or {TORCHVISION}NAME")


def build(name: str, layers: str = "cnnkern") -> nn.Module:
    """Model `name` (see spec()) with cnnkern layers (layers="cnnkern", through cnnkern.convert)
    or torch.nn layers (layers="torch"), freshly initialised by torch's own initialisers."""
    model_spec = spec(name)
    if layers not in ("cnnkern", "torch"):
        raise ValueError(f"layers must be 'cnnkern' or 'torch', got {layers!r}")
    model = model_spec.factory()
    return convert(model, inplace=True) if layers == "cnnkern" else model
