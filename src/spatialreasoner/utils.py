"""Small helpers shared by every stage: atomic outputs, logging, hashing, environment facts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Names of environment variables whose values must never be written anywhere.
SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, to ``log_file`` (Snakemake's ``log:``)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a"))
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only if the block succeeds.

    Works for files and directories. Nothing half-written is ever left under the final name: on error the
    temporary is removed; on success an existing ``path`` is replaced.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON through a temporary file."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def json_object_arg(text: str, flag: str) -> dict:
    """A command-line option holding a JSON object (how rules pass structured config); ConfigError otherwise."""
    from spatialreasoner.errors import ConfigError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{flag} must be a JSON object, got {type(value).__name__}")
    return value


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The checkout's commit (with ``-dirty`` when modified), or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def package_versions(names=("torch", "transformers", "trl", "accelerate", "datasets", "spatialreasoner")) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def redact(text: str) -> str:
    """Replace the values of secret environment variables in ``text`` by ``***``."""
    for var in SECRET_ENV_VARS:
        value = os.environ.get(var)
        if value:
            text = text.replace(value, "***")
    return text


def redact_url(url: str) -> str:
    """``url`` fit for logs and records: userinfo (``user:password@``) removed, query parameter values and any
    fragment replaced by ``***`` (a bare query item, which may itself be a token, becomes ``***``), and the values of
    secret environment variables replaced as by :func:`redact`. Plain paths come back unchanged."""
    import re
    from urllib.parse import urlsplit, urlunsplit

    url = str(url)
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket: strip what looks like userinfo and every query value
        url = re.sub(r"(//)[^/?#@\s]*@", r"\1", url)
        return redact(re.sub(r"([?&;][^=&;#\s]+=)[^&;#\s]*", r"\1***", url))
    if "@" not in parts.netloc and not parts.query and not parts.fragment:
        return redact(url)

    def item(text: str) -> str:
        key, sep, value = text.partition("=")
        if sep:
            return f"{key}={'***' if value else ''}"
        return "***" if text else text

    netloc = parts.netloc.rpartition("@")[2]
    query = "&".join(item(p) for p in parts.query.split("&")) if parts.query else ""
    return redact(urlunsplit((parts.scheme, netloc, parts.path, query, "***" if parts.fragment else "")))
