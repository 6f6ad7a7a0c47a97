#!/usr/bin/env bash
# Makes .venv (once), installs requirements.txt into it, and builds cnnkern
# (editable, against that venv's torch). Idempotent: reruns only rebuild what
# changed. Sourced by scripts/test.sh and scripts/train.sh.
#
# CUDA kernels are compiled whenever nvcc is found (CUDA_HOME, default
# /usr/local/cuda) and torch is a CUDA build, GPU or not (FORCE_CUDA=1), for
# TORCH_CUDA_ARCH_LIST (default "8.0;9.0").
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [[ ! -x .venv/bin/python ]]; then
  "${PYTHON:-python3}" -m venv .venv
fi
VENV_PY="$ROOT/.venv/bin/python"
"$VENV_PY" -m pip install -q --disable-pip-version-check -r requirements.txt

export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if [[ -x "$CUDA_HOME/bin/nvcc" ]] && "$VENV_PY" -c 'import sys, torch; sys.exit(torch.version.cuda is None)'; then
  export FORCE_CUDA=${FORCE_CUDA:-1}
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"}
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
"$VENV_PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
export PATH="$ROOT/.venv/bin:$PATH"
