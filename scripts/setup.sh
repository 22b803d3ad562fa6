#!/usr/bin/env bash
# Create .venv and install the project from its lock (locks/py<version>/*.txt: exact versions with hashes).
#   bash scripts/setup.sh [test] [vllm]   CPU machine: locks/py3.X/cpu.txt (test tools and the CPU build of vLLM are
#                                        part of that one lock, so these words change nothing there)
#   bash scripts/setup.sh vllm            on a CUDA machine (nvidia-smi lists a GPU; SETUP_DEVICE=cpu|cuda decides
#                                        otherwise): locks/py3.X/eval-cuda.txt, vLLM's CUDA build for evaluation
#   bash scripts/setup.sh gpu [vllm]      CUDA machine: locks/py3.X/train-cuda.txt (DeepSpeed, vLLM), then
#                                        locks/py3.X/flash-attn.txt last, against the installed torch
#   --print-lock                          print the lock these options select and install nothing
# Nothing is installed when .venv already matches the lock (so the demo runs again without a package index).
# flash-attn: FLASH_ATTN_WHEEL=<file or URL> installs a prebuilt wheel (it must match torch 2.13, your CUDA and
# Python); otherwise the locked sdist is built with --no-build-isolation and MAX_JOBS parallel compile jobs (default 4;
# each takes several GB of RAM, and the build about 10-30 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
    for candidate in python3.11 python3.12 python3; do
        command -v "$candidate" >/dev/null 2>&1 && { PYTHON=$candidate; break; }
    done
fi
pyver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null || true)
case "$pyver" in
    3.11 | 3.12) ;;
    *)
        echo "Python 3.11 or 3.12 needed (found '${pyver:-none}' from '${PYTHON:-python3}'): install one" \
            "(Debian/Ubuntu: apt-get install python3.11 python3.11-venv) or set PYTHON" >&2
        exit 1
        ;;
esac
# A CUDA machine is one where nvidia-smi sees a GPU; SETUP_DEVICE=cpu|cuda overrides the guess.
device=${SETUP_DEVICE:-}
if [ -z "$device" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then device=cuda; else device=cpu; fi
fi
case "$device" in cpu | cuda) ;; *) echo "SETUP_DEVICE must be cpu or cuda (got '$device')" >&2; exit 1 ;; esac
kind=cpu
print_lock=false
for extra in "$@"; do
    case "$extra" in
        --print-lock) print_lock=true ;;
        gpu) kind=train-cuda ;;
        test) ;;
        # vLLM: the CPU build inside cpu.txt, or on a CUDA machine the GPU evaluation set (vllm, CUDA build).
        vllm) [ "$device" = cuda ] && [ "$kind" = cpu ] && kind=eval-cuda ;;
        *) echo "unknown setup option '$extra' (expected: test, vllm, gpu)" >&2; exit 1 ;;
    esac
done
lock=locks/py$pyver/$kind.txt
[ -f "$lock" ] || { echo "$lock is missing: run bash scripts/lock.sh" >&2; exit 1; }
if $print_lock; then echo "$lock"; exit 0; fi
if [ -x .venv/bin/python ]; then
    have=$(.venv/bin/python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    [ "$have" = "$pyver" ] || { echo ".venv has Python $have, not $pyver: remove .venv or set PYTHON" >&2; exit 1; }
else
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.spatialreasoner-lock
want="$lock $(cat locks/py"$pyver"/*.txt pyproject.toml | sha256sum | cut -d' ' -f1) ${FLASH_ATTN_WHEEL:-}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo ".venv matches $lock: nothing to install"
    exit 0
fi
rm -f "$stamp"
.venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
uv=(.venv/bin/uv pip --quiet)
export VIRTUAL_ENV=$PWD/.venv
"${uv[@]}" sync --require-hashes --compile-bytecode "$lock"
if [ "$kind" = train-cuda ]; then
    # flash-attn last, so that it builds against the final torch.
    if [ -n "${FLASH_ATTN_WHEEL:-}" ]; then
        "${uv[@]}" install --no-deps "$FLASH_ATTN_WHEEL"
    else
        echo "building $(grep -o '^flash-attn==[^ ]*' "locks/py$pyver/flash-attn.txt") against torch" \
            "$(.venv/bin/python -c 'import torch; print(torch.__version__)') with MAX_JOBS=${MAX_JOBS:=4}" \
            "(set FLASH_ATTN_WHEEL to use a prebuilt wheel)"
        MAX_JOBS=$MAX_JOBS "${uv[@]}" install --no-deps --no-build-isolation --require-hashes \
            -r "locks/py$pyver/flash-attn.txt"
    fi
fi
"${uv[@]}" install --no-deps -e .
echo "$want" >"$stamp"
echo "installed spatialreasoner from $lock into .venv"
