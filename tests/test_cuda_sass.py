"""The compiled CUDA kernels, read from the built extension's SASS (cuobjdump; no GPU needed):
the fp16/bf16 conv forward and weight gradient run on tensor cores (mma.sync fed by ldmatrix from
cp.async-staged shared memory) for every architecture built, and no kernel spills to local memory."""
import glob
import os
import re
import shutil
import subprocess

import pytest

import cnnkern

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cuobjdump():
    for candidate in (os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump"),
                      shutil.which("cuobjdump")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    try:  # Triton's wheel ships one
        import triton
        bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        return bundled if os.access(bundled, os.X_OK) else None
    except ImportError:
        return None


CUOBJDUMP = _cuobjdump()
pytestmark = [
    pytest.mark.skipif(not cnnkern._ops.cuda_built(), reason="the CUDA kernels were not compiled"),
    pytest.mark.skipif(CUOBJDUMP is None, reason="no cuobjdump"),
]


def _extension():
    (so,) = glob.glob(os.path.join(os.path.dirname(cnnkern.__file__), "_C*.so"))
    return so


def _functions(arch: str) -> dict:
    """Mangled kernel name -> its SASS, for one architecture of the fatbin."""
    out = subprocess.run([CUOBJDUMP, "-sass", "-arch", arch, _extension()], capture_output=True, text=True,
                         check=True).stdout
    functions, name = {}, None
    for line in out.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            name = m.group(1)
            functions[name] = []
        elif name:
            functions[name].append(line)
    return {k: "\n".join(v) for k, v in functions.items()}


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("kernel,ldmatrix", [("conv2d_forward_tc_kernel", "LDSM.16.M88.4"),
                                             ("conv2d_backward_weight_tc_kernel", "LDSM.16.MT88.4")])
def test_the_16_bit_conv_kernels_are_on_tensor_cores(arch, kernel, ldmatrix):
    # the forward (also the stride-1 input gradient) reads K-major slabs, the weight gradient
    # pixel-major ones through ldmatrix .trans
    kernels = {k: v for k, v in _functions(arch).items() if kernel in k}
    # fp16 and bf16, each with a 128x128 and a 128x64 tile
    assert {"Half" in k or "BFloat16" in k for k in kernels} == {True} and len(kernels) == 4, sorted(kernels)
    for name, sass in kernels.items():
        mma = "HMMA.16816.F32.BF16" if "BFloat16" in name else "HMMA.16816.F32"
        # one K step per warp: 4 x 4 tiles of 16x8 for each of the two k16 halves of the 32-deep step
        assert len(re.findall(re.escape(mma) + r"\s", sass)) >= 32, name
        assert ldmatrix in sass and "LDGSTS.E.BYPASS.128.ZFILL" in sass and "DEPBAR" in sass, name


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_no_cuda_kernel_spills(arch):
    out = subprocess.run([CUOBJDUMP, "-res-usage", "-arch", arch, _extension()], capture_output=True, text=True,
                         check=True).stdout
    usage = re.findall(r"Function (\S+):\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    assert usage, out[:2000]
    spilling = [(name, local) for name, _, _, _, local in usage if int(local) != 0]
    assert not spilling, spilling
