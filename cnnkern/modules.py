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
