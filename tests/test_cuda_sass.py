"""The compiled CUDA kernels, read from the built extension's SASS (cuobjdump; no GPU needed):
every fp16/bf16 conv pass, and every fp32 one under allow_tf32, runs on tensor cores (mma.sync fed
from shared memory by ldmatrix, or by LDS.64 for the fp32 weight gradient, staged by cp.async when
the operands sit in 16-byte rows) for every architecture built, and no kernel spills to local
memory."""
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


def _mma(name: str) -> str:
    if "BFloat16" in name:
        return "HMMA.16816.F32.BF16"
    if "Half" in name:
        return "HMMA.16816.F32"
    return "HMMA.1688.F32.TF32"  # float: TF32 operands, fp32 accumulate


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("kernel,fragment_loads", [
    ("conv2d_forward_tc_kernel", {"Half": "LDSM.16.M88.4", "BFloat16": "LDSM.16.M88.4", "float": "LDSM.16.M88.4"}),
    ("conv2d_backward_weight_tc_kernel",
     {"Half": "LDSM.16.MT88.4", "BFloat16": "LDSM.16.MT88.4", "float": "LDS.64"}),
])
def test_the_conv_kernels_are_on_tensor_cores(arch, kernel, fragment_loads):
    # the forward (also every input gradient, as convolutions of dy) reads K-major slabs through
    # ldmatrix (for fp32 too: its rows are 16-bit pairs to ldmatrix), the weight gradient
    # pixel-major ones through ldmatrix .trans, which moves 16-bit elements only, so fp32 lanes
    # read their own words (LDS.64 for A, LDS for B)
    dtypes = tuple(fragment_loads)
    kernels = {k: v for k, v in _functions(arch).items() if kernel in k}
    # per dtype a 128x128 and a 128x64 tile, each with cp.async copies (template argument
    # kVec = true, mangled Lb1) and element-gathered ones (Lb0)
    mangled = {"Half": "IN3c104HalfE", "BFloat16": "IN3c108BFloat16E", "float": "If"}
    by_dtype = {d: [k for k in kernels if kernel + mangled[d] in k] for d in dtypes}
    assert all(len(v) == 4 for v in by_dtype.values()) and len(kernels) == 4 * len(dtypes), sorted(kernels)
    assert sum("Lb1E" in k for k in kernels) == 2 * len(dtypes), sorted(kernels)
    for name, sass in kernels.items():
        # one K step per warp: 4 x 4 tiles of 16x8 for each k16 half of the 32-deep 16-bit step, or
        # for each k8 half of the 16-deep fp32 step (a step is 64 bytes of channels either way);
        # the fp32 weight gradient keeps its two halves a loop of one (unrolled, it would spill)
        dtype = next(d for d in dtypes if kernel + mangled[d] in name)
        rolled = dtype == "float" and "backward_weight" in kernel
        assert len(re.findall(re.escape(_mma(name)) + r"\s", sass)) >= (16 if rolled else 32), name
        assert fragment_loads[dtype] + " " in sass and "DEPBAR" in sass, name
        assert ("LDSM" in sass) == fragment_loads[dtype].startswith("LDSM"), name
        # cp.async 16 B (zero-filling through its predicate or src-size), or element loads stored to
        # shared memory
        assert ("LDGSTS.E.BYPASS.128" in sass) == ("Lb1E" in name), name
        assert ("STS" in re.sub(r"LDGSTS", "", sass)) == ("Lb0E" in name), name


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_tensor_core_conv_gemm_issues_hmma(arch):
    # the CUDA-core implicit GEMM is built for float and double only: no fp16/bf16 conv pass is
    # left on FFMA, and the tensor-core kernels issue only their dtype's mma
    functions = _functions(arch)
    gemms = [k for k in functions if "conv2d_cu" in k and ("implicit_gemm_kernel" in k or "_tc_kernel" in k)]
    # 6 FFMA (float, double x 3 passes) + 16 16-bit tensor-core + 8 TF32 (forward, weight gradient)
    assert len(gemms) >= 30, sorted(gemms)
    for name in gemms:
        sixteen_bit = "Half" in name or "BFloat16" in name
        tensor_core = "_tc_kernel" in name
        assert tensor_core == ("HMMA" in functions[name]), name
        assert not (sixteen_bit and not tensor_core), name
        if tensor_core:
            assert set(re.findall(r"HMMA\.\S+", functions[name])) == {_mma(name)}, name


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_no_cuda_kernel_spills(arch):
    out = subprocess.run([CUOBJDUMP, "-res-usage", "-arch", arch, _extension()], capture_output=True, text=True,
                         check=True).stdout
    usage = re.findall(r"Function (\S+):\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    assert usage, out[:2000]
    spilling = [(name, local) for name, _, _, _, local in usage if int(local) != 0]
    assert not spilling, spilling
