"""The op layer: each backend's ops, with autograd and fake tensors.

torch.ops.cnnkern       C++ ops: CPU kernels on CPU tensors, CUDA kernels on CUDA tensors
torch.ops.cnnkern_emu   the CUDA kernels built as host code, on CPU tensors ("cuda_emu")
torch.ops.cnnkern_triton  Triton kernels (cnnkern.kernels), registered with triton_op on first use
Every forward op's autograd calls its own namespace's backward ops, so a
backward pass never leaves the backend its forward ran on: in C++ for the two
C++ namespaces (csrc/ops/autograd.cpp), below for the Triton one.
"""
from __future__ import annotations

import importlib.util

import torch

from . import _C
from ._shapes import conv2d_memory_format, conv2d_output_shape, empty_like_format, memory_format_of, pool2d_output_shape

_NAMESPACE = {"cpu": "cnnkern", "cuda": "cnnkern", "cuda_emu": "cnnkern_emu", "triton": "cnnkern_triton"}

# The Triton ops are loaded on first use (load_triton), not at import: triton and
# torch.library.triton_op pull in Inductor, which would triple `import cnnkern`.
# Only a missing triton package makes the backend unavailable; a cnnkern.kernels
# that fails to import (a broken or partial install) is an error when it is needed.
_TRITON_FOUND = importlib.util.find_spec("triton") is not None
_triton_loaded = False


def cuda_built() -> bool:
    return bool(_C.with_cuda)


def triton_available() -> bool:
    return _TRITON_FOUND


def triton_import_error() -> str:
    return "no module named 'triton'"


def load_triton() -> None:
    """Register torch.ops.cnnkern_triton.* (the kernels and their autograd), once."""
    global _triton_loaded
    if _triton_loaded:
        return
    if not _TRITON_FOUND:
        raise RuntimeError("cnnkern's triton backend needs the triton package, which is not installed")
    from .kernels import batch_norm, conv2d, pool2d  # noqa: F401  (each registers its ops)

    for op, (backward_for, setup) in _AUTOGRAD.items():
        torch.library.register_autograd(f"cnnkern_triton::{op}", backward_for(torch.ops.cnnkern_triton),
                                        setup_context=setup)
    _register_batch_norm_autograd()
    _triton_loaded = True


_NS_CACHE: dict = {}


def ops_for(backend: str):
    """What implements `backend`: its torch.ops namespace, or for Triton in eager
    mode the lean namespace (_triton_eager), which skips the op layer."""
    if backend == "triton" and not torch.compiler.is_compiling():
        backend = "triton-eager"
    ns = _NS_CACHE.get(backend)
    if ns is None:
        if backend == "triton-eager":
            ns = _triton_eager()
        else:
            if backend == "triton":
                load_triton()
            ns = getattr(torch.ops, _NAMESPACE[backend])
        _NS_CACHE[backend] = ns
    return ns


def _triton_eager():
    """torch.ops.cnnkern_triton's ops as plain calls: each forward an autograd.Function over
    the launcher's eager entry (kernels/_util.py: launch plans, replayed from C++), its backward
    calling the backward launchers directly. A triton_op call goes through the dispatcher and
    torch.library's Python autograd and redispatch layers (hundreds of µs per layer call,
    measured on the CPU); in eager mode nothing needs them. torch.compile keeps the registered
    ops (ops_for), which Inductor sees through."""
    import types

    load_triton()
    from .kernels._util import EAGER as launchers  # every launcher, guarded, planned, without wrap_triton

    ns = types.SimpleNamespace(**launchers)
    formulas = {op: (backward_for(ns), setup) for op, (backward_for, setup) in _AUTOGRAD.items()}
    formulas["batch_norm_relu"] = (_batch_norm_relu_triton_backward_for(ns), _batch_norm_relu_triton_setup_context)
    for op, (backward, setup) in formulas.items():
        setattr(ns, op, _eager_function(op, launchers[op], setup, backward).apply)
    # Pooling's plain, valid calls go straight from cnnkern._C's entry points to the launchers,
    # with a C++ graph node for backward (csrc/ops/python.cpp).
    from ._backend import _unavailable_reason

    _C.set_triton(tuple(launchers[f"{op}{suffix}"] for op in ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d")
                        for suffix in ("", "_backward")),
                  _unavailable_reason("triton", torch.device("cpu")) is None,
                  _unavailable_reason("triton", torch.device("cuda")) is None)
    return ns


