"""The op layer: each backend's Conv2d ops, with autograd and fake tensors.

torch.ops.cnnkern       C++ ops: CPU kernels on CPU tensors, CUDA kernels on CUDA tensors
torch.ops.cnnkern_emu   the CUDA kernels built as host code, on CPU tensors ("cuda_emu")
torch.ops.cnnkern_triton  Triton kernels (cnnkern.kernels), registered with triton_op
Every forward op gets the same autograd formula, calling its own namespace's
backward ops, so a backward pass never leaves the backend its forward ran on.
"""
from __future__ import annotations

import torch

from . import _C
from ._shapes import conv2d_memory_format, conv2d_output_shape, memory_format_of

try:
    from .kernels import conv2d as _triton_conv2d  # noqa: F401  (registers torch.ops.cnnkern_triton)

    _TRITON_ERROR: Exception | None = None
except ImportError as exc:  # triton missing or unusable: the other backends still work
    _TRITON_ERROR = exc

_NAMESPACE = {"cpu": "cnnkern", "cuda": "cnnkern", "cuda_emu": "cnnkern_emu", "triton": "cnnkern_triton"}


def cuda_built() -> bool:
    return bool(_C.with_cuda)


def triton_available() -> bool:
    return _TRITON_ERROR is None


def triton_import_error() -> str:
    return repr(_TRITON_ERROR)


def ops_for(backend: str):
    """The torch.ops namespace that implements `backend`."""
    return getattr(torch.ops, _NAMESPACE[backend])


# ----------------------------------------------------------------------------- fake tensors (C++ ops)


def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    return torch.empty(conv2d_output_shape(input, weight, stride, padding, dilation), dtype=input.dtype,
                       device=input.device, memory_format=conv2d_memory_format(input, weight))


def _conv2d_backward_input_fake(grad_output, input, weight, stride, padding, dilation, groups):
    return torch.empty(input.shape, dtype=input.dtype, device=input.device,
                       memory_format=conv2d_memory_format(input, weight))


def _conv2d_backward_weight_fake(grad_output, input, weight, stride, padding, dilation, groups):
    return torch.empty(weight.shape, dtype=weight.dtype, device=weight.device,
                       memory_format=memory_format_of(weight))


def _conv2d_backward_bias_fake(grad_output):
    return grad_output.new_empty((grad_output.shape[1],))


for _ns in ("cnnkern", "cnnkern_emu"):
    torch.library.register_fake(f"{_ns}::conv2d", _conv2d_fake)
    torch.library.register_fake(f"{_ns}::conv2d_backward_input", _conv2d_backward_input_fake)
    torch.library.register_fake(f"{_ns}::conv2d_backward_weight", _conv2d_backward_weight_fake)
    torch.library.register_fake(f"{_ns}::conv2d_backward_bias", _conv2d_backward_bias_fake)


# ----------------------------------------------------------------------------- autograd


def _conv2d_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight)
    ctx.geometry = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _conv2d_backward_for(ns):
    def backward(ctx, grad):
        input, weight = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_input = ns.conv2d_backward_input(grad, input, weight, *ctx.geometry) if need_input else None
        grad_weight = ns.conv2d_backward_weight(grad, input, weight, *ctx.geometry) if need_weight else None
        grad_bias = ns.conv2d_backward_bias(grad) if ctx.has_bias and need_bias else None
        return grad_input, grad_weight, grad_bias, None, None, None, None

    return backward


for _ns in sorted(set(_NAMESPACE.values())):
    if _ns == "cnnkern_triton" and not triton_available():
        continue
    torch.library.register_autograd(f"{_ns}::conv2d", _conv2d_backward_for(getattr(torch.ops, _ns)),
                                    setup_context=_conv2d_setup_context)
