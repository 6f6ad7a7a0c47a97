"""cnnkern pooling against torch.nn, on every backend this machine can run."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._prims_common import suggest_memory_format

import cnnkern
from cnnkern import functional as CF
from conftest import LAYOUTS, assert_close, make_input

MAX_CASES = [
    dict(x=(1, 1, 1, 1), kernel_size=1),
    dict(x=(2, 3, 5, 5), kernel_size=2, stride=2, ceil_mode=True),  # 5 -> 3: the last window is one column
    MAX_PADDED_CEIL := dict(x=(2, 3, 6, 6), kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(x=(2, 3, 9, 9), kernel_size=3, stride=3, padding=1, ceil_mode=True),  # a 4th window would start in padding
    dict(x=(1, 4, 7, 11), kernel_size=(2, 3), stride=(1, 2), dilation=(2, 1)),
    dict(x=(3, 1, 13, 13), kernel_size=2),  # MNIST LeNet's pooling, odd input
    dict(x=(2, 5, 8, 8), kernel_size=8),  # global
    dict(x=(1, 2, 6, 7), kernel_size=3, stride=1, padding=1),
    MAX_ODD := dict(x=(2, 17, 11, 7), kernel_size=(3, 2), stride=(2, 3), padding=(1, 1), dilation=(1, 2),
                    ceil_mode=True),
    # Triton's paths (interpreter tiles: 16-channel blocks, strips of 4 windows, rows of 8 columns).
    # NCHW kernel == stride inside the input is the "strip" forward; it also takes the backward when the
    # windows tile the input exactly; channels_last takes the [pixels, channels] tiles.
    MAX_STRIP := dict(x=(1, 16, 4, 8), kernel_size=2),  # strip both ways; one whole channel block
    MAX_MASKED_STRIP := dict(x=(2, 17, 7, 10), kernel_size=2),  # a partial channel block; 5 windows: masked strip; H odd: rows bwd
    dict(x=(1, 3, 8, 16), kernel_size=4),  # a 4-column window strip
    dict(x=(2, 1, 9, 12), kernel_size=(3, 1)),  # 1-column windows, three strip blocks, C=1
    dict(x=(2, 3, 7, 7), kernel_size=2, padding=1),  # kernel == stride but padded: one window per pixel
    dict(x=(1, 2, 16, 17), kernel_size=(16, 17), padding=(0, 8)),  # 272 taps: offsets need int16
    # windows over 16 taps loop over kernel rows at runtime instead of unrolling
    dict(x=(1, 2, 10, 8), kernel_size=(5, 4)),  # a strip both ways
    dict(x=(1, 3, 11, 13), kernel_size=(5, 4), stride=(2, 3), padding=(2, 1)),  # overlapping, padded
]
AVG_CASES = [
    dict(x=(1, 1, 1, 1), kernel_size=1),
    dict(x=(2, 3, 5, 5), kernel_size=2, stride=2, ceil_mode=True),
    AVG_PADDED_CEIL := dict(x=(2, 3, 6, 6), kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(x=(2, 3, 6, 6), kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=True),
    dict(x=(2, 3, 9, 9), kernel_size=3, stride=3, padding=1, ceil_mode=True, count_include_pad=False),
    dict(x=(1, 4, 7, 11), kernel_size=(2, 3), stride=(1, 2), divisor_override=5),
    dict(x=(2, 5, 8, 8), kernel_size=8),
    AVG_ODD := dict(x=(2, 17, 11, 7), kernel_size=(3, 2), stride=(2, 3), padding=(1, 1)),
    AVG_STRIP := dict(x=(1, 16, 4, 8), kernel_size=2),  # Triton's strip both ways
    AVG_MASKED_STRIP := dict(x=(2, 17, 7, 10), kernel_size=2, divisor_override=3),  # partial channel block, masked strip, rows bwd
    dict(x=(1, 3, 8, 16), kernel_size=4, ceil_mode=True),  # 4-column strip (ceil_mode adds no window here)
    dict(x=(2, 1, 9, 12), kernel_size=(3, 1)),  # 1-column strip
    dict(x=(2, 3, 7, 7), kernel_size=2, padding=1, count_include_pad=False),  # one window per pixel, padded
    dict(x=(1, 2, 10, 8), kernel_size=(5, 4)),  # over 16 taps: a runtime loop over kernel rows
    dict(x=(1, 3, 11, 13), kernel_size=(5, 4), stride=(2, 3), padding=(2, 1), count_include_pad=False),
]
ADAPTIVE_CASES = [
    dict(x=(2, 3, 8, 8), output_size=1),  # global average pooling
    ADAPTIVE_ODD := dict(x=(2, 3, 7, 11), output_size=(3, 5)),
    dict(x=(1, 2, 3, 3), output_size=(4, 4)),  # larger than the input: overlapping windows
    dict(x=(2, 4, 9, 6), output_size=(None, 2)),
    dict(x=(1, 17, 5, 5), output_size=(5, 5)),
    ADAPTIVE_GLOBAL_MASKED := dict(x=(2, 17, 7, 7), output_size=1),  # global: a partial channel block, a 49-position plane (masked)
    dict(x=(1, 3, 1, 9), output_size=(1, 1)),  # global over a single row
]


def case_id(case):
    return "-".join(f"{k}{v}" for k, v in case.items()).replace(" ", "").replace("(", "").replace(")", "")


def run(op, case, dtype, device, layout):
    """cnnkern (in dtype) and torch (float64 from the same rounded values): output(s) and input gradient."""
    args = {k: v for k, v in case.items() if k != "x"}
    x = make_input(case["x"], dtype, device, layout).requires_grad_()
    x_ref = x.detach().double().cpu().requires_grad_()
    ours = getattr(CF, op)(x, **args)
    ref = getattr(F, op)(x_ref, **args)
    y, y_ref = (ours[0], ref[0]) if isinstance(ref, tuple) else (ours, ref)
    grad = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (dx,) = torch.autograd.grad(y, x, grad.to(device=device, dtype=dtype))
    (dx_ref,) = torch.autograd.grad(y_ref, x_ref, grad)
    return x, ours, ref, dx, dx_ref


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", MAX_CASES, ids=case_id)
def test_max_pool2d_matches_torch(backend_device, case, layout):
    _, device = backend_device
    x, (y, idx), _, dx, dx_ref = run("max_pool2d", dict(case, return_indices=True), torch.float64, device, layout)
    y_t, idx_t = F.max_pool2d(x.detach(), return_indices=True, **{k: v for k, v in case.items() if k != "x"})
    assert torch.equal(y, y_t) and torch.equal(idx, idx_t), "max pooling must match torch exactly"
    assert idx.dtype == torch.int64 and suggest_memory_format(y) == suggest_memory_format(y_t)
    assert y.stride() == y_t.stride() and idx.stride() == idx_t.stride()
    assert_close(dx, dx_ref, torch.float64, what="grad input")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", AVG_CASES, ids=case_id)
def test_avg_pool2d_matches_torch(backend_device, case, layout):
    backend, device = backend_device
    x, y, y_ref, dx, dx_ref = run("avg_pool2d", case, torch.float64, device, layout)
    assert_close(y, y_ref, torch.float64, backend, device, "output")
    assert_close(dx, dx_ref, torch.float64, backend, device, "grad input")
    y_t = F.avg_pool2d(x.detach(), **{k: v for k, v in case.items() if k != "x"})
    assert y.stride() == y_t.stride()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=case_id)
def test_adaptive_avg_pool2d_matches_torch(backend_device, case, layout):
    backend, device = backend_device
    x, y, y_ref, dx, dx_ref = run("adaptive_avg_pool2d", case, torch.float64, device, layout)
    assert_close(y, y_ref, torch.float64, backend, device, "output")
    assert_close(dx, dx_ref, torch.float64, backend, device, "grad input")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op,case", [("max_pool2d", MAX_ODD), ("avg_pool2d", AVG_ODD),
                                     ("adaptive_avg_pool2d", ADAPTIVE_ODD)], ids=["max", "avg", "adaptive"])
def test_reduced_precision(backend_device, op, case, dtype):
    backend, device = backend_device
    x, y, y_ref, dx, dx_ref = run(op, case, dtype, device, "channels_last")
    y = y[0] if isinstance(y, tuple) else y
    y_ref = y_ref[0] if isinstance(y_ref, tuple) else y_ref
    assert y.dtype == dtype and dx.dtype == dtype
    assert_close(y, y_ref, dtype, backend, device, "output")
    assert_close(dx, dx_ref, dtype, backend, device, "grad input")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", MAX_CASES, ids=case_id)
def test_max_pool2d_without_indices(backend_device, case, layout):
    # what training runs: Triton keeps a 1-byte window offset for backward instead of int64 indices
    _, device = backend_device
    x, y, y_ref, dx, dx_ref = run("max_pool2d", case, torch.float64, device, layout)
    assert torch.equal(y.cpu(), y_ref) and y.stride() == y_ref.stride()
    assert_close(dx, dx_ref, torch.float64, what="grad input")
    assert suggest_memory_format(dx) == suggest_memory_format(x)


def test_max_pool2d_saves_what_backward_needs(backend_device):
    backend, device = backend_device
    compact = backend == "triton"
    for shape, kwargs, offsets in (((2, 3, 6, 6), dict(kernel_size=2), torch.uint8),
                                   ((1, 2, 16, 17), dict(kernel_size=(16, 17), padding=(0, 8)), torch.int16)):
        x = make_input(shape, torch.float32, device).requires_grad_()
        assert [t.dtype for t in _saved(lambda: CF.max_pool2d(x, **kwargs))] == [
            torch.float32, offsets if compact else torch.int64]
        saved = _saved(lambda: CF.max_pool2d(x, return_indices=True, **kwargs))
        assert [t.dtype for t in saved] == [torch.float32, torch.int64]


def _saved(fn):
    """The tensors autograd saves while fn runs (C++ graph nodes do not show theirs to Python)."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn()
    return saved


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op,case", [
    ("max_pool2d", MAX_STRIP), ("max_pool2d", MAX_MASKED_STRIP),
    ("max_pool2d", dict(MAX_MASKED_STRIP, return_indices=True)), ("max_pool2d", MAX_PADDED_CEIL),
    ("avg_pool2d", AVG_STRIP), ("avg_pool2d", AVG_MASKED_STRIP), ("avg_pool2d", AVG_PADDED_CEIL),
    ("adaptive_avg_pool2d", ADAPTIVE_GLOBAL_MASKED)], ids=lambda v: v if isinstance(v, str) else case_id(v))
