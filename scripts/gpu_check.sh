#!/usr/bin/env bash
# For a machine WITH a GPU and without network (torch, triton, pytest already
# installed, e.g. the lent H100/H200 image): builds cnnkern in place against
# that torch (CUDA kernels included), runs the whole test suite on CUDA tensors
# for every GPU backend ("triton", "cuda") and the CPU ones, then prints a
# table: max error against torch and time per call, per backend and op, and
# the static GPU profile's estimates beside measured times (calibration). Then,
# where pytest-benchmark / tqdm+matplotlib are installed, the benchmark suite
# on the GPU (ratio table) and one epoch of mnist-lenet on CUDA per backend
# (on the MNIST sample shipped in the package when no data set is found).
# Not run in CI (no GPU there).
#   bash scripts/gpu_check.sh [pytest args]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
unset TRITON_INTERPRET
"$PY" setup.py -q build_ext --inplace || { echo "build failed"; exit 1; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m pytest tests -q -ra -p no:cacheprovider "$@"
status=$?
"$PY" scripts/gpu_table.py
# Calibration of the static profile's model: each op timed with CUDA events
# beside its estimate (GPU_PROFILE_ARGS picks other shapes, e.g. "--shapes all").
echo "--- static GPU profile: measured beside estimated (scripts/gpu_profile.py --measure)"
# shellcheck disable=SC2086
"$PY" scripts/gpu_profile.py --measure --no-gate --jobs "$MAX_JOBS" \
  ${GPU_PROFILE_ARGS:---shapes resnet cifar-fast --dtypes fp16 bf16 fp32 --layouts cl} \
  --json build/gpu_profile_measured.json --output build/gpu_profile_measured.txt || status=1
if "$PY" -c "import pytest_benchmark" 2>/dev/null; then
  "$PY" -m pytest benchmarks/ --benchmark-only -q -p no:cacheprovider --benchmark-max-time=0.2 \
    --benchmark-json=build/bench-gpu.json > build/bench-gpu.log 2>&1 || status=1
  "$PY" scripts/bench_table.py build/bench-gpu.json --png build/bench-gpu.png
else
  echo "pytest-benchmark not installed: no GPU benchmarks"
fi
if "$PY" -c "import tqdm, matplotlib" 2>/dev/null; then
  for backend in triton cuda; do
    "$PY" -m cnnkern train mnist --device cuda --backend "$backend" --epochs 1 --no-download --quiet \
      --out "build/gpu-train-$backend" || status=1
  done
else
  echo "tqdm/matplotlib not installed: no GPU training run"
fi
exit $status
