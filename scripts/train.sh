#!/usr/bin/env bash
# The main job: set up (scripts/env.sh), then `python -m cnnkern train`, by
# default mnist-lenet on MNIST with cnnkern layers (its recipe: 10 epochs of
# SGD). Arguments replace the default `mnist`: e.g. `bash scripts/train.sh
# cifar10 --epochs 1`. ../shared/data beside the checkout, when present, is
# where the data sets are looked for unless CNNKERN_DATA says otherwise.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/scripts/env.sh"
if [[ -z "${CNNKERN_DATA:-}" && -d "$ROOT/../shared/data" ]]; then
  export CNNKERN_DATA=$(cd "$ROOT/../shared/data" && pwd)
fi
if [[ $# -eq 0 ]]; then
  set -- mnist
fi
exec python -m cnnkern train "$@"
