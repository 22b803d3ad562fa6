"""Small helpers shared by every stage: atomic outputs, logging, hashing, environment facts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Names of environment variables whose values must never be written anywhere.
SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "OPENAI_API_KEY")
#: Any other environment variable named like a secret (``*_TOKEN``, ``*_API_KEY``, ``*_SECRET``, ``*PASSWORD``...).
SECRET_ENV_NAME = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY|CREDENTIALS?)($|_)", re.I)
#: Shorter values of such variables are settings (``1``, ``false``), not secrets worth hiding everywhere.
MIN_SECRET_LENGTH = 6
_REGISTERED_SECRETS: set[str] = set()
# Credentials that are recognisable by their form wherever they come from: a URL's userinfo and HTTP auth headers.
_URL_USERINFO = re.compile(r"(?<=://)[^/?#@\s'\"]+@")
# A URL's query parameter whose name says it carries a credential (token=, api_key=, X-Amz-Signature=, sig=, ...).
_URL_SECRET_PARAM = re.compile(
    r"(?<=://)([^\s'\"<>]*?[?&;][^=&;#\s'\"<>]*(?:token|key|sig|secret|passw|pwd|credential|auth|session)"
    r"[^=&;#\s'\"<>]*=)(?!\*\*\*(?:[&;#\s'\"<>]|$))[^&;#\s'\"<>]+",
    re.I,
)
_AUTH_VALUE = re.compile(
    r"(\bAuthorization['\"]?\s*[:=]\s*['\"]?(?:Bearer|Basic|token)\s+|\bBearer\s+(?=[A-Za-z0-9._~+/=-]{16}))"
    r"[A-Za-z0-9._~+/=-]+",
    re.I,
)


def register_secret(value: str | None) -> None:
    """Redact ``value`` (e.g. an API key read from a variable named in the config) from every message from now on."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        _REGISTERED_SECRETS.add(value)


def known_secrets() -> list[str]:
    """Every secret this process knows, longest first (so that no secret is left half-replaced)."""
    found = set(_REGISTERED_SECRETS)
    for name, value in os.environ.items():
        if value and (name in SECRET_ENV_VARS or (SECRET_ENV_NAME.search(name) and len(value) >= MIN_SECRET_LENGTH)):
            found.add(value)
    return sorted(found, key=len, reverse=True)


class RedactingFormatter(logging.Formatter):
    """A formatter whose output (message, arguments and traceback alike) has every known secret replaced."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class RedactingFilter(logging.Filter):
    """A filter that replaces every known secret in a record's text (message, arguments and any other text field)
    before a handler sees it: put on a logger whose handlers belong to someone else (Snakemake's, which prints the
    errors a Snakefile raises)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.getMessage() if record.args else record.msg)
            record.args = None
        if record.exc_info and not record.exc_text:  # a handler's formatter shows exc_text when it is set
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        for key, value in vars(record).items():
            if isinstance(value, str) and key not in _PLAIN_RECORD_FIELDS:
                setattr(record, key, redact(value))
        return True


#: A log record's own fields that hold no text of the message (file and function names, level, thread...), and
#: ``msg``, redacted apart.
_PLAIN_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) - {"exc_text", "stack_info"}


class RedactingStream:
    """A text stream (stdout, stderr) that replaces every known secret in what is written through it: tracebacks,
    warnings and progress bars of libraries as well as the workflow's own messages."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        return self._stream.write(redact(text) if isinstance(text, str) else text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def redact_standard_streams() -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` in :class:`RedactingStream` (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, RedactingStream):
            setattr(sys, name, RedactingStream(stream))


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, to ``log_file`` (Snakemake's ``log:``), secrets redacted in both."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a"))
    for handler in handlers:
        handler.setFormatter(RedactingFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=handlers, force=True)


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
    """Replace every secret in ``text`` by ``***``: the values of secret environment variables and of registered
    secrets, a URL's ``user:password@`` and its query values whose parameter names a credential (``?token=``,
    ``X-Amz-Signature=``), and the value of an HTTP ``Bearer``/``Basic`` credential."""
    for value in known_secrets():
        if value in text:
            text = text.replace(value, "***")
    if "@" in text:
        text = _URL_USERINFO.sub("***@", text)
    if "://" in text:
        previous = None
        while previous != text:  # one parameter per pass: a URL may carry several
            previous, text = text, _URL_SECRET_PARAM.sub(r"\1***", text)
    return _AUTH_VALUE.sub(lambda m: f"{m.group(1)}***", text)


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
