"""An offline wheelhouse for scripts/setup.sh: every file a lock needs, for Linux x86-64 and one CPython version.

    python scripts/wheelhouse.py download DIR --python 3.11 LOCK [LOCK...]   fill DIR from the package index
                                                             (--dry-run: list the files and their sizes)
    python scripts/wheelhouse.py check DIR --python 3.11 LOCK [LOCK...]      verify DIR before an offline install
    python scripts/wheelhouse.py pyproject --lock LOCK [--extra NAME...]      pyproject.toml's pins all in LOCK?

A LOCK is a hashed lock (`name==version \\` + `--hash=sha256:...` lines), optionally `FILE:NAME` to take only one
package's block from it (how setup.sh adds uv itself from cpu.txt). For each package the file whose sha256 is one of
the lock's hashes is taken: a wheel this Python can install on manylinux_2_28 x86-64 (or a pure-Python one), else the
sdist (flash-attn, DeepSpeed) and, where one exists, the wheel for a newer glibc. Standard library only: it runs before anything is installed, on any machine (a CPU login
node fills a CUDA wheelhouse). The index is PyPI's JSON simple API, or SETUP_INDEX_URL.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import sys
import time
import tomllib
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

INDEX = os.environ.get("SETUP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
#: The platform every lock is resolved for (scripts/lock.sh: x86_64-manylinux_2_28).
GLIBC_MAX = 28
PLATFORM = "Linux x86-64 (manylinux_2_28)"
#: Each request to the index or its file host is tried this often, waiting RETRY_WAIT s, then twice as long, ...:
#: over hundreds of requests and gigabytes a reset connection or a 503 is to be expected, and is no reason to stop.
ATTEMPTS = 5
RETRY_WAIT = 1.0
#: HTTP statuses worth asking again for; any other (404, 403, ...) is final at once.
TRANSIENT = {408, 425, 429, 500, 502, 503, 504}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Pin:
    name: str
    version: str
    lock: str
    line: int
    hashes: set[str] = field(default_factory=set)

    def where(self) -> str:
        return f"{self.lock} line {self.line}: {self.name}=={self.version}"


def read_locks(specs: list[str]) -> list[Pin]:
    pins: dict[str, Pin] = {}
    for spec in specs:
        path, _, only = spec.partition(":")
        current = None
        for i, line in enumerate(Path(path).read_text().splitlines(), 1):
            m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line)
            if m:
                current = None
                if only and norm(m[1]) != norm(only):
                    continue
                current = pins.setdefault(norm(m[1]), Pin(m[1], m[2], path, i))
            elif current and "--hash=sha256:" in line:
                current.hashes.add(line.split("--hash=sha256:")[1].strip(" \\"))
        if only and norm(only) not in pins:
            sys.exit(f"{path} has no {only}== line")
    return list(pins.values())


def wheel_fits(filename: str, py: str, glibc: int = GLIBC_MAX) -> bool:
    """Whether a wheel installs on CPython ``py`` (e.g. "3.11") on x86-64 Linux with glibc 2.``glibc``."""
    parts = filename[:-4].split("-")
    if len(parts) < 5:
        return False
    pys, abis, plats = (set(p.split(".")) for p in parts[-3:])
    minor = int(py.split(".")[1])
    cp = f"cp3{minor}"
    interp_ok = bool(pys & {cp, "py3", f"py3{minor}", "py2.py3"}) or any(
        t.startswith("cp3") and t[3:].isdigit() and int(t[3:]) <= minor and "abi3" in abis for t in pys
    )
    abi_ok = bool(abis & {cp, "abi3", "none"})
    plat_ok = "any" in plats or any(platform_fits(p, glibc) for p in plats)
    return interp_ok and abi_ok and plat_ok


def platform_fits(tag: str, glibc: int) -> bool:
    if tag in ("manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"):
        return True
    m = re.fullmatch(r"manylinux_2_(\d+)_x86_64", tag)
    return bool(m) and int(m[1]) <= glibc


def local_glibc() -> int:
    """The minor version of this machine's glibc (2.X), or the locks' platform's where it cannot be read."""
    try:
        return int(os.confstr("CS_GNU_LIBC_VERSION").split()[1].split(".")[1])
    except (ValueError, OSError, AttributeError, IndexError):
        return GLIBC_MAX


