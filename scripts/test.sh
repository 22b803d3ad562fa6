#!/usr/bin/env bash
# Set up .venv with the test extras and run the whole test suite (lint and the SLURM tests included).
# Extra arguments go to pytest (e.g. -k tiny, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest "$@"
