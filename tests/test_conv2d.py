"""cnnkern Conv2d against torch.nn, on every backend this machine can run."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._prims_common import suggest_memory_format

import cnnkern
from cnnkern import functional as CF
from conftest import LAYOUTS, assert_close, make_input

# (N, C, H, W), out channels, kernel, and conv arguments.
NAMED_CASES = {
    "c1-k1-3x3-p1": dict(x=(1, 1, 5, 5), k=1, kernel=(3, 3), padding=1),
    "c3-k4-3x3-p1": dict(x=(2, 3, 7, 11), k=4, kernel=(3, 3), padding=1),
    "c1-k5-5x5": dict(x=(3, 1, 13, 13), k=5, kernel=(5, 5)),  # the MNIST first layer's shape family
    "c3-k7-3x5-s2x3": dict(x=(1, 3, 17, 19), k=7, kernel=(3, 5), stride=(2, 3), padding=(1, 2)),
    "c4-k6-2x2-s3": dict(x=(2, 4, 9, 9), k=6, kernel=(2, 2), stride=3),  # stride larger than the kernel
    "c5-k3-3x3-d2": dict(x=(2, 5, 11, 7), k=3, kernel=(3, 3), padding=2, dilation=2),
    "c6-k4-3x1-d2x1-g2": dict(x=(2, 6, 8, 10), k=4, kernel=(3, 1), padding=(1, 0), dilation=(2, 1), groups=2),
    "c8-k8-3x3-s2-depthwise": dict(x=(2, 8, 7, 7), k=8, kernel=(3, 3), stride=2, padding=1, groups=8),
    "c6-k12-1x1-g3": dict(x=(1, 6, 5, 5), k=12, kernel=(1, 1), groups=3),
    "c3-k2-6x6-whole-input": dict(x=(2, 3, 6, 6), k=2, kernel=(6, 6)),  # kernel covers the whole input
    "c2-k3-5x5-past-input": dict(x=(1, 2, 3, 4), k=3, kernel=(5, 5), padding=2),  # kernel larger than the unpadded input
    "c3-k16-3x3-no-bias": dict(x=(2, 3, 10, 10), k=16, kernel=(3, 3), padding=1, bias=False),
    "c17-k33-3x3-prime": dict(x=(4, 17, 7, 5), k=33, kernel=(3, 3), padding=1),  # prime channel counts past one tile
}
CASES = list(NAMED_CASES.values())


def case_id(case):
    parts = ["x" + "x".join(map(str, case["x"])), f"k{case['k']}", "r" + "x".join(map(str, case["kernel"]))]
    parts += [f"{key}{case[key]}" for key in ("stride", "padding", "dilation", "groups", "bias") if key in case]
    return "-".join(str(p).replace(" ", "").replace("(", "").replace(")", "").replace(",", "_") for p in parts)


def conv_args(case):
    return {key: case[key] for key in ("stride", "padding", "dilation", "groups") if key in case}


def make_operands(case, dtype, device, layout="contiguous", seed=0):
    gen = torch.Generator().manual_seed(seed)
    groups = case.get("groups", 1)
    x = make_input(case["x"], dtype, device, layout, generator=gen)
    weight = torch.randn(case["k"], case["x"][1] // groups, *case["kernel"], generator=gen, dtype=torch.float64)
    bias = torch.randn(case["k"], generator=gen, dtype=torch.float64) if case.get("bias", True) else None
    convert = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return x, convert(weight), convert(bias)


def run_both(case, dtype, device, layout="contiguous", weight_layout="contiguous"):
    """cnnkern (in dtype) and torch (in float64, from the same rounded values): outputs and all gradients."""
    x, weight, bias = make_operands(case, dtype, device, layout)
    if weight_layout == "channels_last":  # as model.to(memory_format=torch.channels_last) leaves it
        weight = weight.contiguous(memory_format=torch.channels_last)
    params = [t for t in (x, weight, bias) if t is not None]
    ours = [t.clone().requires_grad_() for t in params]
    if layout == "channels_last":
        ours[0] = x.clone().requires_grad_()
    if layout == "strided":
        ours[0] = x.detach().requires_grad_()
    ref = [t.detach().double().cpu().requires_grad_() for t in params]
    y = CF.conv2d(*ours[:2], ours[2] if bias is not None else None, **conv_args(case))
    y_ref = F.conv2d(*ref[:2], ref[2] if bias is not None else None, **conv_args(case))
    grad = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad(y, ours, grad.to(device=device, dtype=dtype))
    grads_ref = torch.autograd.grad(y_ref, ref, grad)
    return (y, grads, ours), (y_ref, grads_ref)


def check_against_torch(case, dtype, backend, device, layout="contiguous", weight_layout="contiguous"):
    (y, grads, ours), (y_ref, grads_ref) = run_both(case, dtype, device, layout, weight_layout)
    assert y.dtype == dtype and y.device.type == device and y.shape == y_ref.shape
    assert_close(y, y_ref, dtype, backend, device, "output")
    for name, g, g_ref, t in zip(("input", "weight", "bias"), grads, grads_ref, ours):
        assert g.shape == t.shape and g.dtype == dtype
        assert_close(g, g_ref, dtype, backend, device, f"grad {name}")
    # The input gradient takes the output's memory format, as torch's does.
    format = suggest_memory_format(y)
    assert grads[0].is_contiguous(memory_format=format), (format, grads[0].stride())
    return y


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_float64_matches_torch(backend_device, case, layout):
    backend, device = backend_device
    y = check_against_torch(case, torch.float64, backend, device, layout)
    # The output keeps torch's memory format for the same input (C=1 stays NCHW, as in torch).
    x, weight, bias = make_operands(case, torch.float64, "cpu", layout)
    expected = suggest_memory_format(F.conv2d(x, weight, bias, **conv_args(case)))
    assert suggest_memory_format(y) == expected and y.is_contiguous(memory_format=expected)
    if layout == "channels_last" and case["x"][1] > 1:
        assert expected == torch.channels_last


DTYPE_CASES = [NAMED_CASES[name] for name in ("c3-k4-3x3-p1", "c3-k7-3x5-s2x3", "c8-k8-3x3-s2-depthwise",
                                               "c17-k33-3x3-prime")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", DTYPE_CASES, ids=case_id)
def test_reduced_precision_matches_float64_reference(backend_device, case, dtype):
    backend, device = backend_device
    layout = "channels_last" if case is NAMED_CASES["c17-k33-3x3-prime"] else "contiguous"
    check_against_torch(case, dtype, backend, device, layout)


# The channel-blocked kernels of the triton backend (16 or more channels in a
# pass's reduction), by name: each reaches a specialisation of theirs.
BLOCKED_CASES = {
    "c17-k33-3x3": dict(x=(4, 17, 7, 5), k=33, kernel=(3, 3), padding=1),  # several tiles and K steps, ragged
    "c32-k20-3x3-s2": dict(x=(2, 32, 9, 11), k=20, kernel=(3, 3), stride=2, padding=1),  # four stride phases
    "c16-k24-1x1": dict(x=(3, 16, 5, 7), k=24, kernel=(1, 1)),
    "c20-k18-3x3-d2": dict(x=(2, 20, 9, 8), k=18, kernel=(3, 3), padding=2, dilation=2),
    "c32-k32-3x3-s2-g2": dict(x=(2, 32, 7, 7), k=32, kernel=(3, 3), stride=2, padding=1, groups=2),
    "c16-k16-2x2-s3": dict(x=(2, 16, 8, 8), k=16, kernel=(2, 2), stride=3),  # phases with no tap at all
    "c18-k17-5x3-s2x3-d2x1": dict(x=(1, 18, 11, 10), k=17, kernel=(5, 3), stride=(2, 3), padding=(3, 1),
                                  dilation=(2, 1)),  # gcd(stride, dilation) > 1: taps two apart
    "c3-k16-3x3": dict(x=(2, 3, 10, 10), k=16, kernel=(3, 3), padding=1, bias=False),  # only the input grad blocked
    # stride 1, output channels a multiple of 8: the cuda backend's 16-bit input gradient runs as a
    # tensor-core forward conv of dy (negative effective padding for the first: 1x1 with padding)
    "c16-k24-1x1-p1": dict(x=(2, 16, 5, 7), k=24, kernel=(1, 1), padding=1),
    "c24-k32-3x3-d2": dict(x=(2, 24, 9, 8), k=32, kernel=(3, 3), padding=1, dilation=2),
    "c32-k48-3x3-g2": dict(x=(1, 32, 7, 6), k=48, kernel=(3, 3), padding=1, groups=2),
    # 16 output pixels: the weight and bias gradients in one split, stored by the kernel itself
    "c16-k20-3x3-one-split": dict(x=(1, 16, 4, 4), k=20, kernel=(3, 3), padding=1),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", sorted(BLOCKED_CASES))
def test_channel_blocked_float64(backend_device, name, layout):
    check_against_torch(BLOCKED_CASES[name], torch.float64, *backend_device, layout)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["c17-k33-3x3", "c32-k20-3x3-s2", "c18-k17-5x3-s2x3-d2x1", "c16-k20-3x3-one-split",
                                  "c16-k24-1x1-p1", "c24-k32-3x3-d2", "c32-k48-3x3-g2"])
def test_channel_blocked_reduced_precision(backend_device, name, dtype):
    check_against_torch(BLOCKED_CASES[name], dtype, *backend_device, "channels_last")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["c17-k33-3x3", "c32-k20-3x3-s2", "c32-k32-3x3-s2-g2", "c16-k20-3x3-one-split",
                                  "c24-k32-3x3-d2"])
def test_channel_blocked_channels_last_weight(backend_device, name, dtype):
    # A channels_last weight: the triton input gradient reads it in place for 16-bit dtypes (no pack)
    check_against_torch(BLOCKED_CASES[name], dtype, *backend_device, "channels_last", weight_layout="channels_last")


# fp32 with torch.backends.cudnn.allow_tf32 (torch's default): the cuda backend's three conv
# passes run on TF32 tensor cores, with 16-byte copies when the channel counts are multiples of
# 4 (c24-k32, c32-k48, c16-k24) and gathered ones when not (c17-k33, the odd CASES).
TF32_CASES = {**{name: BLOCKED_CASES[name] for name in ("c17-k33-3x3", "c32-k20-3x3-s2", "c16-k24-1x1-p1",
                                                        "c24-k32-3x3-d2", "c32-k48-3x3-g2",
                                                        "c18-k17-5x3-s2x3-d2x1", "c16-k16-2x2-s3")},
              **{name: NAMED_CASES[name] for name in ("c3-k7-3x5-s2x3", "c8-k8-3x3-s2-depthwise")}}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("name", sorted(TF32_CASES))
def test_float32_with_tf32_allowed(backend_device, tf32, name, layout):
    check_against_torch(TF32_CASES[name], torch.float32, *backend_device, layout)


@pytest.mark.parametrize("allow", [True, False], ids=["tf32", "ieee"])
def test_tf32_rounds_fp32_operands_only_when_allowed(backend_device, allow):
    """v = 1 + 3 * 2^-12 is exact in fp32; TF32 (10 mantissa bits) rounds it to nearest, 1 + 2^-10
    (truncation would give 1). A 1x1 conv with unit weights over 8 channels sums 8 of them: 8 v in
    fp32, 8 (1 + 2^-10) through TF32, both exact. The input gradient likewise (dy = v), and the
    weight gradient sums 15 products v * v over the 3x5 pixels: 15 v^2 (to fp32 rounding) against
    15 (1 + 2^-10)^2 (exact), 5e-4 apart. The CPU backend (and the triton interpreter) never use
    TF32."""
    backend, device = backend_device
    torch.backends.cudnn.allow_tf32 = allow
    v = 1 + 3 * 2.0 ** -12
    x = torch.full((1, 8, 3, 5), v, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.ones(8, 8, 1, 1, device=device).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(), w.requires_grad_()
    y = CF.conv2d(x, w)
    dx, dw = torch.autograd.grad(y, (x, w), torch.full_like(y, v))
    rounded, truncated = 1 + 2.0 ** -10, 1.0
    if allow and backend == "triton" and device == "cuda":  # Triton's own TF32 conversion: rounded or truncated
        operands = (rounded, truncated)
    else:
        operands = (rounded if allow and backend in ("cuda", "cuda_emu") else v,)
    for got, of in ((y, lambda u: 8 * u), (dx, lambda u: 8 * u), (dw, lambda u: 15 * u * u)):
        assert any(torch.allclose(got.double(), torch.full_like(got, of(u), dtype=torch.float64), rtol=1e-6, atol=0)
                   for u in operands), (got.flatten()[:4], [of(u) for u in operands])


# Depthwise convs (one input channel per group), which the cpu backend runs as direct loops, not
# GEMMs: channel multipliers 1, 2 and 3, strides, dilation, padding past the kernel, odd and prime
# sizes, batch 1 (C=1 with groups=1 is a plain conv, tested with CASES).
DEPTHWISE_CASES = {
    "c5-m1-3x3-s2-p1": dict(x=(2, 5, 9, 8), k=5, kernel=(3, 3), stride=2, padding=1, groups=5),
    "c4-m2-3x2-d2-p(2,1)": dict(x=(1, 4, 7, 6), k=8, kernel=(3, 2), padding=(2, 1), dilation=2, groups=4),
    "c3-m3-5x5-p2": dict(x=(3, 3, 5, 7), k=9, kernel=(5, 5), padding=2, groups=3),
    "c6-m1-1x1-s(1,2)": dict(x=(2, 6, 4, 5), k=6, kernel=(1, 1), stride=(1, 2), groups=6, bias=False),
    "c16-m1-3x3-p1": dict(x=(2, 16, 4, 4), k=16, kernel=(3, 3), padding=1, groups=16),
    # planes over 256 pixels: the cpu backend's NCHW (planes) order rather than channels_last copies
    "c3-m2-3x3-s(1,2)-d(2,1)-17x19": dict(x=(1, 3, 17, 19), k=6, kernel=(3, 3), stride=(1, 2), padding=1,
                                          dilation=(2, 1), groups=3),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", sorted(DEPTHWISE_CASES))
def test_depthwise(backend_device, name, layout, dtype):
    check_against_torch(DEPTHWISE_CASES[name], dtype, *backend_device, layout)


def test_weight_gradient_is_bitwise_reproducible_in_deterministic_mode(backend_device):
    """torch.use_deterministic_algorithms(True): the weight and bias gradients
    come out bit for bit the same run after run (the triton backend then sums
    its reduction splits in a fixed order instead of with atomics)."""
    backend, device = backend_device
    case = BLOCKED_CASES["c17-k33-3x3"]

    def grads():
        x, w, b = (t.requires_grad_() for t in make_operands(case, torch.float32, device, "channels_last"))
        y = CF.conv2d(x, w, b, **conv_args(case))
        return torch.autograd.grad(y, (w, b), torch.ones_like(y))

    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = grads(), grads()
    finally:
        torch.use_deterministic_algorithms(before)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    for a, b in zip(first, grads()):  # the default (atomic) reduction agrees within fp32 rounding
        torch.testing.assert_close(a, b)


def test_known_example(backend_device):
    # From the issue: a 5x5 image, the 3x3 kernel 1..9, no bias.
    _, device = backend_device
    x = torch.tensor([[3, 4, 6, 5, 7], [2, 4, 6, 8, 2], [1, 6, 7, 8, 4], [9, 7, 4, 6, 2], [3, 7, 5, 4, 1]],
                     dtype=torch.float32, device=device).view(1, 1, 5, 5)
    w = torch.arange(1.0, 10.0, device=device).view(1, 1, 3, 3)
    same = CF.conv2d(x, w, padding=1)
    assert same.shape == (1, 1, 5, 5)
    torch.testing.assert_close(same, F.conv2d(x, w, padding=1))
    strided = CF.conv2d(x, w, stride=2)
    assert strided.cpu().tolist() == [[[[211.0, 262.0], [251.0, 169.0]]]]


def test_gradcheck_float64(backend_device):
    _, device = backend_device
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 5, 4, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    w = torch.randn(4, 1, 2, 3, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    b = torch.randn(4, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    fn = lambda x, w, b: CF.conv2d(x, w, b, stride=(2, 1), padding=1, dilation=(1, 2), groups=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-7)


def test_padding_strings(backend_device):
    _, device = backend_device
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 9, 8, generator=gen, dtype=torch.float64).to(device)
    for kernel, dilation in (((3, 3), 1), ((4, 2), 1), ((3, 2), (2, 3))):  # even kernels pad asymmetrically
        w = torch.randn(5, 3, *kernel, generator=gen, dtype=torch.float64).to(device)
        for padding in ("same", "valid"):
            got = CF.conv2d(x, w, padding=padding, dilation=dilation)
            torch.testing.assert_close(got, F.conv2d(x, w, padding=padding, dilation=dilation))


def test_unbatched_input(backend_device):
    _, device = backend_device
    x = torch.randn(3, 6, 7, dtype=torch.float64, device=device)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device)
    torch.testing.assert_close(CF.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1))


def test_empty_batch(backend_device):
    _, device = backend_device
    x = torch.randn(0, 3, 8, 8, device=device, requires_grad=True)
    conv = cnnkern.Conv2d(3, 4, 3).to(device)
    y = conv(x)
    assert y.shape == (0, 4, 6, 6)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.count_nonzero(conv.weight.grad) == 0 and torch.count_nonzero(conv.bias.grad) == 0


# --- bad input: the exception type torch raises, never a crash -----------------------------------------------------

BAD_INPUTS = {
    "rank2-input": lambda: ((torch.randn(3, 5), torch.randn(2, 3, 3, 3)), {}),
    "rank3-weight": lambda: ((torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3)), {}),
    "channel-mismatch": lambda: ((torch.randn(1, 4, 5, 5), torch.randn(2, 3, 3, 3)), {}),
    "groups-not-dividing-out-channels": lambda: ((torch.randn(1, 4, 5, 5), torch.randn(3, 2, 3, 3)), {"groups": 2}),
    "groups-not-dividing-in-channels": lambda: ((torch.randn(1, 5, 5, 5), torch.randn(4, 2, 3, 3)), {"groups": 2}),
    "kernel-larger-than-padded-input": lambda: ((torch.randn(1, 1, 2, 2), torch.randn(1, 1, 3, 3)), {}),
    "dilated-kernel-too-large": lambda: ((torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3)), {"dilation": 2}),
    "mixed-dtypes": lambda: ((torch.randn(1, 1, 5, 5), torch.randn(1, 1, 3, 3, dtype=torch.float64)), {}),
    "bias-dtype": lambda: ((torch.randn(1, 1, 5, 5), torch.randn(1, 1, 3, 3), torch.randn(1, dtype=torch.float64)), {}),
    "bias-shape": lambda: ((torch.randn(1, 1, 5, 5), torch.randn(2, 1, 3, 3), torch.randn(3)), {}),
    "zero-stride": lambda: ((torch.randn(1, 1, 5, 5), torch.randn(1, 1, 3, 3)), {"stride": 0}),
    "negative-padding": lambda: ((torch.randn(1, 1, 5, 5), torch.randn(1, 1, 3, 3)), {"padding": -1}),
    "zero-dilation": lambda: ((torch.randn(1, 1, 5, 5), torch.randn(1, 1, 3, 3)), {"dilation": 0}),
    "zero-groups": lambda: ((torch.randn(1, 1, 5, 5), torch.randn(1, 1, 3, 3)), {"groups": 0}),
    "unknown-padding-string": lambda: ((torch.randn(1, 1, 5, 5), torch.randn(1, 1, 3, 3)), {"padding": "full"}),
    "same-with-stride": lambda: ((torch.randn(1, 1, 5, 5), torch.randn(1, 1, 3, 3)), {"padding": "same", "stride": 2}),
}


def test_integer_dtypes_are_a_clear_missing_feature(backend_device):
    # torch computes integer convolutions on the CPU; cnnkern's kernels are floating point only.
    x, w = torch.ones(1, 1, 5, 5, dtype=torch.long), torch.ones(1, 1, 3, 3, dtype=torch.long)
    with pytest.raises(NotImplementedError, match="float16, bfloat16, float32 and float64"):
        CF.conv2d(x.to(backend_device[1]), w.to(backend_device[1]))


def test_zero_input_channels_give_the_bias(backend_device):
    _, device = backend_device
    x, w, b = torch.randn(2, 0, 5, 5, device=device), torch.randn(3, 0, 3, 3, device=device), torch.randn(3, device=device)
    torch.testing.assert_close(CF.conv2d(x, w, b), b.view(1, 3, 1, 1).expand(2, 3, 3, 3))


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_raises_like_torch(backend_device, name):
    _, device = backend_device
    args, kwargs = BAD_INPUTS[name]()
    args = tuple(a.to(device) for a in args)
    with pytest.raises(Exception) as expected:
        F.conv2d(*args, **kwargs)
    with pytest.raises(type(expected.value)) as got:
        CF.conv2d(*args, **kwargs)
    assert str(got.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CPU and a CUDA tensor")
def test_mixed_devices_raise_like_torch():
    x, w = torch.randn(1, 1, 5, 5), torch.randn(1, 1, 3, 3, device="cuda")
    with pytest.raises(Exception) as expected:
        F.conv2d(x, w)
    with pytest.raises(type(expected.value)):
        CF.conv2d(x, w)


# --- the C++ ops directly: their own guards, and opcheck ------------------------------------------------------------

CPP_NAMESPACES = ["cnnkern", "cnnkern_emu"] + (["cnnkern_triton"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("ns", ["cnnkern", "cnnkern_emu"])
def test_op_guards_against_bad_shapes(ns):
    op = getattr(torch.ops, ns)
    with pytest.raises(RuntimeError, match="expects 6 input channels"):
        op.conv2d(torch.randn(1, 4, 5, 5), torch.randn(2, 3, 3, 3), None, [1, 1], [0, 0], [1, 1], 2)
    with pytest.raises(RuntimeError, match="larger than the padded input"):
        op.conv2d(torch.randn(1, 1, 2, 2), torch.randn(1, 1, 3, 3), None, [1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match="does not match the output"):
        op.conv2d_backward_input(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 5, 5), torch.randn(1, 1, 3, 3),
                                 [1, 1], [0, 0], [1, 1], 1)


def _opcheck_samples(device):
    gen = torch.Generator().manual_seed(5)
    for layout, name in (("contiguous", "c3-k7-3x5-s2x3"), ("channels_last", "c6-k4-3x1-d2x1-g2"),
                         ("strided", "c8-k8-3x3-s2-depthwise")):
        case = NAMED_CASES[name]
        for requires_grad in (False, True):
            x, w, b = make_operands(case, torch.float32, device, layout)
            if requires_grad:
                x, w, b = (t.detach().requires_grad_() if t is not None else None for t in (x, w, b))
            geometry = [list(torch.nn.modules.utils._pair(case.get(key, default)))
                        for key, default in (("stride", 1), ("padding", 0), ("dilation", 1))]
            yield (x, w, b, *geometry, case.get("groups", 1)), gen


@pytest.mark.parametrize("ns", CPP_NAMESPACES)
def test_opcheck(ns):
    device = "cuda" if ns == "cnnkern_triton" else "cpu"
    op = getattr(torch.ops, ns)
    for args, gen in _opcheck_samples(device):
        torch.library.opcheck(op.conv2d.default, args)
        y = op.conv2d(*(a.detach() if isinstance(a, torch.Tensor) else a for a in args))
        dy = torch.randn(y.shape, generator=gen).to(device)
        x, w, b, *geometry = (a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(op.conv2d_backward_input.default, (dy, x, w, *geometry))
        torch.library.opcheck(op.conv2d_backward_weight.default, (dy, x, w, *geometry))
        torch.library.opcheck(op.conv2d_backward_bias.default, (dy,))


# --- modules -------------------------------------------------------------------------------------------------------


def test_module_is_a_drop_in_for_nn_conv2d():
    kwargs = dict(stride=2, padding=1, dilation=1, groups=2, bias=True)
    torch.manual_seed(0)
    ref = nn.Conv2d(4, 6, 3, **kwargs)
    torch.manual_seed(0)
    ours = cnnkern.Conv2d(4, 6, 3, **kwargs)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0)  # same initialisation
    ours2 = cnnkern.Conv2d(4, 6, 3, **kwargs)
    ours2.load_state_dict(ref.state_dict())
    back = nn.Conv2d(4, 6, 3, **kwargs)
    back.load_state_dict(ours2.state_dict())
    x = torch.randn(2, 4, 9, 9)
    torch.testing.assert_close(ours2(x), ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(back(x), ref(x))
    assert repr(ours).replace("cnnkern.", "") .startswith("Conv2d(4, 6")
    with pytest.raises(ValueError):
        cnnkern.Conv2d(5, 6, 3, groups=2)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_module_padding_modes(backend_device, padding_mode):
    _, device = backend_device
    torch.manual_seed(1)
    ref = nn.Conv2d(3, 4, (3, 2), padding=(1, 2), padding_mode=padding_mode).double().to(device)
    ours = cnnkern.Conv2d(3, 4, (3, 2), padding=(1, 2), padding_mode=padding_mode).double().to(device)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, device=device)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("ns_backend", ["cpu", "cuda_emu"])
def test_torch_compile_fullgraph(ns_backend):
    torch.manual_seed(2)
    model = nn.Sequential(cnnkern.Conv2d(3, 8, 3, padding=1), nn.ReLU(), cnnkern.Conv2d(8, 4, 3, stride=2, groups=2))
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    with cnnkern.use_backend(ns_backend):
        eager = model(x)
        (gx_eager,) = torch.autograd.grad(eager.sum(), x)
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True)
        out = compiled(x)
        (gx,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(gx, gx_eager)
