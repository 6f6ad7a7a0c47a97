"""Each op on the layer shapes the four networks actually run, cnnkern against
torch.nn.functional, forward and forward+backward.

The shapes are read off the models themselves (one forward on the meta device
with hooks), so they follow any change to cnnkern.models instead of going stale
in a hand-written list.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnkern
from cnnkern import functional as CF
from cnnkern import models

from .conftest import DEVICES, QUICK, batch_size, bench_param, impl_context, impls, model_label

PASSES = ("forward", "forward+backward")


@dataclass(frozen=True)
class Layer:
    op: str                    # "conv2d" | "max_pool2d" | "avg_pool2d" | "batch_norm_relu"
    shape: tuple[int, ...]     # input, NCHW
    params: tuple              # (name, value) keyword arguments, the same for torch's function and cnnkern's
    weight: tuple[int, ...] = ()  # conv2d only
    bias: bool = False            # conv2d only

    @property
    def kwargs(self) -> dict:
        return dict(self.params)

    def describe(self) -> str:
        words = [self.op, "x".join(map(str, self.shape))]
        if self.op == "conv2d":
            kw = self.kwargs
            words += ["w" + "x".join(map(str, self.weight)), f"s{_short(kw['stride'])}", f"p{_short(kw['padding'])}"]
            words += [] if self.bias else ["nobias"]
        elif self.op.endswith("pool2d"):
            kw = self.kwargs
            words += [f"k{_short(kw['kernel_size'])}", f"s{_short(kw['stride'])}"]
        return " ".join(words)


def _short(value) -> str:
    value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    return str(value[0]) if len(set(value)) == 1 else "x".join(map(str, value))


def _layers_of(fused: set[str], module_name: str, module: nn.Module, shape) -> list[Layer]:
    if isinstance(module, nn.Conv2d):
        params = (("stride", module.stride), ("padding", module.padding), ("dilation", module.dilation),
                  ("groups", module.groups))
        return [Layer("conv2d", shape, params, tuple(module.weight.shape), module.bias is not None)]
    if isinstance(module, nn.MaxPool2d):
        geometry = (("kernel_size", module.kernel_size), ("stride", module.stride), ("padding", module.padding))
        # The four networks have no average pooling; timing it on every max pool's
        # input and window still covers the op on shapes the networks produce.
        return [Layer("max_pool2d", shape, geometry + (("dilation", module.dilation), ("ceil_mode", module.ceil_mode))),
                Layer("avg_pool2d", shape, geometry + (("ceil_mode", module.ceil_mode),))]
    if isinstance(module, nn.BatchNorm2d) and module_name in fused:
        return [Layer("batch_norm_relu", shape, (("momentum", module.momentum), ("eps", module.eps)))]
    return []


def model_layers(name: str, device: str) -> list[Layer]:
    """The distinct conv, pooling and BatchNorm+ReLU layers of model `name` at its batch size on `device`."""
    net = models.build(name, layers="torch")
    # Only a BatchNorm that cnnkern.convert fuses with its ReLU runs on cnnkern;
    # any other would run on torch in both variants.
    fused = {n for n, m in cnnkern.convert(net).named_modules() if isinstance(m, cnnkern.BatchNormReLU2d)}
    found: list[Layer] = []
    for module_name, module in net.named_modules():
        module.register_forward_hook(
            lambda m, args, out, n=module_name: found.extend(_layers_of(fused, n, m, tuple(args[0].shape))))
    net.to("meta")(torch.empty(batch_size(name, device), *models.MODELS[name].input_shape, device="meta"))
    return list(dict.fromkeys(found))


def layers(device: str) -> list[tuple[Layer, list[str]]]:
    """Every distinct layer of the four networks on `device`, with the models it occurs in.

    Quick mode: mnist-lenet's layers, plus cifar-fast's first conv and first
    BatchNorm+ReLU, so each op and a 3x3 padded conv stay covered.
    """
    seen: dict[Layer, list[str]] = {}
    for name in models.MODELS:
        for layer in model_layers(name, device):
            seen.setdefault(layer, []).append(name)
    if QUICK:
        fast = [layer for layer, names in seen.items() if "cifar-fast" in names]
        keep = {next(l for l in fast if l.op == op) for op in ("conv2d", "batch_norm_relu")}
        seen = {layer: names for layer, names in seen.items() if "mnist-lenet" in names or layer in keep}
    return list(seen.items())


def variants(device: str, names: list[str]) -> list[tuple[torch.dtype, bool]]:
    """(dtype, channels_last) to time: float32 on CPU; on CUDA float32 and
    bfloat16, and channels_last too for cifar-fast's layers (its GPU recipe)."""
    if device == "cpu":
        return [(torch.float32, False)]
    formats = (False, True) if "cifar-fast" in names else (False,)
    return [(dtype, cl) for cl in formats for dtype in (torch.float32, torch.bfloat16)]