def test_every_path_in_every_dtype(backend_device, op, case, layout, dtype):
    backend, device = backend_device
    x, y, y_ref, dx, dx_ref = run(op, case, dtype, device, layout)
    if isinstance(y_ref, tuple):
        (y, idx), (y_ref, idx_ref) = y, y_ref
        assert torch.equal(idx.cpu(), idx_ref)
    assert y.dtype == dtype and dx.dtype == dtype and y.stride() == y_ref.stride()
    assert suggest_memory_format(dx) == suggest_memory_format(x)
    assert_close(y, y_ref, dtype, backend, device, "output")
    assert_close(dx, dx_ref, dtype, backend, device, "grad input")


def _nan_inf_tie_planes(device, layout):
    """Three channels of NaN, -inf and tied values (their torch semantics differ per window)."""
    plane = torch.tensor([[1.0, 1.0, 2.0, 2.0, 0.0, 5.0],
                          [1.0, 0.5, 2.0, float("nan"), -1.0, 5.0],
                          [-math.inf, -math.inf, 3.0, float("nan"), 3.0, 5.0],
                          [-math.inf, -math.inf, 3.0, 3.0, 7.0, -math.inf]], dtype=torch.float64)
    x = torch.stack([plane, plane.flip(1), torch.where(plane.isnan(), 4.0, plane.flip(0))]).unsqueeze(0)
    x = x.to(device)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_max_pool2d_nan_inf_and_ties_gradients_like_torch(backend_device, layout):
    _, device = backend_device
    x = _nan_inf_tie_planes(device, layout)
    for kwargs in (dict(kernel_size=2), dict(kernel_size=2, stride=1), dict(kernel_size=3, stride=2, padding=1),
                   dict(kernel_size=2, stride=2, ceil_mode=True, padding=1), dict(kernel_size=(2, 3))):
        for return_indices in (False, True):
            ours = x.detach().requires_grad_()
            ref = x.detach().cpu().requires_grad_()
            y = CF.max_pool2d(ours, return_indices=return_indices, **kwargs)
            y_t, idx_t = F.max_pool2d(ref, return_indices=True, **kwargs)
            if return_indices:
                y, idx = y
                assert torch.equal(idx.cpu(), idx_t), kwargs
            torch.testing.assert_close(y.cpu(), y_t, equal_nan=True, rtol=0, atol=0)
            grad = torch.arange(1.0, y_t.numel() + 1, dtype=torch.float64).view_as(y_t)
            (dx,) = torch.autograd.grad(y, ours, grad.to(device))
            (dx_t,) = torch.autograd.grad(y_t, ref, grad)
            assert torch.equal(dx.cpu(), dx_t), (kwargs, return_indices)


