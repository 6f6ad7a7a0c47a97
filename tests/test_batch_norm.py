"""cnnkern's fused BatchNorm2d+activation against act(nn.BatchNorm2d), every backend."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import cnnkern
from cnnkern import _ops
from cnnkern import functional as CF
from conftest import BACKEND_DEVICES, LAYOUTS, assert_close, make_input

# C=1 and C=3, batch 1 with spatial > 1, odd and prime sizes; (37, 3, 3, 3) spans several
# Triton tiles per program, (2, 1, 30, 20) planes longer than one Triton band.
SHAPES = [(2, 1, 1, 1), (1, 3, 5, 7), (4, 17, 7, 5), (3, 64, 4, 4), (2, 512, 3, 3), (5, 2, 13, 11), (37, 3, 3, 3),
          (2, 1, 30, 20)]
TRITON = [(b, d) for b, d in BACKEND_DEVICES if b == "triton"]


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


# activation name: torch's function (cnnkern.functional.ACTIVATIONS)
ACTS = {"relu": F.relu, "relu6": F.relu6, "silu": F.silu, "hardswish": F.hardswish, "identity": lambda z: z}


def step(ours, ref, x, dtype, backend, device):
    """One forward/backward of both on x; compares output and every gradient. The reference
    activation takes the BatchNorm output rounded to x's dtype, as an unfused fp16 or bf16
    BatchNorm2d would give it (and as cnnkern's backward evaluates the derivative): at
    Hardswish's and ReLU6's kinks the derivative jumps, and the unrounded z would put some
    elements on the other side."""
    x_ref = x.detach().double().cpu().requires_grad_()
    x = x.detach().requires_grad_()
    act = ACTS[getattr(ours, "activation", "relu")]
    y, y_ref = ours(x), act(ref(x_ref).to(dtype).double())
    grad = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    params = [p for p in ours.parameters()]
    grads = torch.autograd.grad(y, [x] + params, grad.to(device=device, dtype=dtype))
    grads_ref = torch.autograd.grad(y_ref, [x_ref] + list(ref.parameters()), grad)
    assert y.dtype == dtype and y.shape == x.shape
    assert y.is_contiguous(memory_format=torch._prims_common.suggest_memory_format(x))
    assert_close(y, y_ref, dtype, backend, device, "output")
    for name, g, g_ref in zip(("input", "weight", "bias"), grads, grads_ref):
        assert g.dtype == (dtype if name == "input" else params[0].dtype)
        assert_close(g, g_ref, dtype, backend, device, f"grad {name}")


def act_pair(channels, activation, **kwargs):
    """pair() for an activation test: weights and biases large enough that every activation's
    kinks and flat parts (z < -3, z > 3, z > 6) hold elements."""
    torch.manual_seed(channels)
    ref = nn.BatchNorm2d(channels, **kwargs).double()
    with torch.no_grad():
        ref.weight.uniform_(1.0, 4.0)
        ref.bias.uniform_(-1.0, 1.0)
    ours = cnnkern.BatchNormAct2d(channels, activation=activation, **kwargs).double()
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def compare_state(ours, ref, dtype=torch.float64):
    for key, value in ref.state_dict().items():
        got = ours.state_dict()[key]
        if key == "num_batches_tracked":
            assert torch.equal(got.cpu(), value)
        else:
            assert got.dtype == ours.state_dict()[key].dtype
            assert_close(got, value.double(), got.dtype if got.dtype != torch.float64 else dtype, what=key)


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
    compare_state(ours, ref)  # eval leaves the buffers alone
    ours.train(), ref.train()  # and back
    step(ours, ref, make_input(shape, torch.float64, device, layout, seed=10), torch.float64, backend, device)
    compare_state(ours, ref)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(4, 17, 7, 5), (2, 8, 30, 20)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activation", ["relu6", "silu", "hardswish", "identity"])
def test_activation_training_then_eval_matches_torch(backend_device, activation, shape, layout):
    backend, device = backend_device
    ours, ref = act_pair(shape[1], activation)
    ours.to(device)
    for seed in range(2):
        step(ours, ref, make_input(shape, torch.float64, device, layout, seed=seed) * 2 + 3, torch.float64, backend,
             device)
    compare_state(ours, ref)
    ours.eval(), ref.eval()
    step(ours, ref, make_input(shape, torch.float64, device, layout, seed=9), torch.float64, backend, device)
    compare_state(ours, ref)
    with torch.no_grad():  # the data reached every piece of the activation
        z = ref(make_input(shape, torch.float64, "cpu", seed=9))
    assert (z < -3).any() and ((z > -3) & (z < 0)).any() and (z > 6).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("activation", ["relu6", "silu", "hardswish", "identity"])
def test_activation_reduced_precision(backend_device, activation, dtype):
    backend, device = backend_device
    ours, ref = act_pair(16, activation)
    ours.to(device=device).float()
    for layout in ("channels_last", "contiguous"):
        step(ours, ref, make_input((4, 16, 7, 5), dtype, device, layout, seed=3), dtype, backend, device)
    compare_state(ours, ref, dtype)


@pytest.mark.parametrize("activation", ["relu6", "silu", "hardswish", "identity"])
def test_activation_gradcheck_float64(backend_device, activation):
    _, device = backend_device
    x = make_input((3, 2, 3, 2), torch.float64, device, seed=4).requires_grad_()
    w = torch.tensor([2.7, 3.3], dtype=torch.float64, device=device, requires_grad=True)
    b = torch.tensor([0.2, -0.1], dtype=torch.float64, device=device, requires_grad=True)
    rm, rv = torch.zeros(2, dtype=torch.float64, device=device), torch.ones(2, dtype=torch.float64, device=device)
    for training in (True, False):
        assert torch.autograd.gradcheck(
            lambda x, w, b: CF.batch_norm_relu(x, rm, rv, w, b, training=training, momentum=0.0,
                                               activation=activation), (x, w, b))


def test_unknown_activation_raises_value_error(backend_device):
    _, device = backend_device
    with pytest.raises(ValueError, match="activation"):
        cnnkern.BatchNormAct2d(3, activation="gelu")
    x = torch.randn(2, 3, 2, 2, device=device)
    with pytest.raises(ValueError, match="activation"):
        CF.batch_norm_relu(x, None, None, training=True, activation="tanh")
    ops = _ops.ops_for(cnnkern.current_backend())
    with pytest.raises(ValueError, match="unknown activation"):  # the op checks it too
        ops.batch_norm_relu(x, None, None, None, None, None, True, 0.1, 1e-5, "tanh")


def test_batch_norm_act_is_a_batch_norm2d_with_an_activation():
    ours = cnnkern.BatchNormAct2d(5, eps=1e-3, momentum=None, activation="silu")
    ref = nn.BatchNorm2d(5, eps=1e-3, momentum=None)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert repr(ours) == repr(ref).replace("BatchNorm2d(", "BatchNormAct2d(")[:-1] + ", activation=silu)"
    assert repr(cnnkern.BatchNormReLU2d(5)) == repr(nn.BatchNorm2d(5)).replace("BatchNorm2d", "BatchNormReLU2d")
    assert cnnkern.BatchNormReLU2d(5).activation == "relu" and isinstance(cnnkern.BatchNormReLU2d(5),
                                                                           cnnkern.BatchNormAct2d)


def test_rows_at_two_strides(backend_device):
    # x[:, :, ::2]: neither channels_last rows nor NCHW planes at one stride (Triton copies it first).
    backend, device = backend_device
    ours, ref = pair(3)
    ours.to(device)
    x = make_input((2, 3, 10, 5), torch.float64, device, seed=3)[:, :, ::2]
    step(ours, ref, x, torch.float64, backend, device)
    compare_state(ours, ref)


@pytest.mark.parametrize("options", [dict(momentum=None), dict(affine=False), dict(track_running_stats=False),
                                     dict(momentum=0.5, eps=1e-3)], ids=str)
def test_module_options(backend_device, options):
    backend, device = backend_device
    ours, ref = pair(6, **options)
    ours.to(device)
    for seed in range(4):  # momentum=None: the cumulative factor 1, 1/2, 1/3, 1/4
        step(ours, ref, make_input((3, 6, 4, 5), torch.float64, device, seed=seed), torch.float64, backend, device)
        compare_state(ours, ref)
    ours.eval(), ref.eval()
    step(ours, ref, make_input((2, 6, 3, 3), torch.float64, device, seed=7), torch.float64, backend, device)
    compare_state(ours, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_reduced_precision(backend_device, dtype):
    backend, device = backend_device
    ours, ref = pair(17)
    ours.to(device=device)  # parameters stay fp32 with reduced-precision activations, as under autocast
    ours.float()
    for seed in range(2):
        step(ours, ref, make_input((4, 17, 7, 5), dtype, device, "channels_last", seed=seed), dtype, backend, device)
    compare_state(ours, ref, dtype)


@pytest.mark.parametrize("momentum", [0.1, None], ids=str)
def test_bfloat16_module_keeps_bfloat16_buffers(backend_device, momentum):
    # A bf16 module: bf16 weights and running statistics, updated in fp32 and
    # stored back in bf16, as torch's bf16 nn.BatchNorm2d does.
    backend, device = backend_device
    ours, ref = pair(5, momentum=momentum)
    ours.to(device=device, dtype=torch.bfloat16)
    torch_bf16 = copy.deepcopy(ref).to(torch.bfloat16)
    ref.load_state_dict(ours.state_dict())  # the reference starts from the rounded parameters
    for seed in range(3):
        x = make_input((4, 5, 6, 3), torch.bfloat16, device, "channels_last", seed=seed) * 3 + 1
        step(ours, ref, x, torch.bfloat16, backend, device)
        torch_bf16(x.cpu())
    for key in ("running_mean", "running_var"):
        got = ours.state_dict()[key]
        assert got.dtype == torch.bfloat16
        assert_close(got, ref.state_dict()[key], torch.bfloat16, what=key)
        assert_close(got, torch_bf16.state_dict()[key], torch.bfloat16, what=f"{key} (torch's bf16 module)")
    assert ours.num_batches_tracked.item() == 3


def test_statistics_stay_accurate_with_a_large_mean(backend_device):
    # float32 values 1000 + N(0, 1): E[x²] - E[x]² would lose most digits; Welford and Chan's merge must not.
    _, device = backend_device
    x = make_input((8, 3, 16, 16), torch.float64, device) + 1000
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    ops = _ops.ops_for(cnnkern.current_backend() or "cpu")
    for layout in ("contiguous", "channels_last"):
        xf = x.float().contiguous(memory_format=torch.channels_last if layout == "channels_last" else
                                  torch.contiguous_format)
        _, got_mean, got_var = ops.batch_norm_relu(xf, None, None, None, None, None, True, None, 1e-5)
        torch.testing.assert_close(got_mean.double().cpu(), mean.cpu(), rtol=1e-6, atol=0)
        torch.testing.assert_close(got_var.double().cpu(), var.cpu(), rtol=1e-3, atol=0)


@pytest.mark.parametrize("momentum", [0.3, None], ids=str)
def test_op_updates_its_buffers_as_f_batch_norm(backend_device, momentum):
    # The op alone, without the module: it bumps the counter, derives the factor and updates in place.
    _, device = backend_device
    ops = _ops.ops_for(cnnkern.current_backend())
    x = make_input((3, 4, 5, 2), torch.float64, device, seed=5) * 2 + 1
    rm = torch.randn(4, dtype=torch.float64, device=device)
    rv = torch.rand(4, dtype=torch.float64, device=device) + 0.5
    count = torch.tensor(4, device=device)
    rm_ref, rv_ref = rm.cpu().clone(), rv.cpu().clone()
    F.batch_norm(x.cpu(), rm_ref, rv_ref, training=True, momentum=0.2 if momentum is None else momentum)
    y, mean, var = ops.batch_norm_relu(x, None, None, rm, rv, count, True, momentum, 1e-5)  # None: 1/(4+1)
    assert count.item() == 5
    assert_close(rm, rm_ref, torch.float64, what="running_mean")
    assert_close(rv, rv_ref, torch.float64, what="running_var")
    assert_close(mean, x.cpu().mean((0, 2, 3)), torch.float64, what="mean")
    assert_close(var, x.cpu().var((0, 2, 3), unbiased=False), torch.float64, what="var")
    # Eval reads the buffers and leaves them (and the counter) alone.
    ops.batch_norm_relu(x, None, None, rm, rv, count, False, momentum, 1e-5)
    assert count.item() == 5
    assert_close(rm, rm_ref, torch.float64, what="running_mean after eval")
    # Training without buffers: the counter still counts, nothing else is touched.
    ops.batch_norm_relu(x, None, None, None, None, count, True, momentum, 1e-5)
    assert count.item() == 6
    # momentum=None without a counter is a factor of 0, as nn.BatchNorm2d's.
    before = rm.clone()
    ops.batch_norm_relu(x, None, None, rm, rv, None, True, None, 1e-5)
    assert torch.equal(rm, before)


def test_functional_counter_and_cumulative_average(backend_device):
    _, device = backend_device
    rm, rv = torch.zeros(3, dtype=torch.float64, device=device), torch.ones(3, dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.long, device=device)
    xs = [make_input((2, 3, 4, 4), torch.float64, device, seed=s) + s for s in range(3)]
    for x in xs:
        CF.batch_norm_relu(x, rm, rv, training=True, momentum=None, num_batches_tracked=count)
    everything = torch.stack([x.cpu() for x in xs])  # a cumulative average of the batch statistics
    assert count.item() == 3
    assert_close(rm, everything.mean((1, 3, 4)).mean(0), torch.float64, what="running_mean")
    unbiased = torch.stack([x.cpu().var((0, 2, 3)) for x in xs]).mean(0)
    assert_close(rv, unbiased, torch.float64, what="running_var")


def test_relu_mask_follows_the_rounded_output(backend_device):
    # Where the pre-activation is positive but rounds to 0 in fp16, y = 0 and its
    # gradient is 0, as torch's. A Triton backward that recomputed the mask as
    # pre > 0 instead of from the rounded value would pass gradient there.
    backend, device = backend_device
    x = torch.tensor([-1.0, 0.0, 1.0, 0.0] * 8, dtype=torch.float16).reshape(2, 4, 2, 2).to(device)
    bias = torch.full((4,), 1e-8, device=device, requires_grad=True)  # fp16 underflows below 3e-8
    weight = torch.ones(4, device=device, requires_grad=True)
    rm, rv = torch.zeros(4, device=device), torch.ones(4, device=device)
    for training in (False, True):
        xg = x.clone().requires_grad_()
        y = CF.batch_norm_relu(xg, rm.clone(), rv.clone(), weight, bias, training=training)
        (dx,) = torch.autograd.grad(y, [xg], torch.ones_like(y))
        assert ((y > 0) == (x > 0)).all()
        x_ref = x.double().cpu().requires_grad_()
        y_ref = F.relu(F.batch_norm(x_ref, rm.double().cpu(), rv.double().cpu(), weight.double().cpu().detach(),
                                    bias.double().cpu().detach(), training=training).half().double())
        (dx_ref,) = torch.autograd.grad(y_ref, [x_ref], torch.ones_like(y_ref))
        assert_close(dx, dx_ref, torch.float16, backend, device, f"grad input (training={training})")


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
    ref = nn.BatchNorm2d(3)
    x = torch.zeros(0, 3, 4, 4, device=device, requires_grad=True)
    y = bn(x)
    y.sum().backward()
    ref(x.detach().cpu())
    assert y.shape == x.shape
    assert torch.equal(bn.running_mean.cpu(), torch.zeros(3)) and torch.equal(bn.running_var.cpu(), torch.ones(3))
    assert bn.num_batches_tracked.item() == ref.num_batches_tracked.item() == 1


class _OpLog(TorchDispatchMode):
    """The ops that reach the dispatcher's Python key (an op's own internals do not)."""

    def __init__(self):
        super().__init__()
        self.ops = []
        self.paused = False  # inside a Triton launch (the interpreter's own argument copies)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused and func.overloadpacket not in (torch.ops.aten.detach, torch.ops.aten.alias):
            self.ops.append(str(func.overloadpacket))  # (views autograd makes to save tensors are left out)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_module_is_one_op_per_pass(backend_device, training, monkeypatch):
    # No bookkeeping around the op: the counter bump and the running-statistics
    # update happen inside it.
    backend, device = backend_device
    ns = _ops._NAMESPACE[backend]
    if backend == "triton":  # eager Triton calls skip the dispatcher (_ops._triton_eager): watch the registered ops
        monkeypatch.setitem(_ops._NS_CACHE, "triton-eager", torch.ops.cnnkern_triton)
    bn = cnnkern.BatchNormReLU2d(5, momentum=None).to(device).train(training)
    x = make_input((2, 5, 3, 3), torch.float32, device, "channels_last").requires_grad_()
    grad = torch.ones(2, 5, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    with _OpLog() as forward:
        y = bn(x)
    with _OpLog() as backward:
        torch.autograd.grad(y, [x, bn.weight, bn.bias], grad)
    assert forward.ops == [f"{ns}.batch_norm_relu"]
    assert backward.ops == [f"{ns}.batch_norm_relu_backward"]
    assert bn.num_batches_tracked.item() == (1 if training else 0)


class _CountLaunches:
    """An intercept_launches hook (cnnkern.kernels._util): counts each launch by kernel name, then runs it."""

    def __init__(self):
        self.names, self.log = [], None

    def __call__(self, kernel, grid, args, kwargs):
        from cnnkern.kernels import _util

        self.names.append(kernel.__name__)
        if self.log is not None:
            self.log.paused = True
        try:
            return _util.run_launch(kernel, grid, args, kwargs)
        finally:
            if self.log is not None:
                self.log.paused = False


@pytest.mark.skipif(not TRITON, reason="the triton backend is not available")
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_launches_at_most_three_per_pass(layout, dtype):
    from cnnkern.kernels import _util
    from cnnkern.kernels import batch_norm as kernels

    _, device = TRITON[0]
    counter = _CountLaunches()
    bn = cnnkern.BatchNormReLU2d(6).to(device)
    bn.weight.data, bn.bias.data = bn.weight.data.to(torch.bfloat16), bn.bias.data.to(torch.bfloat16)
    x = make_input((3, 6, 5, 4), dtype, device, layout).requires_grad_()
    grad = torch.ones_like(x)
    with cnnkern.use_backend("triton"), _util.intercept_launches(counter):
        with _OpLog() as inner:  # inside the op: allocations only, no casts, fills or copies
            counter.log = inner
            y, mean, var = kernels.batch_norm_relu._init_fn(x.detach(), bn.weight, bn.bias, bn.running_mean,
                                                           bn.running_var, bn.num_batches_tracked, True, 0.1, 1e-5)
            kernels.batch_norm_relu_backward._init_fn(grad, x.detach(), mean, var, bn.weight, bn.bias, True, 1e-5,
                                                      [True, True, True])
        counter.log = None
        assert set(inner.ops) <= {"aten.empty", "aten.empty_strided"}, inner.ops
        assert counter.names == ["bn_stats_partial_kernel", "bn_stats_finalize_kernel", "bn_relu_apply_kernel",
                                 "bn_relu_bwd_reduce_kernel", "bn_relu_bwd_finalize_kernel", "bn_relu_bwd_dx_kernel"]
        counter.names.clear()
        y = bn(x)
        assert len(counter.names) <= 3
        counter.names.clear()
        grads = torch.autograd.grad(y, [x, bn.weight, bn.bias], grad)
        assert len(counter.names) <= 3
        assert grads[1].dtype == grads[2].dtype == torch.bfloat16  # written in the parameters' dtype
        counter.names.clear()
        bn.eval()
        y = bn(x.detach())
        assert counter.names == ["bn_relu_apply_kernel"]
    assert bn.num_batches_tracked.item() == 2


@pytest.mark.skipif(not TRITON, reason="the triton backend is not available")
def test_triton_finalize_merges_chunks_block_by_block(monkeypatch):
    # The finalize kernels walk a channel's chunk partials in blocks when they do
    # not fit one tile: force two chunks per block (the (16, 3, 8, 8) plan has four).
    from cnnkern.kernels import batch_norm as kernels

    backend, device = TRITON[0]
    plan = kernels._plan(torch.empty(16, 3, 8, 8, device=device).contiguous(memory_format=torch.channels_last),
                         backward=False)
    assert plan.chunks > 2
    monkeypatch.setattr(kernels, "_finalize_blocks", lambda plan, channels, sm_count: (1, 2))
    ours, ref = pair(3)
    ours.to(device)
    with cnnkern.use_backend("triton"):
        for seed in range(2):
            x = make_input((16, 3, 8, 8), torch.float64, device, "channels_last", seed=seed) * 2 + 5
            step(ours, ref, x, torch.float64, backend, device)
    compare_state(ours, ref)


@pytest.mark.parametrize("ns", ["cnnkern", "cnnkern_emu"] + (["cnnkern_triton"] if torch.cuda.is_available() else []))
def test_opcheck(ns):
    device = "cuda" if ns == "cnnkern_triton" else "cpu"
    op = getattr(torch.ops, ns)
    for layout in ("contiguous", "channels_last"):
        x = make_input((3, 5, 4, 3), torch.float32, device, layout)
        w, b = torch.rand(5, device=device) + 0.5, torch.randn(5, device=device)
        for training in (True, False):
            for momentum in (0.1, None):
                for requires_grad in (False, True):
                    args = [t.detach().requires_grad_(requires_grad) for t in (x, w, b)]
                    rm, rv = torch.randn(5, device=device), torch.rand(5, device=device) + 0.5
                    count = torch.tensor(2, device=device)
                    torch.library.opcheck(op.batch_norm_relu.default,
                                          (*args, rm, rv, count, training, momentum, 1e-5))
            for activation in ("relu", "silu", "relu6"):
                rm, rv = torch.randn(5, device=device), torch.rand(5, device=device) + 0.5
                args = [t.detach().requires_grad_() for t in (x, w, b)]
                torch.library.opcheck(op.batch_norm_relu.default,
                                      (*args, rm, rv, None, training, 0.1, 1e-5, activation))
                y, mean, var = op.batch_norm_relu(x, w, b, rm, rv, None, training, 0.1, 1e-5, activation)
                if ns == "cnnkern_triton":
                    torch.library.opcheck(op.batch_norm_relu_backward.default,
                                          (torch.randn_like(y), x, mean, var, w, b, training, 1e-5,
                                           [True, True, True], activation))
                else:
                    torch.library.opcheck(op.batch_norm_relu_backward.default,
                                          (torch.randn_like(y), y, x, mean, var, w, training, 1e-5, b, activation))


@pytest.mark.parametrize("backend", ["cpu", "cuda_emu"])
def test_torch_compile_fullgraph_all_four_layer_types(backend):
    torch.manual_seed(5)
    model = nn.Sequential(cnnkern.Conv2d(3, 8, 3, padding=1), cnnkern.BatchNormReLU2d(8), cnnkern.MaxPool2d(2),
                          cnnkern.Conv2d(8, 8, 3, padding=1), cnnkern.BatchNormReLU2d(8, momentum=None),
                          cnnkern.AvgPool2d(2), cnnkern.AdaptiveAvgPool2d(1))
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
    # the compiled step updated the buffers once more, as eager does (the
    # cumulative average of the same batch twice is that batch's statistics)
    assert model[1].num_batches_tracked.item() == model[4].num_batches_tracked.item() == 2
    assert not torch.equal(model[1].running_mean, state["1.running_mean"])


@pytest.mark.parametrize("momentum", [0.1, None], ids=str)
def test_op_updates_strided_buffers_of_another_dtype(backend_device, momentum):
    # Half activations with fp32 buffers (mixed precision, as torch allows), the variance a strided view:
    # the update is computed in fp32 and written through the buffers' strides, gaps untouched.
    _, device = backend_device
    ops = _ops.ops_for(cnnkern.current_backend())
    x = make_input((4, 6, 3, 5), torch.float16, device, "channels_last", seed=8) * 2 + 1
    rm = torch.randn(6, device=device)
    storage = torch.rand(12, device=device) + 0.5
    rv, gaps = storage[::2], storage[1::2].clone()
    count = torch.tensor(2, device=device)
    rm_ref, rv_ref = rm.cpu().double(), rv.cpu().double()
    F.batch_norm(x.cpu().double(), rm_ref, rv_ref, training=True, momentum=1 / 3 if momentum is None else momentum)
    ops.batch_norm_relu(x, None, None, rm, rv, count, True, momentum, 1e-5)  # None: 1 / (2 + 1)
    assert count.item() == 3 and rm.dtype == rv.dtype == torch.float32
    assert_close(rm, rm_ref, torch.float32, what="running_mean")
    assert_close(rv, rv_ref, torch.float32, what="running_var")
    assert torch.equal(storage[1::2], gaps)


# The CUDA kernels walk with 32-bit offsets below 2^31 elements and 64-bit ones above; the emulation build
# reads CNNKERN_EMU_INDEX64=1 at each launch to take the 64-bit path, so both are checked here.
@pytest.mark.skipif("cuda_emu" not in cnnkern.available_backends("cpu"), reason="needs the emulation build")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cuda_emu_64_bit_offset_path(monkeypatch, shape, layout):
    monkeypatch.setenv("CNNKERN_EMU_INDEX64", "1")
    with cnnkern.use_backend("cuda_emu"):
        test_training_steps_then_eval_match_torch(("cuda_emu", "cpu"), shape, layout)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("view", ["channels_last", "misaligned"])
def test_channels_last_vector_widths(backend_device, dtype, view):
    # C = 32 in channels_last takes the CUDA kernels' vectorised elementwise passes (2-4 channels per
    # access); a view starting 2 channels into a 40-channel tensor is misaligned for them and falls back.
    backend, device = backend_device
    ours, ref = pair(32)
    ours.to(device=device).float() if dtype != torch.float64 else ours.to(device)
    for seed in range(2):
        if view == "channels_last":
            x = make_input((3, 32, 5, 7), dtype, device, "channels_last", seed=seed)
        else:
            x = make_input((3, 40, 5, 7), dtype, device, "channels_last", seed=seed)[:, 2:34]
        step(ours, ref, x * 2 + 1, dtype, backend, device)
    compare_state(ours, ref, dtype)
    ours.eval(), ref.eval()
    step(ours, ref, make_input((2, 32, 3, 3), dtype, device, "channels_last", seed=5), dtype, backend, device)
