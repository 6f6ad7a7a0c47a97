#!/usr/bin/env bash
# The GPU check for a lent machine (no network; torch, triton and pytest already
# installed): scripts/gpu_check.py's stages, each time-boxed, within a total
# budget (default 540 s, --budget), results into $OUT (else build/) as
# gpu_check.jsonl and gpu_check.md. `--dry-run` exercises it on a CPU machine.
#   bash scripts/gpu_check.sh [--budget S] [--dry-run] [--only STAGE ...]
set -uo pipefail
cd "$(dirname "$0")/.."
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
