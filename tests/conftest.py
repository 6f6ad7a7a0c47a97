"""Which backends the tests run, and the tolerances per dtype.

Without a GPU, the Triton kernels run on CPU tensors through Triton's
interpreter (TRITON_INTERPRET=1 must be set before triton is imported, hence
here) and the CUDA kernels through their host emulation ("cuda_emu"). With a
GPU, "triton" and "cuda" run on CUDA tensors as well. In CI (CI=true) a backend
that should exist but does not is a failure, never a silent skip.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import cnnkern  # noqa: E402

if cnnkern._ops.triton_available():  # loaded on first use otherwise; tests reach torch.ops.cnnkern_triton directly
    cnnkern._ops.load_triton()



@pytest.fixture(autouse=True)
def _fresh_launch_plans():
    """Each test starts with no recorded Triton launch plan (cnnkern/kernels/_util.py): one that
    patches a launcher's helpers sees them run, and each test's first call runs the launcher's Python."""
    if cnnkern._ops.triton_available():
        from cnnkern.kernels import _util

        _util.clear_plans()
    yield


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BACKEND_DEVICES = [(b, d) for d in DEVICES for b in cnnkern.available_backends(d)]
IDS = [f"{b}-{d}" for b, d in BACKEND_DEVICES]

# Relative to the largest reference magnitude: |got - ref| <= atol * scale + rtol * |ref|.
TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}
# fp32 through TF32 tensor cores keeps ~10 mantissa bits.
TF32_TOLERANCE = dict(atol=2e-3, rtol=2e-3)


def tolerance(dtype, backend, device):
    """The cuda backend (and cuda_emu) and the triton backend on a GPU take fp32 convs through TF32
    when torch.backends.cudnn.allow_tf32 is on, which the tests turn on only where they mean it."""
    tf32_backend = backend in ("cuda", "cuda_emu") or (backend == "triton" and device == "cuda")
    if dtype == torch.float32 and tf32_backend and torch.backends.cudnn.allow_tf32:
        return TF32_TOLERANCE
    return TOLERANCES[dtype]


@pytest.fixture(autouse=True)
def _fp32_without_tf32():
    """fp32 is checked at fp32's tolerance unless a test asks for TF32 (the tf32 fixture): torch's
    default (allow_tf32 on, as nn.Conv2d uses it) would hide an fp32 path's errors below 2e-3."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


@pytest.fixture
def tf32():
    """torch's default: fp32 convs may run on TF32 tensor cores."""
    torch.backends.cudnn.allow_tf32 = True
    yield


def assert_close(got, ref, dtype, backend="cpu", device="cpu", what=""):
    """Compare against a float64 reference with the dtype's tolerance."""
    tol = tolerance(dtype, backend, device)
    ref = ref.double().cpu()
    got = got.double().cpu()
    scale = max(ref.abs().max().item(), 1.0) if ref.numel() else 1.0
    torch.testing.assert_close(got, ref, atol=tol["atol"] * scale, rtol=tol["rtol"], msg=lambda m: f"{what}: {m}")


LAYOUTS = ["contiguous", "channels_last", "strided"]


def make_input(shape, dtype, device, layout="contiguous", seed=0, generator=None):
    """A float64-drawn tensor in `dtype` on `device`, in the given memory layout
    ("strided": every other column of a wider tensor, so not contiguous)."""
    gen = generator or torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(n, c, h, 2 * w if layout == "strided" else w, generator=gen, dtype=torch.float64)
    x = x.to(device=device, dtype=dtype)
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        x = x[..., ::2]
        assert w == 1 or not x.is_contiguous()  # a single column is contiguous under any stride
    return x


@pytest.fixture(params=BACKEND_DEVICES, ids=IDS)
def backend_device(request):
    backend, device = request.param
    with cnnkern.use_backend(backend):
        yield backend, device
