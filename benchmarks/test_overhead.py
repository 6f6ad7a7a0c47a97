"""Host cost per layer call: each cnnkern module against its torch.nn twin on
tiny tensors, where the kernels take a few microseconds and what a call costs
is argument handling, dispatch and autograd bookkeeping.

On a GPU a small CNN's kernels take microseconds too, so this per-call cost,
not the kernels, decides its step time. Groups are named "overhead ...", with
the passes "overhead forward" (module call, autograd recording) and
"overhead forward+backward" (module call and backward through it); each round
makes CALLS calls, so the timer's resolution does not matter.

Without a GPU the group also times "cnnkern-triton-stubbed": the Triton backend
on CPU tensors with every kernel launch stubbed out (conftest.stubbed_triton_launches),
which is cnnkern's whole Triton host path: module, functional, launch plan,
autograd node. (With a GPU the Triton backend is timed for real.)
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import cnnkern

from .conftest import DEVICES, STUBBED_TRITON, bench_param, impl_context, impls, stubbed_triton_available

CALLS = 50
SHAPE = (2, 4, 8, 8)

# name -> (torch.nn module, cnnkern module), both built with the same arguments
LAYERS = {
    "Conv2d 4->4 3x3 p1": (lambda: nn.Conv2d(4, 4, 3, padding=1), lambda: cnnkern.Conv2d(4, 4, 3, padding=1)),
    "MaxPool2d 2": (lambda: nn.MaxPool2d(2), lambda: cnnkern.MaxPool2d(2)),
    "AvgPool2d 2": (lambda: nn.AvgPool2d(2), lambda: cnnkern.AvgPool2d(2)),
    "AdaptiveAvgPool2d 1": (lambda: nn.AdaptiveAvgPool2d(1), lambda: cnnkern.AdaptiveAvgPool2d(1)),
    "BatchNormReLU2d 4 (train)": (lambda: nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()),
                                  lambda: cnnkern.BatchNormReLU2d(4)),
}
PASSES = ("overhead forward", "overhead forward+backward")


def cases():
    for device in DEVICES:
        for name in LAYERS:
            for pass_ in PASSES:
                group = f"{pass_} | {name} | {'x'.join(map(str, SHAPE))} float32 {device}"
                stubbed = [STUBBED_TRITON] if device == "cpu" and stubbed_triton_available() else []
                for impl in impls(device) + stubbed:
                    yield bench_param(name, device, pass_, impl, group=group,
                                      id=f"{pass_}-{name}-{device}-{impl}".replace(" ", "-"))


@pytest.mark.parametrize("name, device, pass_, impl", list(cases()))
def test_overhead(timed, name, device, pass_, impl):
    torch_side, cnnkern_side = LAYERS[name]
    module = (torch_side if impl == "torch" else cnnkern_side)().to(device)
    x = torch.randn(SHAPE, device=device, requires_grad=True)
    if pass_ == "overhead forward":
        def run():
            for _ in range(CALLS):
                module(x)
    else:
        def run():
            for _ in range(CALLS):
                module(x).sum().backward()
    with impl_context(impl):
        timed(run, device, impl=impl, op=name, shape=list(SHAPE), calls=CALLS, **{"pass": pass_})
