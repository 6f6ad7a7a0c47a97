"""torch.autocast with cnnkern layers behaves as with torch.nn's: conv computes in the
autocast dtype, BatchNorm keeps fp32 parameters and statistics with a low-precision
input, pooling follows its input; GradScaler trains through them."""
import pytest
import torch
from torch import nn

import cnnkern

from conftest import assert_close

CPU_BACKENDS = [b for b in cnnkern.available_backends("cpu")]


def _pair_of_nets():
    torch.manual_seed(0)
    ours = nn.Sequential(cnnkern.Conv2d(3, 8, 3, padding=1), cnnkern.BatchNormReLU2d(8), cnnkern.MaxPool2d(2),
                         cnnkern.Conv2d(8, 4, 3, bias=False), cnnkern.AvgPool2d(2), cnnkern.AdaptiveAvgPool2d(1))
    ref = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Sequential(nn.BatchNorm2d(8), nn.ReLU()), nn.MaxPool2d(2),
                        nn.Conv2d(8, 4, 3, bias=False), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1))
    state = ours.state_dict()
    ref.load_state_dict({k.replace("1.", "1.0.", 1) if k.startswith("1.") else k: v for k, v in state.items()})
    return ours, ref


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cpu_autocast_matches_torch(backend):
    ours, ref = _pair_of_nets()
    x = torch.randn(2, 3, 10, 10)
    with cnnkern.use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
        h_ours, h_ref = x, x
        for a, b in zip(ours, ref):
            h_ours, h_ref = a(h_ours), b(h_ref)
            assert h_ours.dtype == h_ref.dtype == torch.bfloat16, (a, h_ours.dtype, h_ref.dtype)
        # a bf16 activation meeting fp32 weights inside autocast is not an error
        assert ours[3].weight.dtype == torch.float32
    assert_close(h_ours, h_ref.double(), torch.bfloat16, what=f"{backend} autocast")
    bn = ours[1]
    assert bn.weight.dtype == bn.running_mean.dtype == bn.running_var.dtype == torch.float32
    assert_close(bn.running_mean, ref[1][0].running_mean.double(), torch.bfloat16, what="running_mean")
    assert_close(bn.running_var, ref[1][0].running_var.double(), torch.bfloat16, what="running_var")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_grad_scaler_trains_under_autocast(backend):
    ours, _ = _pair_of_nets()
    head = nn.Linear(4, 3)
    params = list(ours.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 10, 10, generator=gen), torch.randint(0, 3, (8,), generator=gen)
    before = [p.detach().clone() for p in params]
    losses = []
    with cnnkern.use_backend(backend):
        for _ in range(3):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(head(ours(x).flatten(1)).float(), y)
            scaler.scale(loss).backward()
            assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)
            scaler.step(opt)
            scaler.update()
            losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(b, p) for b, p in zip(before, params)), "no parameter moved"


@pytest.mark.parametrize("ns", ["cnnkern", "cnnkern_emu"])
def test_the_cpp_conv_op_has_its_own_autocast_kernel(ns):
    # torch.ops.cnnkern*.conv2d called directly (no cnnkern.functional on the way) casts its fp32
    # tensors to the autocast dtype, keeps fp64 ones, and differentiates through the casts.
    op = getattr(torch.ops, ns).conv2d
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 6, generator=gen, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, generator=gen, requires_grad=True)
    b = torch.randn(4, generator=gen, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = op(x, w, b, [1, 1], [1, 1], [1, 1], 1)
        y64 = op(x.double(), w.double(), b.double(), [1, 1], [1, 1], [1, 1], 1)
    assert y.dtype == torch.bfloat16 and y64.dtype == torch.float64
    ref = op(x.bfloat16(), w.bfloat16(), b.bfloat16(), [1, 1], [1, 1], [1, 1], 1)
    assert torch.equal(y, ref)
    y.float().sum().backward()
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == torch.float32
