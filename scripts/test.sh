#!/usr/bin/env bash
# Set up .venv with the test extras and run the tests.
#   bash scripts/test.sh            the full suite (lint, the workflow runs and the SLURM tests included): what CI runs
#   bash scripts/test.sh --quick    the quick tier, run before each commit: every test not marked slow or slurm
#   --cov                           also measure line coverage of src/spatialreasoner (subprocesses and workflow jobs
#                                   included) and print it; combine with --quick for the quick tier's figure
# Tests run in TEST_WORKERS pytest-xdist processes (default 2; 0 runs them in this process), each test module and all
# SLURM tests on one worker (tests/conftest.py). Other arguments go to pytest (e.g. -k tiny, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
quick=false
cov=false
args=()
for arg in "$@"; do
    case "$arg" in
        --quick) quick=true ;;
        --cov) cov=true ;;
        *) args+=("$arg") ;;
    esac
done
bash scripts/setup.sh test
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if $quick; then
    args=(-m "not slow and not slurm" "${args[@]}")
fi
if $cov; then
    # [tool.coverage] in pyproject.toml starts coverage in every Python subprocess too (patch = subprocess).
    # Measuring slows the workflow runs several times: the demo's run alone outlasts the usual 900 s per test.
    args=(--cov --cov-report=term --timeout 3600 "${args[@]}")
fi
.venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" --dist loadgroup --no-loadscope-reorder "${args[@]}"