def cases():
    for device in DEVICES:
        for layer, names in layers(device):
            for dtype, channels_last in variants(device, names):
                setting = f"{str(dtype).removeprefix('torch.')}{' channels_last' if channels_last else ''} {device}"
                where = ", ".join(model_label(n, device) for n in names)
                for pass_ in PASSES:
                    group = f"{layer.describe()} | {setting} | {pass_} | {where}"
                    stem = f"{layer.describe()} {setting} {pass_}".replace(" ", "-")
                    for impl in impls(device):
                        yield bench_param(layer, device, dtype, channels_last, pass_, impl, group=group,
                                          id=f"{stem}-{impl}")


def _tensor(shape, dtype, device, channels_last, gen, scale=1.0):
    t = (torch.randn(shape, generator=gen) * scale).to(device=device, dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last) if channels_last and t.dim() == 4 else t


def operands(layer: Layer, device, dtype, channels_last, requires_grad):
    """The op's tensor arguments; those that take part in backward first, then the rest."""
    gen = torch.Generator().manual_seed(0)
    x = _tensor(layer.shape, dtype, device, channels_last, gen)
    if layer.op == "conv2d":
        fan_in = layer.weight[1] * layer.weight[2] * layer.weight[3]
        grads = [x, _tensor(layer.weight, dtype, device, channels_last, gen, fan_in ** -0.5)]
        if layer.bias:
            grads.append(_tensor(layer.weight[:1], dtype, device, False, gen, 0.1))
        rest = []
    elif layer.op == "batch_norm_relu":
        # Parameters and running statistics stay float32 whatever the input, as in a bfloat16 network.
        channels = layer.shape[1]
        grads = [x, torch.rand(channels, generator=gen).add(0.5).to(device),
                 torch.randn(channels, generator=gen).to(device)]
        rest = [torch.zeros(channels, device=device), torch.ones(channels, device=device)]
    else:
        grads, rest = [x], []
    for t in grads:
        t.requires_grad_(requires_grad)
    return grads, rest


def op(layer: Layer, impl: str):
    """fn(grads, rest) computing the layer with torch.nn.functional or with cnnkern."""
    kw = layer.kwargs
    torch_side = impl == "torch"
    if layer.op == "conv2d":
        conv = F.conv2d if torch_side else CF.conv2d
        return lambda g, r: conv(*g, **kw) if layer.bias else conv(*g, None, **kw)
    if layer.op == "max_pool2d":
        pool = F.max_pool2d if torch_side else CF.max_pool2d
        return lambda g, r: pool(g[0], **kw)
    if layer.op == "avg_pool2d":
        pool = F.avg_pool2d if torch_side else CF.avg_pool2d
        return lambda g, r: pool(g[0], **kw)
    if torch_side:
        return lambda g, r: F.relu(F.batch_norm(g[0], r[0], r[1], g[1], g[2], training=True, **kw))
    return lambda g, r: CF.batch_norm_relu(g[0], r[0], r[1], g[1], g[2], training=True, **kw)


@pytest.mark.parametrize("layer, device, dtype, channels_last, pass_, impl", list(cases()))
def test_op(timed, layer, device, dtype, channels_last, pass_, impl):
    backward = pass_ == "forward+backward"
    grads, rest = operands(layer, device, dtype, channels_last, requires_grad=backward)
    fn = op(layer, impl)
    if backward:
        # The same upstream gradient for both implementations: torch's output, drawn once.
        with torch.no_grad():
            grad_out = torch.randn_like(op(layer, "torch")(grads, rest))
        run = lambda: torch.autograd.grad(fn(grads, rest), grads, grad_out)  # noqa: E731
    else:
        run = lambda: fn(grads, rest)  # noqa: E731
    with impl_context(impl):
        timed(run, device, impl=impl, op=layer.op, shape=list(layer.shape), dtype=str(dtype).removeprefix("torch."),
              channels_last=channels_last, **{"pass": pass_})
