"""Drop-in nn.Modules. Each subclasses its torch.nn counterpart, so the
constructor signature, defaults, parameter initialisation, state_dict keys and
repr are torch's own; only the computation is routed to cnnkern.functional."""
from __future__ import annotations

import torch
from torch import nn

from . import functional as CF


class Conv2d(nn.Conv2d):
    """nn.Conv2d computed by cnnkern's kernels (padding_mode other than 'zeros'
    pads with torch first, as nn.Conv2d itself does)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            input = nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return CF.conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return CF.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d computed by cnnkern's kernels."""

    def forward(self, input: torch.Tensor):
        return CF.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                             ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(nn.AvgPool2d):
    """nn.AvgPool2d computed by cnnkern's kernels."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return CF.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                             self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """nn.AdaptiveAvgPool2d computed by cnnkern's kernels (global average pooling: output_size=1)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return CF.adaptive_avg_pool2d(input, self.output_size)


class BatchNormAct2d(nn.BatchNorm2d):
    """act(nn.BatchNorm2d(x)) in one fused op, act one of cnnkern.functional.ACTIVATIONS
    ("relu", "relu6", "silu", "hardswish", or "identity" for a plain BatchNorm2d):
    nn.BatchNorm2d's constructor arguments, state_dict keys and running-statistics
    rules (momentum=None is a cumulative average; num_batches_tracked counts training
    batches), plus the keyword `activation`. The op updates the buffers itself: this
    forward issues no tensor ops of its own."""

    activation = "relu"  # also what a module recast to this class (cnnkern.convert) starts with

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, activation: str = "relu") -> None:
        if activation not in CF.ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(CF.ACTIVATIONS)}, got {activation!r}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.activation = activation

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # nn.BatchNorm2d's choices (torch/nn/modules/batchnorm.py); the counter bump
        # and the momentum factor it derives happen inside the op.
        self._check_input_dim(input)
        tracking = self.training and self.track_running_stats
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        keep_running = not self.training or self.track_running_stats
        return CF.batch_norm_relu(input, self.running_mean if keep_running else None,
                                  self.running_var if keep_running else None, self.weight, self.bias,
                                  batch_stats, self.momentum, self.eps,
                                  num_batches_tracked=self.num_batches_tracked if tracking else None,
                                  activation=self.activation)


class BatchNormReLU2d(BatchNormAct2d):
    """relu(nn.BatchNorm2d(x)) in one fused op: BatchNormAct2d with activation="relu",
    nn.BatchNorm2d's constructor signature."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, activation="relu")

    def extra_repr(self) -> str:
        return nn.BatchNorm2d.extra_repr(self)
