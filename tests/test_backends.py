"""Backend selection, the build's completeness in CI, and the install guard."""
import os
import subprocess
import sys

import pytest
import torch

import cnnkern
from cnnkern import _ops

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