def file_version(filename: str, name: str) -> str | None:
    """The version in a wheel or sdist file name of package ``name``, else None."""
    stem = re.sub(r"(\.tar\.gz|\.zip|\.whl)$", "", filename)
    first, _, rest = stem.partition("-")
    if norm(first) != norm(name) or not rest:
        return None
    return rest.split("-")[0]


def pick(files: list[tuple[str, str]], pin: Pin, py: str) -> list[tuple[str, str]]:
    """The (filename, sha256) pairs among ``files`` that install ``pin`` on CPython ``py`` on x86-64 Linux: the wheel
    for the locks' platform (glibc 2.28); where there is none, the newest Linux wheel (for a newer glibc) and the
    sdist, so that a machine with an older glibc can still build it."""
    ours = [(f, h) for f, h in files if h in pin.hashes]
    wheels = sorted((f, h) for f, h in ours if f.endswith(".whl") and wheel_fits(f, py))
    if wheels:
        return wheels[:1]
    newer = sorted((f, h) for f, h in ours if f.endswith(".whl") and wheel_fits(f, py, glibc=99))
    sdists = sorted((f, h) for f, h in ours if f.endswith((".tar.gz", ".zip")))
    return newer[-1:] + sdists[:1]


def shown(url: str) -> str:
    """``url`` without ``user:password@`` (SETUP_INDEX_URL may carry them)."""
    return re.sub(r"(?<=://)[^/@]*@", "***@", url)


def with_retries(url: str, what: str, read):
    """``read(url)`` with up to ATTEMPTS tries on transient network errors; a last failure stops the script with
    one line naming the URL, the error and ``what`` it was for."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return read(url)
        except urllib.error.HTTPError as exc:
            error, final = f"HTTP {exc.code} {exc.reason}", exc.code not in TRANSIENT
        except (urllib.error.URLError, http.client.HTTPException, OSError, json.JSONDecodeError) as exc:
            error, final = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}", False
        if final or attempt == ATTEMPTS:
            tries = f" after {attempt} attempts" if attempt > 1 else ""
            raise SystemExit(f"{shown(url)}: {error}{tries} (needed for {what})")
        wait = RETRY_WAIT * 2 ** (attempt - 1)
        print(f"{shown(url)}: {error}; trying again in {wait:g} s ({attempt}/{ATTEMPTS})", file=sys.stderr)
        time.sleep(wait)


def index_files(name: str, what: str) -> list[dict]:
    """The index's file list of package ``name``; ``what`` names the lock line it is for, in a failure."""

    def read(url: str) -> list[dict]:
        req = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.load(resp)["files"]

    return with_retries(f"{INDEX}/{norm(name)}/", what, read)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def download(dest: Path, pins: list[Pin], py: str, dry_run: bool = False) -> None:
    """Fetch into ``dest`` the files of ``pins`` for CPython ``py`` (``dry_run``: list them with their sizes)."""
    if not dry_run:
        dest.mkdir(parents=True, exist_ok=True)

    def one(pin: Pin) -> tuple[int, list[str]]:
        files = index_files(pin.name, pin.where())
        chosen = pick([(f["filename"], f["hashes"].get("sha256", "")) for f in files], pin, py)
        if not chosen:
            raise SystemExit(f"the index has no file for CPython {py} on {PLATFORM} with a hash of {pin.where()}")
        if dry_run:
            sizes = {f["filename"]: f.get("size", 0) for f in files}
            return sum(sizes[f] for f, _ in chosen), [f"{sizes[f]:>12} {f}" for f, _ in chosen]
        fetched = 0
        for filename, digest in chosen:
            target = dest / filename
            if target.is_file() and sha256(target) == digest:
                continue
            url = next(f["url"] for f in files if f["filename"] == filename)
            partial = target.with_name(target.name + ".partial")

            def fetch(url: str, partial: Path = partial) -> None:
                with urllib.request.urlopen(url, timeout=600) as resp, partial.open("wb") as out:
                    size = resp.headers.get("Content-Length")
                    got = 0
                    while chunk := resp.read(1 << 20):
                        out.write(chunk)
                        got += len(chunk)
                # read(n) ends quietly at a closed connection; only the announced length shows the file is cut
                if size is not None and got < int(size):
                    raise http.client.IncompleteRead(b"", int(size) - got)

            with_retries(url, pin.where(), fetch)
            if sha256(partial) != digest:
                partial.unlink()
                raise SystemExit(f"{shown(url)}: sha256 differs from {pin.where()}")
            partial.rename(target)
            fetched += target.stat().st_size
        return fetched, [name for name, _ in chosen]

    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(one, pins))
    fetched = sum(size for size, _ in got)
    if dry_run:
        print("\n".join(line for _, lines in got for line in lines))
        print(f"{len(pins)} packages for CPython {py} on {PLATFORM}: {fetched / 1e9:.2f} GB to download")
        return
    names = [name for _, chosen in got for name in chosen]
    total = sum((dest / name).stat().st_size for name in names)
    print(
        f"{dest}: {len(names)} files for CPython {py} on {PLATFORM}, {total / 1e9:.2f} GB "
        f"({fetched / 1e9:.2f} GB downloaded now)"
    )