def _eager_function(op, launcher, setup, backward):
    """An autograd.Function running launcher, with the same setup_context and backward as the
    registered op. forward takes ctx itself: the separate setup_context style would bind
    default arguments through inspect.signature on every call."""

    def forward(ctx, *inputs):
        output = launcher(*inputs)
        setup(ctx, inputs, output)
        return output

    return type(f"Triton_{op}", (torch.autograd.Function,),
                dict(forward=staticmethod(forward), backward=staticmethod(backward)))


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


def _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    shape = pool2d_output_shape(input, kernel_size, stride, padding, dilation, ceil_mode)
    return empty_like_format(shape, input), empty_like_format(shape, input, torch.int64)


def _max_pool2d_backward_fake(grad_output, input, indices, kernel_size, stride, padding, dilation, ceil_mode):
    return empty_like_format(input.shape, input)


def _avg_pool2d_fake(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return empty_like_format(pool2d_output_shape(input, kernel_size, stride, padding, (1, 1), ceil_mode), input)


def _avg_pool2d_backward_fake(grad_output, input, *args):
    return empty_like_format(input.shape, input)


def _adaptive_avg_pool2d_fake(input, output_size):
    return empty_like_format((*input.shape[:2], *output_size), input)


def _adaptive_avg_pool2d_backward_fake(grad_output, input):
    return empty_like_format(input.shape, input)


def _stat_dtype(input):
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def _batch_norm_relu_fake(input, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum,
                          eps, activation="relu"):
    # running_mean, running_var and num_batches_tracked are updated in place: nothing to allocate for them
    stat = input.new_empty((input.shape[1],), dtype=_stat_dtype(input))
    return empty_like_format(input.shape, input), stat, stat.clone()


def _batch_norm_relu_backward_fake(grad_output, output, input, mean, var, weight, training, eps, bias=None,
                                   activation="relu"):
    stat = input.new_empty((input.shape[1],), dtype=_stat_dtype(input))
    return empty_like_format(input.shape, input), stat, stat.clone()


for _ns in ("cnnkern", "cnnkern_emu"):
    torch.library.register_fake(f"{_ns}::batch_norm_relu", _batch_norm_relu_fake)
    torch.library.register_fake(f"{_ns}::batch_norm_relu_backward", _batch_norm_relu_backward_fake)
    torch.library.register_fake(f"{_ns}::max_pool2d", _max_pool2d_fake)
    torch.library.register_fake(f"{_ns}::max_pool2d_backward", _max_pool2d_backward_fake)
    torch.library.register_fake(f"{_ns}::avg_pool2d", _avg_pool2d_fake)
    torch.library.register_fake(f"{_ns}::avg_pool2d_backward", _avg_pool2d_backward_fake)
    torch.library.register_fake(f"{_ns}::adaptive_avg_pool2d", _adaptive_avg_pool2d_fake)
    torch.library.register_fake(f"{_ns}::adaptive_avg_pool2d_backward", _adaptive_avg_pool2d_backward_fake)
    torch.library.register_fake(f"{_ns}::conv2d", _conv2d_fake)
    torch.library.register_fake(f"{_ns}::conv2d_backward_input", _conv2d_backward_input_fake)
    torch.library.register_fake(f"{_ns}::conv2d_backward_weight", _conv2d_backward_weight_fake)
    torch.library.register_fake(f"{_ns}::conv2d_backward_bias", _conv2d_backward_bias_fake)


# ----------------------------------------------------------------------------- autograd (Triton ops)


def _conv2d_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight)
    ctx.geometry = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _conv2d_backward_for(ns):
    from .kernels.conv2d import backward_grad_output

    def backward(ctx, grad):
        input, weight = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad = backward_grad_output(grad, weight, ctx.geometry[3], need_input, need_weight)
        grad_input = ns.conv2d_backward_input(grad, input, weight, *ctx.geometry) if need_input else None
        grad_weight = ns.conv2d_backward_weight(grad, input, weight, *ctx.geometry) if need_weight else None
        grad_bias = ns.conv2d_backward_bias(grad) if ctx.has_bias and need_bias else None
        return grad_input, grad_weight, grad_bias, None, None, None, None

    return backward