def test_max_pool2d_nan_inf_and_ties_like_torch(backend_device):
    _, device = backend_device
    x = torch.tensor([[1.0, 1.0, 2.0, 2.0, 0.0],
                      [1.0, 0.5, 2.0, float("nan"), -1.0],
                      [-math.inf, -math.inf, 3.0, float("nan"), 3.0],
                      [-math.inf, -math.inf, 3.0, 3.0, 7.0]], device=device).view(1, 1, 4, 5)
    for kwargs in (dict(kernel_size=2), dict(kernel_size=2, stride=1), dict(kernel_size=3, stride=2, padding=1),
                   dict(kernel_size=2, stride=2, ceil_mode=True)):
        y, idx = CF.max_pool2d(x, return_indices=True, **kwargs)
        y_t, idx_t = F.max_pool2d(x, return_indices=True, **kwargs)
        assert torch.equal(idx, idx_t), kwargs
        torch.testing.assert_close(y, y_t, equal_nan=True)
    # a dilated window wholly in the padding: torch reports -inf and an index past the plane
    x = torch.arange(4.0, device=device).view(1, 1, 2, 2)
    y, idx = CF.max_pool2d(x, 2, padding=1, dilation=3, return_indices=True)
    y_t, idx_t = F.max_pool2d(x, 2, padding=1, dilation=3, return_indices=True)
    assert torch.equal(idx, idx_t) and torch.equal(y, y_t) and idx.item() == 6
    ones = torch.ones(1, 1, 3, 3, device=device)  # ties everywhere: the first index
    assert CF.max_pool2d(ones, 3, return_indices=True)[1].item() == 0
    allneg = torch.full((1, 1, 2, 2), -math.inf, device=device)
    assert CF.max_pool2d(allneg, 2, padding=1, return_indices=True)[1].flatten().tolist() == [0, 1, 2, 3]


