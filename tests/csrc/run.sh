#!/usr/bin/env bash
# Builds the Conv2d CUDA kernels as host code (csrc/emu/conv2d.cu.cpp) with the
# standalone harness test_conv2d_emu.cpp, then runs it; once per C++ standard,
# since torch builds extensions as C++17 (up to 2.11) or C++20 (2.12 on) and
# the emulation must behave the same under both. No GPU, no torch build: only
# the c10 headers of an installed torch are needed.
#   tests/csrc/run.sh            (PYTHON=... to pick the interpreter with torch,
#                                 CXX=... for the compiler)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
TORCH_INCLUDE="$("$PYTHON" -c 'import torch.utils.cpp_extension as c; print(c.include_paths()[0])' 2>/dev/null)"
BUILD_ROOT="${BUILD_DIR:-$ROOT/build/test_csrc}"
for STD in c++17 c++20; do
  echo "== -std=$STD"
  BUILD="$BUILD_ROOT/$STD"
  mkdir -p "$BUILD"
  CXXFLAGS=(-std="$STD" -O2 -pthread -Wall -Wextra -I "$ROOT/csrc/include" -isystem "$TORCH_INCLUDE")
  # The two translation units are independent: build them side by side.
  "${CXX:-g++}" "${CXXFLAGS[@]}" -c "$ROOT/csrc/emu/conv2d.cu.cpp" -o "$BUILD/emu_conv2d.o" &
  "${CXX:-g++}" "${CXXFLAGS[@]}" -c "$ROOT/tests/csrc/test_conv2d_emu.cpp" -o "$BUILD/test_conv2d_emu.o"
  wait $!
  "${CXX:-g++}" -pthread "$BUILD/emu_conv2d.o" "$BUILD/test_conv2d_emu.o" -o "$BUILD/test_conv2d_emu"
  "$BUILD/test_conv2d_emu"
done