def check(where: Path, pins: list[Pin], py: str) -> list[str]:
    """Problems that stop an offline install from ``where``, one line each (empty: every pin has its file)."""
    if not where.is_dir():
        return [f"{where} is not a folder"]
    glibc = local_glibc()
    present = [p.name for p in where.iterdir() if p.is_file() and not p.name.endswith(".partial")]
    problems = []
    for pin in pins:
        named = [f for f in present if file_version(f, pin.name) == pin.version]
        fitting = [
            f for f in named if (f.endswith(".whl") and wheel_fits(f, py, glibc)) or f.endswith((".tar.gz", ".zip"))
        ]
        if not named:
            problems.append(f"missing: no file for {pin.where()}")
        elif not fitting:
            problems.append(
                f"wrong Python or platform: {', '.join(sorted(named))} cannot install on CPython {py} on x86-64 Linux with glibc 2.{glibc} "
                f"({pin.where()}); fill the wheelhouse with setup.sh --wheelhouse for this Python"
            )
        else:
            digests = {f: sha256(where / f) for f in fitting}
            if not set(digests.values()) & pin.hashes:
                problems.append(
                    f"hash mismatch: {', '.join(sorted(fitting))} has sha256 {', '.join(sorted(digests.values()))}, "
                    f"not one of the hashes of {pin.where()}"
                )
    # files that are there but wrong first: they say more about the wheelhouse than the missing ones
    return sorted(problems, key=lambda p: p.startswith("missing"))


def pyproject_drift(root: Path, lock: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    locked = {norm(p.name): p.version for p in read_locks([str(lock)])}
    problems = []
    for req in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)", req.strip())
        if not m:
            continue
        name, version = norm(m[1]), m[2]
        if name == "flash-attn":  # split off into its own lock (flash-attn.txt), checked with it
            continue
        if locked.get(name) != version:
            have = f"has {name}=={locked[name]}" if name in locked else f"has no {name}"
            problems.append(f"pyproject.toml pins {m[1]}=={version} but {lock} {have}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for cmd in ("download", "check"):
        p = sub.add_parser(cmd)
        p.add_argument("dir", type=Path)
        p.add_argument("--python", required=True, choices=["3.11", "3.12"])
        p.add_argument("locks", nargs="+")
        if cmd == "download":
            p.add_argument("--dry-run", action="store_true", help="list the files and sizes, download nothing")
    p = sub.add_parser("pyproject")
    p.add_argument("--lock", required=True, type=Path)
    p.add_argument("--extra", action="append", default=[])
    args = parser.parse_args()
    if args.cmd == "download":
        download(args.dir, read_locks(args.locks), args.python, args.dry_run)
    elif args.cmd == "check":
        problems = check(args.dir, read_locks(args.locks), args.python)
        if problems:
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            sys.exit(
                f"wheelhouse {args.dir} cannot install {' '.join(args.locks)} (nothing was installed):\n  "
                + "\n  ".join(problems[:20])
                + more
            )
    else:
        problems = pyproject_drift(Path(__file__).resolve().parents[1], args.lock, args.extra)
        if problems:
            sys.exit("\n".join(problems) + "\npyproject.toml changed without relocking: run bash scripts/lock.sh")


if __name__ == "__main__":
    main()
