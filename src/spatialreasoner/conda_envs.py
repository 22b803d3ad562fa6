"""The per-rule conda environments (envs/*.yaml): which lock each one installs, checked before Snakemake builds any.

An env file names its lock as ``-r ${SPATIALREASONER_ROOT}/locks/...`` (pip expands the variable, which the workflow
sets to the repository), because Snakemake copies env files to ``.snakemake/conda/`` before conda reads them.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from spatialreasoner.errors import ConfigError

ROOT_VARIABLE = "SPATIALREASONER_ROOT"
_LOCK_LINE = re.compile(r"^\s*-\s+-r\s+\$\{" + ROOT_VARIABLE + r"\}/(\S+)\s*$", re.M)
_DIGEST_LINE = re.compile(r"^# lock sha256: ([0-9a-f]{64})$", re.M)


def env_lock(env_file: Path) -> str:
    """The lock an env file installs, relative to the repository (``locks/py3.11/data.txt``)."""
    found = _LOCK_LINE.findall(env_file.read_text())
    if len(found) != 1:
        raise ConfigError(
            f"{env_file}: expected one pip entry '-r ${{{ROOT_VARIABLE}}}/locks/<python>/<lock>.txt', found {found}"
        )
    return found[0]


def check_conda_envs(root: Path) -> dict[str, str]:
    """``{env file: lock}`` for every envs/*.yaml under ``root``; a missing lock, or one changed since scripts/lock.sh
    recorded its sha256 in the env file, raises a ConfigError naming both files."""
    out = {}
    for env_file in sorted((root / "envs").glob("*.yaml")):
        rel_env = env_file.relative_to(root).as_posix()
        lock = env_lock(env_file)
        path = root / lock
        if not path.is_file():
            raise ConfigError(f"{rel_env} installs {lock}, which does not exist: run bash scripts/lock.sh")
        digest = _DIGEST_LINE.search(env_file.read_text())
        if digest is None or digest[1] != hashlib.sha256(path.read_bytes()).hexdigest():
            raise ConfigError(
                f"{rel_env} does not record the sha256 of {lock} as it is now (so Snakemake would not rebuild the "
                "environment): run bash scripts/lock.sh"
            )
        out[rel_env] = lock
    return out
