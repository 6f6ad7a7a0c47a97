#!/usr/bin/env bash
# The main job: set up (scripts/env.sh), then train the seed MNIST CNN with
# cnnkern layers. Extra arguments go to scripts/train_mnist.py.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/scripts/env.sh"
python "$ROOT/scripts/train_mnist.py" "$@"
