"""Backend selection, the build's completeness in CI, and the install guard."""
import os
import subprocess
import sys

import pytest
import torch

import cnnkern
from cnnkern import _C
from cnnkern import _ops
from conftest import make_input

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="CI builds every backend")
def test_ci_has_every_backend():
    # CI builds with FORCE_CUDA=1 and runs Triton through its interpreter.
    assert cnnkern.available_backends("cpu") == ["triton", "cpu", "cuda_emu"]
    assert _ops.cuda_built(), "the CUDA kernels were not compiled and linked into cnnkern._C"


def test_defaults_per_device():
    assert cnnkern.current_backend() in (None, os.environ.get("CNNKERN_BACKEND"))
    assert "cpu" in cnnkern.available_backends("cpu")
    assert "cuda_emu" in cnnkern.available_backends("cpu")
    assert "cuda" not in cnnkern.available_backends("cpu")


def test_use_backend_as_context_manager_and_setter():
    before = cnnkern.current_backend()
    with cnnkern.use_backend("cuda_emu"):
        assert cnnkern.current_backend() == "cuda_emu"
        with cnnkern.use_backend("cpu"):
            assert cnnkern.current_backend() == "cpu"
        assert cnnkern.current_backend() == "cuda_emu"
    assert cnnkern.current_backend() == before
    try:
        cnnkern.use_backend("cpu")
        assert cnnkern.current_backend() == "cpu"
    finally:
        cnnkern.use_backend(before)


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="unknown cnnkern backend 'cudnn'"):
        cnnkern.use_backend("cudnn")


def test_backend_that_cannot_run_the_tensors_says_why():
    x, w = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3)
    with cnnkern.use_backend("cuda"), pytest.raises(RuntimeError, match="runs CUDA tensors only.*cuda_emu"):
        cnnkern.functional.conv2d(x, w)


