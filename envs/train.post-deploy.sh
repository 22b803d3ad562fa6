#!/usr/bin/env bash
# Snakemake runs this once after creating the environment, from the workflow's working directory (the repository).
# flash-attn compiles against the installed torch and CUDA, so it needs --no-build-isolation and a GPU toolchain;
# without nvcc it is skipped and training falls back to PyTorch's sdpa attention.
set -euo pipefail
pip install --no-deps -e .
if command -v nvcc >/dev/null 2>&1; then
    pip install --no-build-isolation flash-attn==2.8.3.post2
else
    echo "nvcc not found: skipping flash-attn (sdpa attention will be used)" >&2
fi
