#!/usr/bin/env bash
# Snakemake runs this once after creating the environment, from the workflow's working directory (the repository).
# flash-attn compiles against the environment's final torch (installed from the lock before this runs) and CUDA, so
# it is built here, last, without build isolation, from the locked sdist; MAX_JOBS bounds the parallel compile jobs
# (each takes several GB of RAM). FLASH_ATTN_WHEEL=<file or URL> installs a prebuilt wheel instead (it must match
# torch 2.13, the CUDA version and Python 3.11). Without nvcc it is skipped and training uses PyTorch's sdpa attention.
set -euo pipefail
if [ -n "${FLASH_ATTN_WHEEL:-}" ]; then
    pip install --no-deps "$FLASH_ATTN_WHEEL"
elif command -v nvcc >/dev/null 2>&1; then
    MAX_JOBS=${MAX_JOBS:-4} pip install --no-build-isolation --no-deps --require-hashes -r locks/py3.11/flash-attn.txt
else
    echo "nvcc not found: skipping flash-attn (training uses sdpa attention)" >&2
fi
pip install --no-deps -e .
