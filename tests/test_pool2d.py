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
    dict(x=(2, 3, 6, 6), kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(x=(2, 3, 9, 9), kernel_size=3, stride=3, padding=1, ceil_mode=True),  # a 4th window would start in padding
    dict(x=(1, 4, 7, 11), kernel_size=(2, 3), stride=(1, 2), dilation=(2, 1)),
    dict(x=(3, 1, 13, 13), kernel_size=2),  # MNIST LeNet's pooling, odd input
    dict(x=(2, 5, 8, 8), kernel_size=8),  # global
    dict(x=(1, 2, 6, 7), kernel_size=3, stride=1, padding=1),
    dict(x=(2, 17, 11, 7), kernel_size=(3, 2), stride=(2, 3), padding=(1, 1), dilation=(1, 2), ceil_mode=True),
]
AVG_CASES = [
    dict(x=(1, 1, 1, 1), kernel_size=1),
    dict(x=(2, 3, 5, 5), kernel_size=2, stride=2, ceil_mode=True),
    dict(x=(2, 3, 6, 6), kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(x=(2, 3, 6, 6), kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=True),
    dict(x=(2, 3, 9, 9), kernel_size=3, stride=3, padding=1, ceil_mode=True, count_include_pad=False),
    dict(x=(1, 4, 7, 11), kernel_size=(2, 3), stride=(1, 2), divisor_override=5),
    dict(x=(2, 5, 8, 8), kernel_size=8),
    dict(x=(2, 17, 11, 7), kernel_size=(3, 2), stride=(2, 3), padding=(1, 1)),
]
ADAPTIVE_CASES = [
    dict(x=(2, 3, 8, 8), output_size=1),  # global average pooling
    dict(x=(2, 3, 7, 11), output_size=(3, 5)),
    dict(x=(1, 2, 3, 3), output_size=(4, 4)),  # larger than the input: overlapping windows
    dict(x=(2, 4, 9, 6), output_size=(None, 2)),
    dict(x=(1, 17, 5, 5), output_size=(5, 5)),
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
@pytest.mark.parametrize("op,case", [("max_pool2d", MAX_CASES[8]), ("avg_pool2d", AVG_CASES[7]),
                                     ("adaptive_avg_pool2d", ADAPTIVE_CASES[1])], ids=["max", "avg", "adaptive"])
def test_reduced_precision(backend_device, op, case, dtype):
    backend, device = backend_device
    x, y, y_ref, dx, dx_ref = run(op, case, dtype, device, "channels_last")
    y = y[0] if isinstance(y, tuple) else y
    y_ref = y_ref[0] if isinstance(y_ref, tuple) else y_ref
    assert y.dtype == dtype and dx.dtype == dtype
    assert_close(y, y_ref, dtype, backend, device, "output")
    assert_close(dx, dx_ref, dtype, backend, device, "grad input")


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
            torch.library.opcheck(op.avg_pool2d.default, (x, [3, 2], [2, 1], [1, 1], True, False, None))
            torch.library.opcheck(op.adaptive_avg_pool2d.default, (x, [3, 4]))
        x = x.detach()
        y, idx = op.max_pool2d(x, *geometry)
        torch.library.opcheck(op.max_pool2d_backward.default, (torch.randn_like(y), x, idx, *geometry))
        y = op.avg_pool2d(x, [3, 2], [2, 1], [1, 1], True, False, 4)
        torch.library.opcheck(op.avg_pool2d_backward.default,
                              (torch.randn_like(y), x, [3, 2], [2, 1], [1, 1], True, False, 4))
        y = op.adaptive_avg_pool2d(x, [3, 4])
        torch.library.opcheck(op.adaptive_avg_pool2d_backward.default, (torch.randn_like(y), x))


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