def test_environment_variable_sets_the_default():
    code = "import cnnkern; print(cnnkern.current_backend())"
    env = dict(os.environ, CNNKERN_BACKEND="cuda_emu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "cuda_emu"


def test_triton_on_cpu_needs_the_interpreter():
    code = ("import torch, cnnkern\n"
            "print(cnnkern.available_backends('cpu'))\n"
            "with cnnkern.use_backend('triton'):\n"
            "    cnnkern.functional.conv2d(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3))\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "'triton'" not in out.stdout.splitlines()[0]
    assert "TRITON_INTERPRET=1" in out.stderr


def test_setup_without_torch_names_the_right_command():
    # What a user sees from plain `pip install -e .`: pip's isolated build env has no torch.
    code = ("import sys; sys.modules['torch'] = None; sys.argv = ['setup.py', '--name']; "
            "exec(compile(open('setup.py').read(), 'setup.py', 'exec'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0
    assert "pip install --no-build-isolation -e ." in out.stderr


# --- the host path: what a layer call goes through ------------------------------------------------------------------


def test_import_does_not_load_triton_or_inductor():
    # triton_op pulls in Inductor (seconds of import): the Triton ops load on first use.
    code = ("import sys, time\n"
            "t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); import cnnkern\n"
            "t2 = time.perf_counter()\n"
            "print(sorted(m for m in ('triton', 'torch._inductor', 'cnnkern.kernels') if m in sys.modules))\n"
            "print(f'{t1 - t0:.3f} {t2 - t1:.3f}')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, times = out.stdout.splitlines()
    assert loaded == "[]", loaded
    print("import torch, then import cnnkern (s):", times)


def test_missing_kernels_package_is_an_error_not_an_absent_backend():
    # An in-place build on PYTHONPATH without the kernels/ mapping: triton is installed, so the
    # backend is listed, and using it says what is missing instead of quietly being absent.
    code = ("import sys; sys.modules['cnnkern.kernels'] = None\n"
            "import torch, cnnkern\n"
            "print('triton' in cnnkern.available_backends('cpu'))\n"
            "with cnnkern.use_backend('triton'):\n"
            "    cnnkern.functional.conv2d(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3))\n")
    if not _ops.triton_available():
        pytest.skip("triton is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "True"
    assert out.returncode != 0 and "cnnkern.kernels" in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize("backend", ["cpu", "cuda_emu"])
def test_cpp_ops_record_a_cpp_autograd_node(backend):
    # The C++ ops' autograd is registered in C++ (csrc/ops/autograd.cpp): one C++ graph node per
    # call (a torch::autograd::Function's CppNode, or pooling's own Nodes), no Python autograd
    # layer; without grad no node at all.
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    layers = [cnnkern.Conv2d(3, 3, 3), cnnkern.MaxPool2d(2), cnnkern.AvgPool2d(2), cnnkern.AdaptiveAvgPool2d(1),
              cnnkern.BatchNormReLU2d(3)]
    with cnnkern.use_backend(backend):
        for layer in layers:
            y = layer(x)
            assert type(y.grad_fn).__name__ == "CppFunction", (layer, type(y.grad_fn))
            assert "CppNode" in y.grad_fn.name() or y.grad_fn.name().startswith("Cnnkern"), y.grad_fn.name()
            with torch.no_grad():
                assert layer(x).grad_fn is None
            if not list(layer.parameters()):  # nothing requires grad: the op is called below autograd
                assert layer(x.detach()).grad_fn is None


@pytest.mark.parametrize("backend", ["cpu", "cuda_emu"])
def test_batch_norm_bumps_the_version_of_the_buffers_it_updates(backend):
    bn = cnnkern.BatchNormReLU2d(3)
    before = [t._version for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked)]
    with cnnkern.use_backend(backend):
        bn(torch.randn(2, 3, 4, 4, requires_grad=True))
        bn(torch.randn(2, 3, 4, 4))
    after = [t._version for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked)]
    assert all(a >= b + 2 for a, b in zip(after, before)), (before, after)
    bn.eval()
    with cnnkern.use_backend(backend):
        bn(torch.randn(2, 3, 4, 4))
    assert [t._version for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked)] == after


@pytest.mark.skipif("triton" not in cnnkern.available_backends("cpu"), reason="needs triton and TRITON_INTERPRET=1")
def test_triton_eager_calls_skip_the_op_layer(monkeypatch):
    # Eager Triton conv (and BN) calls are autograd.Functions over the launchers (pooling: C++ nodes, below);
    # torch.compile keeps the registered ops.
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    with cnnkern.use_backend("triton"):
        y = cnnkern.Conv2d(3, 4, 3)(x)
        assert type(y.grad_fn).__name__ == "Triton_conv2dBackward"
        y.sum().backward()
        assert x.grad is not None
    assert _ops.ops_for("triton") is not torch.ops.cnnkern_triton
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert _ops.ops_for("triton") is torch.ops.cnnkern_triton


@pytest.mark.parametrize("backend", cnnkern.available_backends("cpu"))
def test_every_backward_is_bitwise_reproducible_in_deterministic_mode(backend):
    # torch.use_deterministic_algorithms(True): the same gradients bit for bit, run after run, for
    # every layer (the Triton and CUDA weight gradients then reduce without racing atomics).
    torch.manual_seed(0)
    layers = [cnnkern.Conv2d(17, 18, 3, padding=1), cnnkern.MaxPool2d(3, 2, 1), cnnkern.AvgPool2d(3, 2, 1),
              cnnkern.AdaptiveAvgPool2d(1), cnnkern.BatchNormReLU2d(17)]
    x0 = torch.randn(2, 17, 6, 7)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with cnnkern.use_backend(backend):
            for layer in layers:
                runs = []
                for _ in range(2):
                    x = x0.clone().requires_grad_()
                    y = layer(x)
                    params = [x] + list(layer.parameters())
                    runs.append(torch.autograd.grad(y, params, torch.ones_like(y)))
                assert all(torch.equal(a, b) for a, b in zip(*runs)), layer
    finally:
        torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("backend", ["cpu", "cuda_emu"])
def test_pooling_entry_points_run_plain_calls_and_pass_the_rest_on(backend):
    # csrc/ops/python.cpp runs a plain, valid pooling call on the C++ backend chosen in Python
    # (its copy of the override follows use_backend) and answers NotImplemented for anything
    # cnnkern.functional must handle: other argument forms, invalid values, subclasses.
    x = torch.randn(2, 3, 7, 7, requires_grad=True)
    with cnnkern.use_backend(backend):
        namespace = getattr(torch.ops, {"cpu": "cnnkern", "cuda_emu": "cnnkern_emu"}[backend])
        y, i = _C.max_pool2d(x, 3, (2,), [1, 1], 1, True, True)
        ref_y, ref_i = namespace.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], True)
        assert torch.equal(y, ref_y) and torch.equal(i, ref_i) and y.grad_fn is not None
        assert torch.equal(_C.avg_pool2d(x, 2, None, 1, False, False, 3),
                           namespace.avg_pool2d(x, [2, 2], [2, 2], [1, 1], False, False, 3))
        assert torch.equal(_C.adaptive_avg_pool2d(x[0], (2, 3)), namespace.adaptive_avg_pool2d(x[:1], [2, 3])[0])
        passed_on = [
            _C.max_pool2d(x, True, None, 0, 1, False, False),      # bool: torch refuses it
            _C.max_pool2d(x, 2.0, None, 0, 1, False, False),       # float
            _C.max_pool2d(x, (2, 2, 2), None, 0, 1, False, False),  # three values
            _C.max_pool2d(x, 2, 0, 0, 1, False, False),            # zero stride
            _C.max_pool2d(x, 2, None, 2, 1, False, False),         # padding over half the kernel
            _C.max_pool2d(x, 9, None, 0, 1, False, False),         # output too small
            _C.max_pool2d(x, 2, None, 0, 1, 1, False),             # int ceil_mode
            _C.max_pool2d(x.int(), 2, None, 0, 1, False, False),   # integer input
            _C.max_pool2d(x[0, 0], 2, None, 0, 1, False, False),   # 2-D input
            _C.avg_pool2d(x, 2, None, 0, False, True, 0),          # zero divisor
            _C.adaptive_avg_pool2d(x, (None, 2)),
            _C.adaptive_avg_pool2d(x, (2,)),
            _C.adaptive_avg_pool2d(x, 0),
            _C.max_pool2d(torch.nn.Parameter(x.detach()).as_subclass(_Sub), 2, None, 0, 1, False, False),
        ]
        assert all(r is NotImplemented for r in passed_on), [r is NotImplemented for r in passed_on]


