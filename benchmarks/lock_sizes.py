"""Download size of each lock under locks/ (the wheels an install fetches for Linux x86-64), from the package index.

    python benchmarks/lock_sizes.py [--python 3.11]

For every `name==version` of a lock the file that pip or uv would take (a wheel for this Python or abi3/py3, for
manylinux x86-64 or any platform; an sdist only when there is no wheel) is looked up by the lock's own sha256 hashes
in the index's JSON API, and the sizes are summed. Installed sizes are about twice as large (wheels are
zip-compressed): compare `du -sh .venv` after the CPU setup.
"""

from __future__ import annotations

import argparse
import json
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

INDEX = "https://pypi.org/simple/{}/"
ROOT = Path(__file__).resolve().parents[1]


def read_lock(path: Path) -> dict[str, tuple[str, set[str]]]:
    pins: dict[str, tuple[str, set[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line)
        if m:
            current = m[1]
            pins[current] = (m[2], set())
        elif current and "--hash=sha256:" in line:
            pins[current][1].add(line.split("--hash=sha256:")[1].strip(" \\"))
    return pins


def rank(filename: str, cp: str) -> int | None:
    """Preference of a file for Linux x86-64 and CPython ``cp`` (lower is better); None if it cannot be installed."""
    if filename.endswith((".tar.gz", ".zip")):
        return 9
    if not filename.endswith(".whl"):
        return None
    py, abi, plat = filename[:-4].split("-")[-3:]
    if not any(t in py.split(".") for t in (cp, "py3", "py2.py3", "cp38", "cp39", "cp310")) and py != "py2.py3":
        return None
    if abi not in ("none", "abi3", cp):
        return None
    if plat == "any":
        return 2
    if "x86_64" in plat and ("manylinux" in plat or "linux" in plat):
        return 1
    return None


def size_of(name: str, version: str, hashes: set[str], cp: str) -> tuple[str, int]:
    req = urllib.request.Request(INDEX.format(name), headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        files = json.load(resp)["files"]
    best = None
    for f in files:
        if f["hashes"].get("sha256") not in hashes:
            continue
        r = rank(f["filename"], cp)
        if r is not None and (best is None or r < best[0]):
            best = (r, f["filename"], int(f.get("size") or 0))
    if best is None:
        raise SystemExit(f"{name}=={version}: no file with the lock's hashes installs on Linux x86-64 / {cp}")
    return best[1], best[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="3.11", choices=["3.11", "3.12"])
    args = parser.parse_args()
    cp = "cp" + args.python.replace(".", "")
    print(f"| lock (Python {args.python}) | packages | download (MB) | largest |")
    print("| --- | --- | --- | --- |")
    for lock in sorted((ROOT / "locks" / f"py{args.python}").glob("*.txt")):
        pins = read_lock(lock)
        with ThreadPoolExecutor(16) as pool:
            found = list(pool.map(lambda item: (item[0], *size_of(item[0], *item[1], cp)), pins.items()))
        total = sum(s for _, _, s in found)
        top = sorted(found, key=lambda x: -x[2])[:3]
        largest = ", ".join(f"{n} {s / 1e6:.0f}" for n, _, s in top)
        print(f"| {lock.name} | {len(pins)} | {total / 1e6:,.0f} | {largest} |")


if __name__ == "__main__":
    main()
