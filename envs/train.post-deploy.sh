#!/usr/bin/env bash
# Snakemake runs this once after creating the environment, from the workflow's working directory (the repository).
# flash-attn compiles against the installed torch and CUDA, so it needs --no-build-isolation and a GPU toolchain;
# without nvcc it is skipped and training falls back to PyTorch's sdpa attention. vLLM (GRPO generation with
# `vllm.mode`) is installed with it on GPU machines.
set -euo pipefail
pip install --no-deps -e .
if command -v nvcc >/dev/null 2>&1; then
    pip install --no-build-isolation flash-attn==2.8.3.post2
    pip install vllm==0.33.0
else
    echo "nvcc not found: skipping flash-attn and vllm (sdpa attention, HF generate)" >&2
fi
