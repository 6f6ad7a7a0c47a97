#!/usr/bin/env bash
# Builds the pooling CUDA kernels as host code (csrc/emu/pool2d.cu.cpp) with the
# standalone harness test_pool2d_emu.cpp, then runs it; once per C++ standard
# (torch builds extensions as C++17 up to 2.11, C++20 from 2.12) and, for each,
# twice: as shipped (32-bit element counters for tensors below 2^31 elements)
# and with CNNKERN_POOL2D_MAX_ELEMENTS32=0, which sends every launch through
# the 64-bit counter path that only huge tensors reach otherwise. No GPU, no
# torch build: only the c10 headers of an installed torch are needed.
#   tests/csrc/run_pool2d.sh     (PYTHON=... to pick the interpreter with torch,
#                                 CXX=... for the compiler)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
TORCH_INCLUDE="$("$PYTHON" -c 'import torch.utils.cpp_extension as c; print(c.include_paths()[0])' 2>/dev/null)"
BUILD_ROOT="${BUILD_DIR:-$ROOT/build/test_csrc}"
for STD in c++17 c++20; do
  BUILD="$BUILD_ROOT/$STD"
  mkdir -p "$BUILD"
  CXXFLAGS=(-std="$STD" -O2 -pthread -Wall -Wextra -I "$ROOT/csrc/include" -isystem "$TORCH_INCLUDE")
  # The three translation units are independent: build them side by side.
  "${CXX:-g++}" "${CXXFLAGS[@]}" -c "$ROOT/csrc/emu/pool2d.cu.cpp" -o "$BUILD/emu_pool2d.o" &
  "${CXX:-g++}" "${CXXFLAGS[@]}" -DCNNKERN_POOL2D_MAX_ELEMENTS32=0 -c "$ROOT/csrc/emu/pool2d.cu.cpp" \
    -o "$BUILD/emu_pool2d_wide.o" &
  "${CXX:-g++}" "${CXXFLAGS[@]}" -c "$ROOT/tests/csrc/test_pool2d_emu.cpp" -o "$BUILD/test_pool2d_emu.o"
  wait
  "${CXX:-g++}" -pthread "$BUILD/emu_pool2d.o" "$BUILD/test_pool2d_emu.o" -o "$BUILD/test_pool2d_emu"
  "${CXX:-g++}" -pthread "$BUILD/emu_pool2d_wide.o" "$BUILD/test_pool2d_emu.o" -o "$BUILD/test_pool2d_emu_wide"
  echo "== -std=$STD"
  "$BUILD/test_pool2d_emu"
  echo "== -std=$STD, 64-bit element counters"
  "$BUILD/test_pool2d_emu_wide"
done