def test_max_pool2d_indices_drive_max_unpool(backend_device):
    _, device = backend_device
    x = make_input((2, 3, 8, 6), torch.float32, device)
    y, idx = cnnkern.MaxPool2d(2, return_indices=True)(x)
    torch.testing.assert_close(nn.MaxUnpool2d(2)(y, idx), nn.MaxUnpool2d(2)(*F.max_pool2d(x, 2, return_indices=True)))


def test_gradcheck_float64(backend_device):
    _, device = backend_device
    x = make_input((1, 2, 5, 6), torch.float64, device, seed=7).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: CF.max_pool2d(t, 3, 2, 1, ceil_mode=True), (x,))
    assert torch.autograd.gradcheck(lambda t: CF.avg_pool2d(t, (2, 3), 2, (1, 1), True, False), (x,))
    assert torch.autograd.gradcheck(lambda t: CF.adaptive_avg_pool2d(t, (3, 4)), (x,))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_adaptive_avg_pool2d_plane_that_does_not_flatten(backend_device, layout):
    # rows two apart: (h, w) is not one stride, so global pooling takes the general adaptive kernels
    _, device = backend_device
    base = make_input((2, 5, 10, 6), torch.float64, device, layout)
    x = base[:, :, ::2].requires_grad_()
    x_ref = x.detach().cpu().requires_grad_()
    y, y_ref = CF.adaptive_avg_pool2d(x, 1), F.adaptive_avg_pool2d(x_ref, 1)
    assert_close(y, y_ref, torch.float64, what="output")
    grad = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (dx,) = torch.autograd.grad(y, x, grad.to(device))
    (dx_ref,) = torch.autograd.grad(y_ref, x_ref, grad)
    assert_close(dx, dx_ref, torch.float64, what="grad input")


