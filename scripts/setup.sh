#!/usr/bin/env bash
# Create .venv (Python 3.11) and install the project with its exact pins; extras as arguments, e.g. `test`, or
# `gpu vllm` on a CUDA machine (DeepSpeed, flash-attn, vLLM).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, found {sys.version}"' || {
    echo "install Python 3.11 (Debian/Ubuntu: apt-get install python3.11 python3.11-venv) or set PYTHON" >&2
    exit 1
}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet)
"${pip[@]}" --upgrade pip
gpu=0
others=()
for extra in "$@"; do
    if [ "$extra" = gpu ]; then gpu=1; else others+=("$extra"); fi
done
extras=""
[ ${#others[@]} -gt 0 ] && extras="[$(IFS=,; echo "${others[*]}")]"
"${pip[@]}" -e ".${extras}"
if [ "$gpu" = 1 ]; then
    # flash-attn and DeepSpeed compile against the installed torch and CUDA: no build isolation.
    "${pip[@]}" "setuptools==84.2.1" "wheel==0.48.0" "ninja==1.13.2"
    "${pip[@]}" --no-build-isolation -e ".[gpu]"
fi
echo "installed spatialreasoner (extras: ${*:-none}) into .venv"
