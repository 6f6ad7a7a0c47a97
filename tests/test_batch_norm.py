"""cnnkern's fused BatchNorm2d+ReLU against relu(nn.BatchNorm2d), every backend."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnkern
from cnnkern import functional as CF
from conftest import LAYOUTS, assert_close, make_input

SHAPES = [(2, 1, 1, 1), (1, 3, 5, 7), (4, 17, 7, 5), (3, 64, 4, 4), (2, 512, 3, 3), (5, 2, 13, 11)]


def pair(channels, dtype=torch.float64, **kwargs):
    """A BatchNormReLU2d and the nn.BatchNorm2d it must match, same state."""
    torch.manual_seed(channels)
    ref = nn.BatchNorm2d(channels, **kwargs).to(dtype)
    if ref.affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-0.5, 0.5)
    ours = cnnkern.BatchNormReLU2d(channels, **kwargs).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def step(ours, ref, x, dtype, backend, device):
    """One forward/backward of both on x; compares output and every gradient."""
    x_ref = x.detach().double().cpu().requires_grad_()
    x = x.detach().requires_grad_()
    y, y_ref = ours(x), F.relu(ref(x_ref))
    grad = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    params = [p for p in ours.parameters()]
    grads = torch.autograd.grad(y, [x] + params, grad.to(device=device, dtype=dtype))
    grads_ref = torch.autograd.grad(y_ref, [x_ref] + list(ref.parameters()), grad)
    assert y.dtype == dtype and y.shape == x.shape
    assert y.is_contiguous(memory_format=torch._prims_common.suggest_memory_format(x))
    assert_close(y, y_ref, dtype, backend, device, "output")
    for name, g, g_ref in zip(("input", "weight", "bias"), grads, grads_ref):
        assert_close(g, g_ref, dtype, backend, device, f"grad {name}")


def compare_state(ours, ref, dtype=torch.float64):
    for key, value in ref.state_dict().items():
        got = ours.state_dict()[key]
        if key == "num_batches_tracked":
            assert torch.equal(got.cpu(), value)
        else:
            assert_close(got, value.double(), torch.float32 if dtype != torch.float64 else dtype, what=key)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_training_steps_then_eval_match_torch(backend_device, shape, layout):
    backend, device = backend_device
    ours, ref = pair(shape[1])
    ours.to(device)
    for seed in range(3):  # running statistics after several steps
        x = make_input(shape, torch.float64, device, layout, seed=seed) * 2 + 3
        step(ours, ref, x, torch.float64, backend, device)
    compare_state(ours, ref)
    ours.eval(), ref.eval()
    step(ours, ref, make_input(shape, torch.float64, device, layout, seed=9), torch.float64, backend, device)
    ours.train(), ref.train()  # and back
    step(ours, ref, make_input(shape, torch.float64, device, layout, seed=10), torch.float64, backend, device)
    compare_state(ours, ref)


@pytest.mark.parametrize("options", [dict(momentum=None), dict(affine=False), dict(track_running_stats=False),
                                     dict(momentum=0.5, eps=1e-3)], ids=str)
def test_module_options(backend_device, options):
    backend, device = backend_device
    ours, ref = pair(6, **options)
    ours.to(device)
    for seed in range(3):
        step(ours, ref, make_input((3, 6, 4, 5), torch.float64, device, seed=seed), torch.float64, backend, device)
    compare_state(ours, ref)
    ours.eval(), ref.eval()
    step(ours, ref, make_input((2, 6, 3, 3), torch.float64, device, seed=7), torch.float64, backend, device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_reduced_precision(backend_device, dtype):
    backend, device = backend_device
    ours, ref = pair(17)
    ours.to(device=device)  # parameters stay fp32 with reduced-precision activations, as under autocast
    ours.float()
    step(ours, ref, make_input((4, 17, 7, 5), dtype, device, "channels_last"), dtype, backend, device)
    compare_state(ours, ref, dtype)


def test_statistics_stay_accurate_with_a_large_mean(backend_device):
    # float32 values 1000 + N(0, 1): E[x²] - E[x]² would lose most digits; the chunked Chan merge must not.
    _, device = backend_device
    x = make_input((8, 3, 16, 16), torch.float64, device) + 1000
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    ops = cnnkern._ops.ops_for(cnnkern.current_backend() or "cpu")
    _, got_mean, got_var = ops.batch_norm_relu(x.float(), None, None, None, None, True, 1e-5)
    torch.testing.assert_close(got_mean.double().cpu(), mean.cpu(), rtol=1e-6, atol=0)
    torch.testing.assert_close(got_var.double().cpu(), var.cpu(), rtol=1e-3, atol=0)


def test_gradcheck_float64(backend_device):
    _, device = backend_device
    x = make_input((3, 2, 3, 2), torch.float64, device, seed=4).requires_grad_()
    w = torch.tensor([0.7, 1.3], dtype=torch.float64, device=device, requires_grad=True)
    b = torch.tensor([0.2, -0.1], dtype=torch.float64, device=device, requires_grad=True)
    rm, rv = torch.zeros(2, dtype=torch.float64, device=device), torch.ones(2, dtype=torch.float64, device=device)
    assert torch.autograd.gradcheck(lambda x, w, b: CF.batch_norm_relu(x, None, None, w, b, training=True),
                                    (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: CF.batch_norm_relu(x, rm, rv, w, b, training=False), (x, w, b))


def test_single_value_per_channel_raises_like_torch(backend_device):
    _, device = backend_device
    x = torch.randn(1, 4, 1, 1, device=device)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        cnnkern.BatchNormReLU2d(4).to(device)(x)
    with pytest.raises(ValueError):
        nn.BatchNorm2d(4).to(device)(x)
    with pytest.raises(ValueError, match="expected 4D input"):
        cnnkern.BatchNormReLU2d(4).to(device)(torch.randn(2, 4, 3, device=device))


def test_empty_batch_leaves_running_statistics(backend_device):
    _, device = backend_device
    bn = cnnkern.BatchNormReLU2d(3).to(device)
    x = torch.zeros(0, 3, 4, 4, device=device, requires_grad=True)
    y = bn(x)
    y.sum().backward()
    assert y.shape == x.shape
    assert torch.equal(bn.running_mean.cpu(), torch.zeros(3)) and torch.equal(bn.running_var.cpu(), torch.ones(3))


@pytest.mark.parametrize("ns", ["cnnkern", "cnnkern_emu"] + (["cnnkern_triton"] if torch.cuda.is_available() else []))
def test_opcheck(ns):
    device = "cuda" if ns == "cnnkern_triton" else "cpu"
    op = getattr(torch.ops, ns)
    for layout in ("contiguous", "channels_last"):
        x = make_input((3, 5, 4, 3), torch.float32, device, layout)
        w, b = torch.rand(5, device=device) + 0.5, torch.randn(5, device=device)
        rm, rv = torch.randn(5, device=device), torch.rand(5, device=device) + 0.5
        for training in (True, False):
            for requires_grad in (False, True):
                args = [t.detach().requires_grad_(requires_grad) for t in (x, w, b)]
                torch.library.opcheck(op.batch_norm_relu.default, (*args, rm, rv, training, 1e-5))
            y, mean, var = op.batch_norm_relu(x, w, b, rm, rv, training, 1e-5)
            torch.library.opcheck(op.batch_norm_relu_backward.default,
                                  (torch.randn_like(y), y, x, mean, var, w, training, 1e-5))


@pytest.mark.parametrize("backend", ["cpu", "cuda_emu"])
def test_torch_compile_fullgraph_all_four_layer_types(backend):
    torch.manual_seed(5)
    model = nn.Sequential(cnnkern.Conv2d(3, 8, 3, padding=1), cnnkern.BatchNormReLU2d(8), cnnkern.MaxPool2d(2),
                          cnnkern.Conv2d(8, 8, 3, padding=1), cnnkern.BatchNormReLU2d(8), cnnkern.AvgPool2d(2),
                          cnnkern.AdaptiveAvgPool2d(1))
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    with cnnkern.use_backend(backend):
        eager = model(x)
        (gx_eager,) = torch.autograd.grad(eager.sum(), x)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        torch._dynamo.reset()
        out = torch.compile(model, fullgraph=True)(x)
        (gx,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(gx, gx_eager)
    # the compiled step updated the running statistics once more, as eager does
    assert model[1].num_batches_tracked.item() == 2 and not torch.equal(model[1].running_mean, state["1.running_mean"])