def test_unbatched_and_empty_batch(backend_device):
    _, device = backend_device
    x = make_input((1, 3, 7, 6), torch.float64, device)[0]
    torch.testing.assert_close(CF.max_pool2d(x, 2), F.max_pool2d(x, 2))
    torch.testing.assert_close(CF.avg_pool2d(x, 3, 2, 1), F.avg_pool2d(x, 3, 2, 1))
    torch.testing.assert_close(CF.adaptive_avg_pool2d(x, 2), F.adaptive_avg_pool2d(x, 2))
    empty = torch.zeros(0, 3, 6, 6, device=device, requires_grad=True)
    for y in (CF.max_pool2d(empty, 2), CF.avg_pool2d(empty, 2), CF.adaptive_avg_pool2d(empty, 1)):
        assert y.shape[0] == 0
        y.sum().backward()


POOL_BAD_INPUTS = {
    "max-2d-input": ("max_pool2d", (torch.randn(4, 4),), dict(kernel_size=2)),
    "max-pad-over-half": ("max_pool2d", (torch.randn(1, 1, 6, 6),), dict(kernel_size=3, padding=2)),
    "max-output-too-small": ("max_pool2d", (torch.randn(1, 1, 2, 2),), dict(kernel_size=3)),
    "max-zero-stride": ("max_pool2d", (torch.randn(1, 1, 6, 6),), dict(kernel_size=2, stride=0)),
    "max-zero-kernel": ("max_pool2d", (torch.randn(1, 1, 6, 6),), dict(kernel_size=0)),
    "max-zero-dilation": ("max_pool2d", (torch.randn(1, 1, 6, 6),), dict(kernel_size=2, dilation=0)),
    "avg-pad-over-half": ("avg_pool2d", (torch.randn(1, 1, 6, 6),), dict(kernel_size=2, padding=2)),
    "avg-zero-divisor": ("avg_pool2d", (torch.randn(1, 1, 6, 6),), dict(kernel_size=2, divisor_override=0)),
    "avg-empty-channels": ("avg_pool2d", (torch.randn(1, 0, 6, 6),), dict(kernel_size=2)),
    "adaptive-2d-input": ("adaptive_avg_pool2d", (torch.randn(4, 4),), dict(output_size=2)),
    "adaptive-negative-size": ("adaptive_avg_pool2d", (torch.randn(1, 1, 4, 4),), dict(output_size=-1)),
}


@pytest.mark.parametrize("name", sorted(POOL_BAD_INPUTS))
def test_bad_input_raises_like_torch(backend_device, name):
    _, device = backend_device
    op, args, kwargs = POOL_BAD_INPUTS[name]
    args = tuple(a.to(device) for a in args)
    with pytest.raises(Exception) as expected:
        getattr(F, op)(*args, **kwargs)
    with pytest.raises(type(expected.value)) as got:
        getattr(CF, op)(*args, **kwargs)
    assert str(got.value)


