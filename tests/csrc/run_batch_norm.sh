#!/usr/bin/env bash
# Builds the fused BatchNorm2d + ReLU CUDA kernels as host code
# (csrc/emu/batch_norm.cu.cpp) with the standalone harness
# test_batch_norm_emu.cpp, then runs it; once per C++ standard (torch builds
# extensions as C++17 up to 2.11, C++20 from 2.12) and, for each, twice: as
# shipped, and with CNNKERN_BN_MIN_ROWS_PER_THREAD=1, which cuts even small
# shapes into many short row chunks (threads with no rows included) to stress
# the partial merges, CNNKERN_BN_MAX_GRID_Y=3, which makes the blocks loop
# over the chunks past grid.y, and CNNKERN_BN_MAX_ELEMENTS32=0, which sends
# every pass through the 64-bit offset path that only huge tensors reach
# otherwise (float and double only there: the merges run in the accumulator
# type). No GPU, no torch build: only the c10 headers of an
# installed torch are needed.
#   tests/csrc/run_batch_norm.sh (PYTHON=... to pick the interpreter with torch,
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
  "${CXX:-g++}" "${CXXFLAGS[@]}" -c "$ROOT/csrc/emu/batch_norm.cu.cpp" -o "$BUILD/emu_batch_norm.o" &
  "${CXX:-g++}" "${CXXFLAGS[@]}" -DCNNKERN_BN_MIN_ROWS_PER_THREAD=1 -DCNNKERN_BN_MAX_GRID_Y=3 -DCNNKERN_BN_MAX_ELEMENTS32=0 \
    -c "$ROOT/csrc/emu/batch_norm.cu.cpp" -o "$BUILD/emu_batch_norm_short.o" &
  "${CXX:-g++}" "${CXXFLAGS[@]}" -c "$ROOT/tests/csrc/test_batch_norm_emu.cpp" -o "$BUILD/test_batch_norm_emu.o"
  wait
  "${CXX:-g++}" -pthread "$BUILD/emu_batch_norm.o" "$BUILD/test_batch_norm_emu.o" -o "$BUILD/test_batch_norm_emu"
  "${CXX:-g++}" -pthread "$BUILD/emu_batch_norm_short.o" "$BUILD/test_batch_norm_emu.o" \
    -o "$BUILD/test_batch_norm_emu_short"
  echo "== -std=$STD"
  "$BUILD/test_batch_norm_emu"
  echo "== -std=$STD, many short chunks, grid.y <= 3, 64-bit offsets"
  "$BUILD/test_batch_norm_emu_short" --acc-types
done
