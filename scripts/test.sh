#!/usr/bin/env bash
# The test command: set up (scripts/env.sh), then every test on every backend
# this machine has. Without a GPU: Triton through its interpreter, the CUDA
# kernels through their host emulation, plus the static GPU profile of the
# Triton kernels (compiled for sm_90/sm_80, scripts/gpu_profile.py) and the
# emulation's standalone harness. Then a short benchmark pass (cnnkern against
# torch per op and per training step) and its ratio table, and the CPU
# epoch-time ratio (printed, not enforced: timings on a shared machine are too
# noisy to gate on). Extra arguments go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/scripts/env.sh"
cd "$ROOT"

python - <<'PY'
import os, torch
if not torch.cuda.is_available():  # as tests/conftest.py does: Triton runs CPU tensors interpreted
    os.environ.setdefault("TRITON_INTERPRET", "1")
import cnnkern
print("cnnkern backends: cpu ->", cnnkern.available_backends("cpu"),
      "| cuda ->", cnnkern.available_backends("cuda") if torch.cuda.is_available() else "no GPU",
      "| CUDA kernels compiled:", cnnkern._ops.cuda_built())
PY
bash tests/csrc/run.sh
bash tests/csrc/run_pool2d.sh
bash tests/csrc/run_batch_norm.sh
bash tests/csrc/run_mma.sh
python -m pytest tests -q -ra --durations=10 "$@"
if [[ -f build/gpu_profile.txt ]]; then
  echo "--- static GPU profile of the Triton kernels (CI shapes, compiled for sm_90/sm_80; throughput figures are estimates)"
  cat build/gpu_profile.txt
fi
echo "--- quick benchmark pass (CNNKERN_BENCH_QUICK=1): ratio = torch time / cnnkern time, > 1 means cnnkern is faster"
mkdir -p build
CNNKERN_BENCH_QUICK=1 python -m pytest benchmarks/ --benchmark-only -q -p no:cacheprovider \
  --benchmark-json=build/bench-quick.json --benchmark-columns=median,iqr,rounds
python scripts/bench_table.py build/bench-quick.json --png build/bench-quick.png
echo "--- CPU speed target: one mnist-lenet epoch, cnnkern (cpu backend) against torch.nn"
DATA_DIR=()
if [[ -d "$ROOT/../shared/data/mnist" ]]; then DATA_DIR=(--data-dir "$ROOT/../shared/data/mnist"); fi
python scripts/epoch_ratio.py "${DATA_DIR[@]}" --repeats 1