POOL_OP_NAMESPACES = ["cnnkern", "cnnkern_emu"] + (["cnnkern_triton"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("ns", POOL_OP_NAMESPACES)
def test_opcheck(ns):
    device = "cuda" if ns == "cnnkern_triton" else "cpu"
    op = getattr(torch.ops, ns)
    for layout in ("contiguous", "channels_last"):
        for requires_grad in (False, True):
            x = make_input((2, 3, 7, 6), torch.float32, device, layout).requires_grad_(requires_grad)
            geometry = ([3, 2], [2, 1], [1, 1], [1, 2], True)
            torch.library.opcheck(op.max_pool2d.default, (x, *geometry))
            if ns == "cnnkern_triton":  # int64 indices only when asked
                torch.library.opcheck(op.max_pool2d.default, (x, *geometry, True))
            torch.library.opcheck(op.avg_pool2d.default, (x, [3, 2], [2, 1], [1, 1], True, False, None))
            torch.library.opcheck(op.adaptive_avg_pool2d.default, (x, [3, 4]))
        x = x.detach()
        y, idx = op.max_pool2d(x, *geometry)
        torch.library.opcheck(op.max_pool2d_backward.default, (torch.randn_like(y), x, idx, *geometry))
        if ns == "cnnkern_triton":
            y, idx = op.max_pool2d(x, *geometry, True)
            torch.library.opcheck(op.max_pool2d_backward.default, (torch.randn_like(y), x, idx, *geometry))
        y = op.avg_pool2d(x, [3, 2], [2, 1], [1, 1], True, False, 4)
        torch.library.opcheck(op.avg_pool2d_backward.default,
                              (torch.randn_like(y), x, [3, 2], [2, 1], [1, 1], True, False, 4))
        y = op.adaptive_avg_pool2d(x, [3, 4])
        torch.library.opcheck(op.adaptive_avg_pool2d_backward.default, (torch.randn_like(y), x))


@pytest.mark.skipif("triton" not in cnnkern.available_backends("cpu"), reason="needs triton and TRITON_INTERPRET=1")
def test_triton_max_pool2d_schema_and_autograd_registration():
    # Under the interpreter a triton_op cannot run on fake tensors (it executes the kernel), so the
    # full opcheck of cnnkern_triton runs on a GPU only (test_opcheck); schema and autograd run here.
    op = torch.ops.cnnkern_triton
    geometry = ([3, 2], [2, 1], [1, 1], [1, 2], True)
    checks = ("test_schema", "test_autograd_registration")
    for return_indices in (False, True):
        for requires_grad in (False, True):
            x = make_input((2, 3, 7, 6), torch.float32, "cpu").requires_grad_(requires_grad)
            torch.library.opcheck(op.max_pool2d.default, (x, *geometry, return_indices), test_utils=checks)
        y, taps = op.max_pool2d(x.detach(), *geometry, return_indices)
        assert taps.dtype == (torch.int64 if return_indices else torch.uint8)
        torch.library.opcheck(op.max_pool2d_backward.default, (torch.randn_like(y), x.detach(), taps, *geometry),
                              test_utils=checks)
    assert op.max_pool2d(x.detach(), *geometry)[1].dtype == torch.uint8  # the flag defaults to False


def _planned_launches(call):
    """The Triton launches `call` makes when planned for an H100, recorded instead of run."""
    from cnnkern.kernels import _util
    from cnnkern.kernels import pool2d as P
    launches = []
    with _util.intercept_launches(lambda *launch: launches.append(launch)), _util.planning_for(90, 132):
        call(P)
    return [(k.__name__, grid, dict(zip(k.arg_names, args), **kwargs)) for k, grid, args, kwargs in launches]


def _empty(shape, dtype=torch.float16, layout="contiguous"):
    x = torch.empty(shape, dtype=dtype)
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    return x[..., ::2] if layout == "strided" else x


def _bytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.skipif("triton" not in cnnkern.available_backends("cpu"), reason="needs triton")
@pytest.mark.parametrize("layout,dtype,fwd,bwd,flags", [
    ("channels_last", torch.float16, "max_pool2d_fwd_nhwc", "max_pool2d_bwd_windows", dict(VEC=8, INSIDE=True)),
    ("contiguous", torch.float32, "max_pool2d_fwd_strip", "max_pool2d_bwd_strip", dict(ALIGN_X=16, OUT_VEC=2)),
    # a strided input takes the general forward; its gradient is a fresh contiguous tensor: the strip backward
    ("strided", torch.bfloat16, "max_pool2d_fwd_rows", "max_pool2d_bwd_strip", dict(INSIDE=True)),
])
def test_gpu_launches_take_the_fast_paths(layout, dtype, fwd, bwd, flags):
    x = _empty((8, 64, 32, 64), dtype, layout)
    geometry = ([2, 2], [2, 2], [0, 0], [1, 1], False)

    def call(P):
        for return_indices in (False, True):
            y, taps = P.max_pool2d(x, *geometry, return_indices)
            P.max_pool2d_backward(torch.empty_like(y), x, taps, *geometry)

    launches = _planned_launches(call)
    assert [name for name, _, _ in launches] == [fwd + "_kernel", bwd + "_kernel"] * 2
    for i, (name, grid, args) in enumerate(launches):
        flat = i >= 2
        assert args["taps"].dtype == (torch.int64 if flat else torch.uint8)
        assert args["FLAT_INDICES"] is flat and all(args[k] == v for k, v in flags.items() if k in args), args
        if name.startswith("max_pool2d_bwd"):
            assert args.get("ONE_WINDOW", True) and args["dx"].shape == x.shape
        # the static profile's floor: each tensor once, 1 byte (or torch's 8) per output for the taps
        work = __import__("cnnkern.kernels.pool2d", fromlist=["PROFILE_WORK"]).PROFILE_WORK[name](args, grid)
        tensors = [args[k] for k in ("x", "y", "dy", "dx", "taps") if k in args]
        assert work == dict(trip_count=1, flops=0, bytes=_bytes(*tensors))
        assert work["bytes"] == _bytes(x) + (x.numel() // 4) * (x.element_size() + (8 if flat else 1))


@pytest.mark.skipif("triton" not in cnnkern.available_backends("cpu"), reason="needs triton")
def test_every_pool_kernel_has_a_profile_entry():
    import triton

    from cnnkern.kernels import pool2d as P
    jitted = (triton.runtime.JITFunction, triton.runtime.interpreter.InterpretedFunction)
    kernels = {name for name, obj in vars(P).items() if isinstance(obj, jitted) and name.endswith("_kernel")}
    assert len(kernels) == 18
    assert kernels == set(P.PROFILE_WORK)

    def call(P):
        x = _empty((4, 16, 9, 9), torch.float32, "channels_last")
        for geometry in (([3, 3], [2, 2], [1, 1], True), ([3, 3], [3, 3], [0, 0], False)):
            y = P.avg_pool2d(x, *geometry, True, None)
            P.avg_pool2d_backward(torch.empty_like(y), x, *geometry, True, None)
        for size in ([1, 1], [2, 3]):
            y = P.adaptive_avg_pool2d(x, size)
            P.adaptive_avg_pool2d_backward(torch.empty_like(y), x)

    for name, grid, args in _planned_launches(call):
        work = P.PROFILE_WORK[name](args, grid)
        reads, writes = ("dy", "dx") if "dy" in args else ("x", "y")
        assert work["bytes"] == _bytes(args[reads], args[writes]) and work["flops"] > 0, name
        if name == "global_avg_pool2d_fwd_kernel":
            assert work["trip_count"] == triton.cdiv(81, args["BLOCK_L"])


def test_modules_are_drop_ins():
    pairs = [(nn.MaxPool2d(3, 2, 1, ceil_mode=True), cnnkern.MaxPool2d(3, 2, 1, ceil_mode=True)),
             (nn.AvgPool2d(3, 2, 1, count_include_pad=False), cnnkern.AvgPool2d(3, 2, 1, count_include_pad=False)),
             (nn.AdaptiveAvgPool2d((2, None)), cnnkern.AdaptiveAvgPool2d((2, None)))]
    x = torch.randn(2, 3, 9, 8)
    for ref, ours in pairs:
        assert isinstance(ours, type(ref)) and repr(ours) == repr(ref) and ours.state_dict() == {}
        torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("backend", ["cpu", "cuda_emu"])
def test_torch_compile_fullgraph_with_pooling(backend):
    torch.manual_seed(3)
    model = nn.Sequential(cnnkern.Conv2d(3, 8, 3, padding=1), nn.ReLU(), cnnkern.MaxPool2d(2),
                          cnnkern.Conv2d(8, 8, 3), cnnkern.AvgPool2d(2, ceil_mode=True), cnnkern.AdaptiveAvgPool2d(1))
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    with cnnkern.use_backend(backend):
        eager = model(x)
        (gx_eager,) = torch.autograd.grad(eager.sum(), x)
        torch._dynamo.reset()
        out = torch.compile(model, fullgraph=True)(x)
        (gx,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(gx, gx_eager)


# The CUDA kernels take 32-bit index math below 2^31 elements and a 64-bit path above; the emulation
# build reads CNNKERN_EMU_INDEX64=1 at each launch to take the 64-bit path, so both are checked here.
@pytest.mark.skipif("cuda_emu" not in cnnkern.available_backends("cpu"), reason="needs the emulation build")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op,case", [("max", c) for c in MAX_CASES] + [("avg", c) for c in AVG_CASES] +
                         [("adaptive", c) for c in ADAPTIVE_CASES], ids=lambda v: v if isinstance(v, str) else case_id(v))
def test_cuda_emu_64_bit_index_path(monkeypatch, op, case, layout):
    monkeypatch.setenv("CNNKERN_EMU_INDEX64", "1")
    test = {"max": test_max_pool2d_matches_torch, "avg": test_avg_pool2d_matches_torch,
            "adaptive": test_adaptive_avg_pool2d_matches_torch}[op]
    with cnnkern.use_backend("cuda_emu"):
        test(("cuda_emu", "cpu"), case, layout)
