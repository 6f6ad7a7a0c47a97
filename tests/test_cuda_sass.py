"""The compiled CUDA kernels, read from the built extension's SASS (cuobjdump; no GPU needed):
every fp16/bf16 conv pass runs on tensor cores (mma.sync fed by ldmatrix from shared memory, staged
by cp.async when the operands sit in 16-byte rows) for every architecture built, and no kernel spills
to local memory."""
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
    # the forward (also every input gradient, as convolutions of dy) reads K-major slabs, the
    # weight gradient pixel-major ones through ldmatrix .trans
    kernels = {k: v for k, v in _functions(arch).items() if kernel in k}
    # fp16 and bf16, each with a 128x128 and a 128x64 tile, each with cp.async copies (template
    # argument kVec = true, mangled Lb1) and element-gathered ones (Lb0)
    assert {"Half" in k or "BFloat16" in k for k in kernels} == {True} and len(kernels) == 8, sorted(kernels)
    assert sum("Lb1E" in k for k in kernels) == 4, sorted(kernels)
    for name, sass in kernels.items():
        mma = "HMMA.16816.F32.BF16" if "BFloat16" in name else "HMMA.16816.F32"
        # one K step per warp: 4 x 4 tiles of 16x8 for each of the two k16 halves of the 32-deep step
        assert len(re.findall(re.escape(mma) + r"\s", sass)) >= 32, name
        assert ldmatrix in sass and "DEPBAR" in sass, name
        # cp.async 16 B (zero-filling through its predicate or src-size), or element loads stored to
        # shared memory
        assert ("LDGSTS.E.BYPASS.128" in sass) == ("Lb1E" in name), name
        assert ("STS" in re.sub(r"LDGSTS", "", sass)) == ("Lb0E" in name), name


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_16_bit_conv_gemm_issues_hmma(arch):
    # the CUDA-core implicit GEMM is built for float and double only: no fp16/bf16 conv pass is
    # left on FFMA
    functions = _functions(arch)
    gemms = [k for k in functions if "conv2d_cu" in k and ("implicit_gemm_kernel" in k or "_tc_kernel" in k)]
    assert len(gemms) >= 22, sorted(gemms)  # 6 FFMA (float, double x 3 passes) + 16 tensor-core
    for name in gemms:
        sixteen_bit = "Half" in name or "BFloat16" in name
        assert sixteen_bit == ("HMMA" in functions[name]), name
        assert sixteen_bit != ("implicit_gemm_kernel" in name), name


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_no_cuda_kernel_spills(arch):
    out = subprocess.run([CUOBJDUMP, "-res-usage", "-arch", arch, _extension()], capture_output=True, text=True,
                         check=True).stdout
    usage = re.findall(r"Function (\S+):\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    assert usage, out[:2000]
    spilling = [(name, local) for name, _, _, _, local in usage if int(local) != 0]
    assert not spilling, spilling
