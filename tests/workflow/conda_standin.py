"""A stand-in for the `conda` command (not conda): the part of conda's CLI that Snakemake's `--sdm conda` calls, and
what conda does with an environment file, for env files whose only conda packages are Python and pip.

No conda channel is reachable from the test machines, so this builds the environment as a venv of the pinned Python
(an interpreter of exactly the pinned version, from CONDA_STANDIN_PYTHONS or `pythonX.Y` on PATH) with the pinned pip, then handles the env
file's `pip:` section exactly as conda does (`conda/env/installers/pip.py`): the entries are written to
`condaenv.<random>.requirements.txt` in the env file's folder and installed by `pip install -U -r <that file>` run with
that folder as its working directory. `bin/activate <prefix>` under this stand-in's base prefix activates an
environment the way `conda activate <prefix>` does for a shell: CONDA_PREFIX set, `<prefix>/bin` first on PATH.

    CONDA_STANDIN_BASE=<dir> python conda_standin.py info --json | --version | config --get channel_priority --json
    CONDA_STANDIN_BASE=<dir> python conda_standin.py env create [--quiet] [--no-default-packages] --file F --prefix P
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

#: The oldest conda release Snakemake 9 accepts.
VERSION = "24.7.1"

ACTIVATE = """\
# Activate a prefix the way `conda activate <prefix>` does for a shell (sourced by Snakemake).
_standin_prefix=$1
export CONDA_PREFIX="$_standin_prefix"
export CONDA_DEFAULT_ENV="$_standin_prefix"
export PATH="$_standin_prefix/bin:$PATH"
unset _standin_prefix
hash -r 2>/dev/null || true
"""


def base() -> Path:
    root = Path(os.environ["CONDA_STANDIN_BASE"])
    (root / "bin").mkdir(parents=True, exist_ok=True)
    (root / "bin" / "activate").write_text(ACTIVATE)
    return root


def fail(message: str) -> None:
    print(f"conda stand-in: {message}", file=sys.stderr)
    sys.exit(1)


def find_python(version: str) -> str | None:
    """An interpreter of exactly ``version``: from CONDA_STANDIN_PYTHONS (os.pathsep-separated), then pythonX.Y on PATH."""
    listed = [p for p in os.environ.get("CONDA_STANDIN_PYTHONS", "").split(os.pathsep) if p]
    candidates = [*listed, shutil.which(f"python{version.rsplit('.', 1)[0]}")]
    for candidate in filter(None, candidates):
        found = subprocess.run(
            [candidate, "-c", "import platform; print(platform.python_version())"], capture_output=True, text=True
        ).stdout.strip()
        if found == version:
            return candidate
    return None


def env_create(file: Path, prefix: Path) -> None:
    spec = yaml.safe_load(file.read_text())
    pins, pip_entries = {}, None
    for dep in spec.get("dependencies") or []:
        if isinstance(dep, dict) and "pip" in dep:
            pip_entries = [str(entry) for entry in dep["pip"]]
            continue
        name, _, version = str(dep).partition("=")
        pins[name] = version
    unsupported = set(pins) - {"python", "pip"}
    if unsupported:
        fail(f"{file}: {sorted(unsupported)} are conda packages, which need a conda channel")
    py = pins.get("python", "")
    if not re.fullmatch(r"\d+\.\d+\.\d+", py):
        fail(f"{file}: python must be pinned exactly (python=X.Y.Z), got {py!r}")
    interpreter = find_python(py)
    if interpreter is None:
        fail(f"{file} pins python={py}; no interpreter of that version is on PATH or in CONDA_STANDIN_PYTHONS")
    subprocess.run([interpreter, "-m", "venv", str(prefix)], check=True)
    python = str(prefix / "bin" / "python")
    if "pip" in pins:
        subprocess.run(
            [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"pip=={pins['pip']}"],
            check=True,
        )
    if pip_entries:
        # conda: pip runs from the env file's folder, on a requirements file written there.
        workdir = file.resolve().parent
        with tempfile.NamedTemporaryFile(
            "w", prefix="condaenv.", suffix=".requirements.txt", dir=workdir, delete=False
        ) as req:
            req.write("\n".join(pip_entries))
        try:
            proc = subprocess.run([python, "-m", "pip", "install", "-U", "-r", req.name], cwd=workdir)
        finally:
            os.remove(req.name)
        if proc.returncode:
            fail(f"pip failed (exit {proc.returncode}) for the pip: section of {file}")


def main(argv: list[str]) -> None:
    if argv[:1] == ["--version"]:
        print(f"conda {VERSION}")
        return
    root = base()
    if argv[:2] == ["info", "--json"]:
        print(
            json.dumps(
                {
                    "conda_prefix": str(root),
                    "root_prefix": str(root),
                    "platform": "linux-64",
                    "conda_version": VERSION,
                    "envs_dirs": [str(root / "envs")],
                }
            )
        )
        return
    if argv[:3] == ["config", "--get", "channel_priority"]:
        print(json.dumps({"get": {"channel_priority": "strict"}, "success": True, "warnings": []}))
        return
    if argv[:2] == ["env", "create"]:
        parser = argparse.ArgumentParser(prog="conda env create")
        parser.add_argument("--file", required=True, type=Path)
        parser.add_argument("--prefix", required=True, type=Path)
        parser.add_argument("--quiet", action="store_true")
        parser.add_argument("--no-default-packages", action="store_true")
        args = parser.parse_args(argv[2:])
        env_create(args.file, args.prefix)
        return
    if argv[:1] == ["clean"]:
        return  # Snakemake's default cleanup of package tarballs: the stand-in downloads no conda packages
    fail(f"'conda {' '.join(argv)}' is not part of what this stand-in implements")


if __name__ == "__main__":
    main(sys.argv[1:])
