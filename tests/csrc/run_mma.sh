#!/usr/bin/env bash
# The tensor-core building blocks (csrc/include/cnnkern/mma.h):
# 1. builds the standalone harness test_mma_emu.cpp against their host
#    emulation and runs it, once per C++ standard (torch builds extensions as
#    C++17 up to 2.11, C++20 from 2.12). g++ only: no CUDA, no torch.
# 2. when nvcc is there, compiles mma_device_check.cu (a kernel using every
#    wrapper) for sm_80 and sm_90 and checks, with cuobjdump -sass, that the
#    tensor-core instructions came out: HMMA (f16, bf16, tf32), LDSM (.x1/.x2/
#    .x4, plain and .MT88 = .trans), LDGSTS (cp.async, zero-fill form
#    included) and the cp.async group barriers. Compile only: no GPU needed.
#   tests/csrc/run_mma.sh   (CXX=..., NVCC=..., CUOBJDUMP=... to pick the tools)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD_ROOT="${BUILD_DIR:-$ROOT/build/test_csrc}"

# The two builds are independent: side by side.
pids=()
for STD in c++17 c++20; do
  mkdir -p "$BUILD_ROOT/$STD"
  "${CXX:-g++}" -std="$STD" -O2 -pthread -Wall -Wextra -I "$ROOT/csrc/include" \
    "$ROOT/tests/csrc/test_mma_emu.cpp" -o "$BUILD_ROOT/$STD/test_mma_emu" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
for STD in c++17 c++20; do
  echo "== -std=$STD"
  "$BUILD_ROOT/$STD/test_mma_emu"
done

# ---- device side: compile and inspect the SASS --------------------------------
NVCC="${NVCC:-}"
if [[ -z "$NVCC" ]]; then
  if [[ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]]; then
    NVCC="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
  elif command -v nvcc >/dev/null; then
    NVCC="$(command -v nvcc)"
  fi
fi
if [[ -z "$NVCC" ]]; then
  echo "== device check skipped: no nvcc (set NVCC or CUDA_HOME)"
  exit 0
fi
CUOBJDUMP="${CUOBJDUMP:-}"
if [[ -z "$CUOBJDUMP" ]]; then
  if [[ -x "$(dirname "$NVCC")/cuobjdump" ]]; then
    CUOBJDUMP="$(dirname "$NVCC")/cuobjdump"
  elif command -v cuobjdump >/dev/null; then
    CUOBJDUMP="$(command -v cuobjdump)"
  else  # Triton's wheel ships one
    if [[ -z "${PYTHON:-}" ]]; then
      if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
    fi
    CUOBJDUMP="$("$PYTHON" -c 'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))' 2>/dev/null || true)"
    [[ -x "$CUOBJDUMP" ]] || CUOBJDUMP=""
  fi
fi

OUT="$BUILD_ROOT/mma_device"
mkdir -p "$OUT"
ARCHS=(80 90)
pids=()
for ARCH in "${ARCHS[@]}"; do
  "$NVCC" -std=c++17 -arch=sm_$ARCH -cubin -I "$ROOT/csrc/include" \
    "$ROOT/tests/csrc/mma_device_check.cu" -o "$OUT/mma_device_check.sm_$ARCH.cubin" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
if [[ -z "$CUOBJDUMP" ]]; then
  echo "== device check: compiled for sm_${ARCHS[*]}; SASS check skipped: no cuobjdump (set CUOBJDUMP)"
  exit 0
fi

# Opcode (as cuobjdump prints it, up to the operands) -> what must have made it.
REQUIRED=(
  "HMMA.16816.F32 "       "mma.m16n8k16 .f16"
  "HMMA.16816.F32.BF16 "  "mma.m16n8k16 .bf16"
  "HMMA.1688.F32.TF32 "   "mma.m16n8k8 .tf32"
  "LDSM.16.M88 "          "ldmatrix .x1"
  "LDSM.16.M88.2 "        "ldmatrix .x2"
  "LDSM.16.M88.4 "        "ldmatrix .x4"
  "LDSM.16.MT88 "         "ldmatrix .x1.trans"
  "LDSM.16.MT88.2 "       "ldmatrix .x2.trans"
  "LDSM.16.MT88.4 "       "ldmatrix .x4.trans"
  "LDGSTS.E.BYPASS.128 "  "cp.async.cg 16"
  "LDGSTS.E.BYPASS.128.ZFILL " "cp.async.cg 16 with src-size"
  "LDGDEPBAR "            "cp.async.commit_group"
  "DEPBAR.LE "            "cp.async.wait_group / wait_all"
)
failed=0
for ARCH in "${ARCHS[@]}"; do
  SASS="$("$CUOBJDUMP" -sass "$OUT/mma_device_check.sm_$ARCH.cubin")"
  seen=()
  for ((i = 0; i < ${#REQUIRED[@]}; i += 2)); do
    op="${REQUIRED[i]}"
    if grep -qF -- "$op" <<<"$SASS"; then
      seen+=("${op% }")
    else
      echo "FAIL  sm_$ARCH: no ${op% } in the SASS (from ${REQUIRED[i + 1]})"
      failed=1
    fi
  done
  echo "== sm_$ARCH SASS has: ${seen[*]}"
done
if ((failed)); then
  echo "device check FAILED"
  exit 1
fi
echo "== device check passed (sm_${ARCHS[0]}, sm_${ARCHS[1]})"
