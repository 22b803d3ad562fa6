#!/usr/bin/env bash
# Snakemake runs this once after creating the environment, from a copy in .snakemake/conda/ and from the workflow's
# working directory (not the repository under --directory): the workflow sets SPATIALREASONER_ROOT to its own folder.
set -euo pipefail
: "${SPATIALREASONER_ROOT:?is not set: create this environment through the workflow (snakemake --sdm conda)}"
pip install --no-deps -e "$SPATIALREASONER_ROOT"
