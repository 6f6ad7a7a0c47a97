"""Launch plans (cnnkern/kernels/_util.py, csrc/ops/launch_plan.cpp): a Triton launcher's first
eager call for given shapes is recorded, later ones are replayed in C++. A replay must give what
the launcher gives, bit for bit, for every layout and for gradients that arrive expanded (a copy
the plan redoes); what cannot be replayed must run the launcher; launch hooks and planning for
another GPU must see the launcher's own launches."""
import pytest
import torch
from torch import nn

import cnnkern
from conftest import make_input

pytestmark = pytest.mark.skipif("triton" not in cnnkern.available_backends("cpu"),
                                reason="needs triton and TRITON_INTERPRET=1")

LAYERS = {
    "max": (lambda: cnnkern.MaxPool2d(3, 2, 1), lambda: nn.MaxPool2d(3, 2, 1)),
    "max-indices": (lambda: cnnkern.MaxPool2d(2, return_indices=True), lambda: nn.MaxPool2d(2, return_indices=True)),
    "avg": (lambda: cnnkern.AvgPool2d(2, ceil_mode=True), lambda: nn.AvgPool2d(2, ceil_mode=True)),
    "adaptive": (lambda: cnnkern.AdaptiveAvgPool2d((2, 3)), lambda: nn.AdaptiveAvgPool2d((2, 3))),
    "bn-relu": (lambda: cnnkern.BatchNormReLU2d(5), lambda: nn.Sequential(nn.BatchNorm2d(5), nn.ReLU())),
}


def _util():
    from cnnkern.kernels import _util
    return _util


def _replayable_plans() -> int:
    return sum(p is not None for entry in _util().EAGER.values() for p in entry.plans.values())


def _step(layer, x, grad):
    y = layer(x)
    y = y[0] if isinstance(y, tuple) else y
    params = [x] + [p for p in layer.parameters()]
    return (y, *torch.autograd.grad(y, params, grad(y)))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("grad", ["dense", "expanded"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_a_replayed_plan_gives_what_the_launcher_gives(name, layout, grad):
    make_grad = (lambda y: torch.randn_like(y)) if grad == "dense" else (lambda y: torch.ones(()).expand_as(y))
    ours, ref = LAYERS[name][0]().double(), LAYERS[name][1]().double()
    x = make_input((3, 5, 9, 8), torch.float64, "cpu", layout).requires_grad_()
    torch.manual_seed(0)
    with cnnkern.use_backend("triton"):
        recorded = _step(ours, x, make_grad)
        plans = _replayable_plans()
        assert plans >= 2  # forward and backward
        torch.manual_seed(0)
        replayed = _step(ours, x, make_grad)
        assert _replayable_plans() == plans  # nothing new recorded: both passes replayed
    torch.manual_seed(0)
    expected = _step(ref, x, make_grad)
    for a, b, c in zip(recorded, replayed, expected):
        assert torch.equal(a, b)
        assert a.stride() == b.stride()
        torch.testing.assert_close(b, c, atol=1e-10, rtol=1e-10)
    if name == "bn-relu":  # the running statistics were updated by both calls, as torch's by its two
        _step(ref, x, make_grad)
        torch.testing.assert_close(ours.running_mean, ref[0].running_mean, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(ours.running_var, ref[0].running_var, atol=1e-10, rtol=1e-10)
        assert ours.num_batches_tracked.item() == 2


def test_a_copy_the_launcher_makes_is_redone_by_the_replay():
    # A non-contiguous weight is copied by the launcher (_util.contiguous): the replay copies the
    # new weight, not the recorded one.
    x = make_input((2, 4, 5, 5), torch.float64, "cpu")
    mean, var = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    entry = _util().EAGER["batch_norm_relu"]
    with cnnkern.use_backend("triton"):
        for seed in range(2):
            weight = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))[:, 0]
            y = cnnkern.functional.batch_norm_relu(x, mean, var, weight, None, True, 0.1, 1e-5)
            ref = torch.relu(torch.nn.functional.batch_norm(x, None, None, weight, None, True))
            torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-10)
    assert len(entry.plans) == 1 and None not in entry.plans.values()


class _Kernel:
    __name__ = "stub_kernel"


def test_a_launch_of_a_tensor_the_plan_cannot_make_is_never_replayed():
    util, ran, launched = _util(), [], []

    def launcher(x, view):
        ran.append(x)
        y = util.fresh(torch.empty_like(x))
        util.launch(_Kernel(), (1,), x[:, :1] if view else x, y, 7, BLOCK=4)
        return y

    replayable, not_replayable = util._eager_entry(launcher, True), util._eager_entry(launcher, True)
    with util.intercept_launches(lambda kernel, grid, args, kwargs: launched.append((grid, args, kwargs))):
        xs = [torch.randn(2, 3) for _ in range(3)]
        ys = [replayable(x, False) for x in xs]
        assert len(ran) == 1  # recorded once, then replayed
        for x, y, (grid, args, kwargs) in zip(xs, ys, launched):
            assert grid == (1,) and args[0] is x and args[1] is y and args[2] == 7 and kwargs == dict(BLOCK=4)
        assert len({id(y) for y in ys}) == 3 and all(y.shape == (2, 3) for y in ys)
        for x in xs:
            not_replayable(x, True)  # x[:, :1] is a view the plan cannot make
        assert len(ran) == 4 and list(not_replayable.plans.values()) == [None]


def test_launch_hooks_see_replayed_launches():
    seen = []
    layer = cnnkern.MaxPool2d(2)
    x = torch.randn(2, 3, 8, 8)
    with cnnkern.use_backend("triton"):
        with _util().intercept_launches(lambda kernel, grid, args, kwargs: seen.append((kernel, grid))):
            layer(x)  # recorded: the launcher's own launch goes to the hook
            layer(x)  # replayed in C++: so does its launch
    assert len(seen) == 2 and seen[0] == seen[1]
    assert _replayable_plans() == 1


def test_planning_for_another_gpu_runs_the_launcher():
    # planning_for: the launchers plan for an H100's tiles, not replay what this machine recorded
    x = torch.randn(4, 64, 32, 32)
    layer = cnnkern.MaxPool2d(2)
    grids = []
    with cnnkern.use_backend("triton"):
        with _util().intercept_launches(lambda kernel, grid, args, kwargs: grids.append(grid)):
            layer(x)
            with _util().planning_for(90, 132):
                layer(x)
            layer(x)
    assert grids[0] == grids[2] != grids[1], grids
