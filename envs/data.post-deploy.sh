#!/usr/bin/env bash
# Snakemake runs this once after creating the environment, from the workflow's working directory (the repository).
set -euo pipefail
pip install --no-deps -e .
