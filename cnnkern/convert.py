"""cnnkern.convert: swap torch.nn layers for cnnkern's and back.

cnnkern's layers subclass their torch.nn counterparts and add no state, so a
conversion changes a module's class and nothing else: parameters, buffers,
hooks, train/eval mode, device and dtype stay as they were, and the state_dict
keys are unchanged. Only modules whose type is exactly a torch.nn class are
converted (a user subclass may override forward, so it is left alone).

Fusion: inside an nn.Sequential, an nn.BatchNorm2d directly followed by an
nn.ReLU becomes one BatchNormReLU2d, and the ReLU's slot holds a FusedReLU
placeholder so the indices, and therefore the state_dict keys, do not move.
Converting back restores the pair exactly. A ReLU applied in a custom
forward() cannot be seen from here, so such BatchNorms stay unfused.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from . import modules as K


class FusedReLU(nn.Identity):
    """Placeholder left where a ReLU was fused into the BatchNormReLU2d before it."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace


class BatchNorm2dReLU(nn.BatchNorm2d):
    """relu(nn.BatchNorm2d(x)) with torch's kernels: what a BatchNormReLU2d that
    has no FusedReLU placeholder after it converts back to."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(input))


_TO_CNNKERN = {
    nn.Conv2d: K.Conv2d,
    nn.MaxPool2d: K.MaxPool2d,
    nn.AvgPool2d: K.AvgPool2d,
    nn.AdaptiveAvgPool2d: K.AdaptiveAvgPool2d,
    BatchNorm2dReLU: K.BatchNormReLU2d,
}
_TO_TORCH = {v: k for k, v in _TO_CNNKERN.items()}


def _recast(module: nn.Module, cls: type) -> nn.Module:
    module.__class__ = cls
    return module


def _fuse_sequential(seq: nn.Sequential) -> None:
    names = list(seq._modules)
    for a, b in zip(names, names[1:]):
        bn, relu = seq._modules[a], seq._modules[b]
        if type(bn) is nn.BatchNorm2d and type(relu) is nn.ReLU:
            seq._modules[a] = _recast(bn, K.BatchNormReLU2d)
            seq._modules[b] = FusedReLU(relu.inplace)


def _unfuse_sequential(seq: nn.Sequential) -> None:
    names = list(seq._modules)
    for a, b in zip(names, names[1:]):
        bn, placeholder = seq._modules[a], seq._modules[b]
        if type(bn) is K.BatchNormReLU2d and type(placeholder) is FusedReLU:
            seq._modules[a] = _recast(bn, nn.BatchNorm2d)
            seq._modules[b] = nn.ReLU(placeholder.inplace)


def _convert(module: nn.Module, to: str) -> nn.Module:
    if isinstance(module, nn.Sequential):
        (_fuse_sequential if to == "cnnkern" else _unfuse_sequential)(module)
    for name, child in list(module._modules.items()):
        if child is not None:
            module._modules[name] = _convert(child, to)
    table = _TO_CNNKERN if to == "cnnkern" else _TO_TORCH
    cls = table.get(type(module))
    return _recast(module, cls) if cls is not None else module


def convert(module: nn.Module, to: str = "cnnkern", *, inplace: bool = False) -> nn.Module:
    """Return `module` with its convolution, pooling and BatchNorm+ReLU layers
    computed by cnnkern (to="cnnkern") or by torch.nn again (to="torch").

    Weights are kept; with inplace=False (the default) the module is deep-copied
    first, as torch.ao's conversions do.
    """
    if to not in ("cnnkern", "torch"):
        raise ValueError(f"to must be 'cnnkern' or 'torch', got {to!r}")
    if not isinstance(module, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(module).__name__}")
    if not inplace:
        module = copy.deepcopy(module)
    return _convert(module, to)
