"""Builds cnnkern._C against the torch that is already installed.

CPU kernels and the host emulation of the CUDA kernels (backend "cuda_emu")
are always built. The CUDA kernels are built when torch is a CUDA build and
nvcc is found, or when FORCE_CUDA=1 (nvcc but no GPU, as in CI).
TORCH_CUDA_ARCH_LIST and MAX_JOBS are honoured by torch's BuildExtension.
"""
import glob
import os
import sys

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit(
        "cnnkern compiles against the torch you already have, and none is importable here.\n"
        "This usually means pip built it in an isolated environment. Install torch first, then run:\n"
        "    pip install --no-build-isolation -e .\n"
    )

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(*patterns):
    return sorted(os.path.relpath(p, ROOT) for pat in patterns for p in glob.glob(os.path.join(ROOT, pat)))


def _want_cuda():
    if os.environ.get("FORCE_CUDA", "0") == "1":
        if CUDA_HOME is None:
            sys.exit("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME (e.g. /usr/local/cuda)")
        if torch.version.cuda is None:
            sys.exit("FORCE_CUDA=1 needs a CUDA build of torch; this torch is CPU-only")
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None and torch.cuda.is_available()


with_cuda = _want_cuda()
if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
    # Without a GPU torch cannot guess the architecture: default to A100 and H100.
    os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"

# -std= is never passed: torch chooses the standard its headers need (C++17 up to
# torch 2.11, C++20 from 2.12); the CUDA emulation compiles under both.
# -fopenmp: at::parallel_for is a header template whose `#pragma omp parallel`
# is compiled into our own objects, so without it every CPU kernel runs on one
# thread. At run time libgomp.so.1 resolves to the copy torch has already loaded.
cxx_flags = ["-O3", "-fvisibility=hidden", "-fopenmp"]
link_flags = ["-fopenmp"]
sources = _sources("csrc/ops/*.cpp", "csrc/cpu/*.cpp", "csrc/emu/*.cpp")
# Not the limited Python API: csrc/ops/python.cpp unpacks tensors with torch's
# Python bindings (libtorch_python), so the module is built per Python version.
define_macros = []
if with_cuda:
    sources += _sources("csrc/cuda/*.cu", "csrc/cuda/*.cpp")
    define_macros.append(("CNNKERN_WITH_CUDA", "1"))
    ext = CUDAExtension(
        "cnnkern._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc", "include")],
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
        extra_link_args=link_flags,
    )
else:
    ext = CppExtension(
        "cnnkern._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc", "include")],
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )

setup(
    packages=["cnnkern", "cnnkern.kernels"],
    package_dir={"cnnkern": "cnnkern", "cnnkern.kernels": "kernels"},
    package_data={"cnnkern": ["_data/mnist-sample/*"]},
    include_package_data=True,
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
