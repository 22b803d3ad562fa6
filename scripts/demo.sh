#!/usr/bin/env bash
# Set up .venv and run the whole demo workflow on CPU: synthetic data -> tiny model -> SFT/GRPO -> tables.
# Extra arguments go to snakemake (e.g. --forceall, -n).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The rules call the `spatialreasoner` command: run with the environment active so that jobs find it.
source .venv/bin/activate
snakemake --configfile config/demo.yaml "$@"
echo "tables: results/tables/ (summary: results/tables/summary.md)"
