#!/usr/bin/env bash
# Snakemake runs this once after creating the environment, from a copy in .snakemake/conda/ and from the workflow's
# working directory (not the repository under --directory): the workflow sets SPATIALREASONER_ROOT to its own folder.
# flash-attn compiles against the environment's final torch (installed from the lock before this runs) and CUDA, so
# it is built here, last, without build isolation (its build tools are in the training lock), from the locked sdist;
# FLASH_ATTENTION_FORCE_BUILD keeps its setup.py from fetching an unhashed prebuilt wheel (a network call that hangs
# on nodes without network). MAX_JOBS bounds the parallel compile jobs (each takes several GB of RAM).
# FLASH_ATTN_WHEEL=<file or URL> installs a prebuilt wheel instead (see README, "flash-attn"). Without nvcc it is
# skipped and training uses PyTorch's sdpa attention.
set -euo pipefail
: "${SPATIALREASONER_ROOT:?is not set: create this environment through the workflow (snakemake --sdm conda)}"
if [ -n "${FLASH_ATTN_WHEEL:-}" ]; then
    pip install --no-deps "$FLASH_ATTN_WHEEL"
elif command -v nvcc >/dev/null 2>&1; then
    FLASH_ATTENTION_FORCE_BUILD=${FLASH_ATTENTION_FORCE_BUILD:-TRUE} MAX_JOBS=${MAX_JOBS:-4} \
        pip install --no-build-isolation --no-deps --require-hashes \
        -r "$SPATIALREASONER_ROOT/locks/py3.11/flash-attn.txt"
else
    echo "nvcc not found: skipping flash-attn (training uses sdpa attention)" >&2
fi
pip install --no-deps -e "$SPATIALREASONER_ROOT"