_TRITON_CPU = "triton" in cnnkern.available_backends("cpu")


@pytest.mark.skipif(not _TRITON_CPU, reason="needs triton and TRITON_INTERPRET=1")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_pooling_entry_points_call_the_triton_launchers_with_a_cpp_node(layout):
    # Once the Triton backend is loaded, cnnkern._C's entry points call its launchers (replaying
    # their launch plans) and attach a C++ node whose backward calls the backward launchers: the
    # same values and gradients as the registered ops, for every argument form they take.
    _ops.ops_for("triton")  # loads the backend and hands cnnkern._C the launchers
    op = torch.ops.cnnkern_triton
    calls = [
        (lambda x: _C.max_pool2d(x, 3, (2,), [1, 1], 1, True, True),
         lambda x: op.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], True, True), "MaxPool2D"),
        (lambda x: _C.max_pool2d(x, 2, None, 0, 1, False, False),
         lambda x: op.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False, False)[0], "MaxPool2D"),
        (lambda x: _C.avg_pool2d(x, 2, None, 1, False, False, 3),
         lambda x: op.avg_pool2d(x, [2, 2], [2, 2], [1, 1], False, False, 3), "AvgPool2D"),
        (lambda x: _C.adaptive_avg_pool2d(x, (2, 3)), lambda x: op.adaptive_avg_pool2d(x, [2, 3]),
         "AdaptiveAvgPool2D"),
    ]
    x0 = make_input((2, 3, 7, 7), torch.float64, "cpu", layout)
    with cnnkern.use_backend("triton"):
        for ours, registered, node in calls:
            for unbatched in (False, True):
                x = (x0[0] if unbatched else x0).detach().requires_grad_()
                ref_x = x.detach().unsqueeze(0).requires_grad_() if unbatched else x.detach().requires_grad_()
                for _ in range(2):  # the second call replays the recorded plans
                    y, ref = ours(x), registered(ref_x)
                    y, ref = (y, ref) if isinstance(y, tuple) else ((y,), (ref,))
                    if unbatched:
                        ref = tuple(r.squeeze(0) for r in ref)
                    assert all(torch.equal(a, b) for a, b in zip(y, ref))
                    fn = y[0].grad_fn.next_functions[0][0] if unbatched else y[0].grad_fn  # past the squeeze
                    assert fn.name() == f"CnnkernTriton{node}Backward"
                    grad = torch.randn_like(y[0])
                    (dx,) = torch.autograd.grad(y[0], x, grad)
                    (ref_dx,) = torch.autograd.grad(ref[0], ref_x, grad)
                    assert torch.equal(dx, ref_dx.squeeze(0) if unbatched else ref_dx)
                with torch.no_grad():
                    out = ours(x)
                assert (out[0] if isinstance(out, tuple) else out).grad_fn is None
        # create_graph=True: the backward launchers are not differentiable in the incoming gradient,
        # and a second backward through one says so (dx does not depend on x but through the argmax)
        x = x0.detach().requires_grad_()
        y = _C.max_pool2d(x, 2, None, 0, 1, False, False)
        (dx,) = torch.autograd.grad(y, x, torch.ones_like(y, requires_grad=True), create_graph=True)
        with pytest.raises(RuntimeError, match="CnnkernTritonMaxPool2DBackward"):
            dx.sum().backward()


class _Sub(torch.Tensor):
    pass