def _max_pool2d_setup_context(ctx, inputs, output):
    # inputs: (input, kernel_size, stride, padding, dilation, ceil_mode) and, for the Triton op only,
    # return_indices; its second output (int64 indices, or Triton's 1-byte window offsets) feeds backward
    input, *geometry = inputs
    ctx.geometry = geometry[:5]
    ctx.num_inputs = len(inputs)
    ctx.save_for_backward(input, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the indices: one launch fewer


def _max_pool2d_backward_for(ns):
    def backward(ctx, grad, _grad_indices):
        input, indices = ctx.saved_tensors
        grad_input = None if grad is None else ns.max_pool2d_backward(grad, input, indices, *ctx.geometry)
        return (grad_input,) + (None,) * (ctx.num_inputs - 1)

    return backward


def _avg_pool2d_setup_context(ctx, inputs, output):
    input, *ctx.geometry = inputs
    ctx.save_for_backward(input)


def _avg_pool2d_backward_for(ns):
    def backward(ctx, grad):
        (input,) = ctx.saved_tensors
        return (ns.avg_pool2d_backward(grad, input, *ctx.geometry),) + (None,) * 6

    return backward


def _adaptive_avg_pool2d_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _adaptive_avg_pool2d_backward_for(ns):
    def backward(ctx, grad):
        (input,) = ctx.saved_tensors
        return ns.adaptive_avg_pool2d_backward(grad, input), None

    return backward


# batch_norm_relu(input, weight, bias, running_mean!, running_var!, num_batches_tracked!, training, momentum, eps,
# activation): the op updates the three buffers itself; they never require grad and get None gradients.
_BATCH_NORM_NONDIFF = (None,) * 7  # running_mean, running_var, num_batches_tracked, training, momentum, eps, activation


def _batch_norm_relu_triton_setup_context(ctx, inputs, output):
    # The Triton backward recomputes the activation's derivative from the input: y is not kept.
    input, weight, bias, _, _, _, ctx.training, _, ctx.eps, *activation = inputs
    ctx.activation = activation[0] if activation else "relu"
    _, mean, var = output
    ctx.save_for_backward(input, mean, var, weight, bias)
    ctx.mark_non_differentiable(mean, var)
    ctx.set_materialize_grads(False)


def _batch_norm_relu_triton_backward_for(ns):
    def backward(ctx, grad, _grad_mean, _grad_var):
        if grad is None:
            return (None,) * 3 + _BATCH_NORM_NONDIFF
        input, mean, var, weight, bias = ctx.saved_tensors
        mask = [bool(m) for m in ctx.needs_input_grad[:3]]
        dx, dw, db = ns.batch_norm_relu_backward(grad, input, mean, var, weight, bias, ctx.training, ctx.eps, mask,
                                                 ctx.activation)
        return (dx if mask[0] else None, dw if mask[1] and weight is not None else None,
                db if mask[2] and bias is not None else None) + _BATCH_NORM_NONDIFF

    return backward


def _register_batch_norm_autograd() -> None:
    """The autograd formula of the mutating Triton batch_norm_relu op: torch.library.register_autograd
    refuses any schema with a mutable argument, even buffers that never require grad, so the
    formula goes where the CustomOpDef's own Autograd kernel reads it."""
    from .kernels.batch_norm import batch_norm_relu as opdef

    opdef._backward_fn = _batch_norm_relu_triton_backward_for(torch.ops.cnnkern_triton)
    opdef._setup_context_fn = _batch_norm_relu_triton_setup_context


_AUTOGRAD = {  # batch_norm_relu mutates its buffers: _register_batch_norm_autograd
    "conv2d": (_conv2d_backward_for, _conv2d_setup_context),
    "max_pool2d": (_max_pool2d_backward_for, _max_pool2d_setup_context),
    "avg_pool2d": (_avg_pool2d_backward_for, _avg_pool2d_setup_context),
    "adaptive_avg_pool2d": (_adaptive_avg_pool2d_backward_for, _adaptive_avg_pool2d_setup_context),
}
# The C++ namespaces (cnnkern, cnnkern_emu) register their autograd in C++ (csrc/ops/autograd.cpp);
# the Triton namespace gets the formulas above when it is loaded (load_triton).
