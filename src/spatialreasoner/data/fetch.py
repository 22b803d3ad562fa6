"""``spatialreasoner fetch``: download one file by URL (http(s), file:// or a plain path), verified by sha256.

Bytes stream into ``<dest>.part``, are checked against the expected sha256 and size, and only then renamed to
``dest``. Without a configured sha256 the first verified download of a remote file is recorded in
``<dest>.lock.json`` and later downloads must match it.

A transfer counts as complete only when the number of bytes received equals a known total size: the server's
``Content-Length`` of a 200 answer, the total in the ``Content-Range`` of a 206 answer or, when the answer carries
neither, the ``Content-Length`` of a HEAD request; failing those, a configured size. Fewer bytes than that total,
or a dropped connection, is an interruption: the download is retried with exponential backoff (as are connection
errors, 429 and 5xx) and resumed with an HTTP ``Range`` request carrying ``If-Range`` with the ETag (or
Last-Modified date) of the answer the partial file came from, so that a file changed upstream is sent whole and
downloaded again from byte 0 instead of being spliced onto old bytes. A partial file whose version cannot be
checked that way (one left by an earlier run, or from a server that gives no validator) is resumed only when a
sha256 is expected, and otherwise downloaded again from byte 0.

A server that announces no size at all (a body delimited by closing the connection or a chunked one, with no
``Content-Length`` on HEAD either) gives no way to tell a complete transfer from one cut short, so such a download
is accepted only against a configured sha256 or size: without either nothing is renamed into place and no lock is
recorded, and the error says to configure the sha256.

``HF_TOKEN`` is sent as a bearer token to huggingface.co only. URLs are logged, written to the lock file and named
in errors without credentials (see :func:`spatialreasoner.utils.redact_url`): no userinfo, no query values.

The workflow never puts a URL on a command line (where Snakemake's console, log and ``.snakemake`` metadata would
keep it): its rule passes the source's name and the config files, and the URL is read from the configuration here
(``--source``). Credentials belong in the environment: ``${VAR}`` in a URL is replaced by the environment variable
``VAR`` at download time only, and requests reads a ``~/.netrc`` (or ``$NETRC``) entry for the host.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import re
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

from tqdm import tqdm

from spatialreasoner.errors import DataError
from spatialreasoner.utils import redact, redact_url, sha256_file, write_json_atomic

log = logging.getLogger(__name__)

CHUNK = 1 << 20
# small network reads: on a dropped connection at most one read's worth of received bytes is lost
HTTP_CHUNK = 1 << 16
HF_HOSTS = ("huggingface.co",)


def lock_path(dest: str | os.PathLike) -> Path:
    dest = Path(dest)
    return dest.with_name(dest.name + ".lock.json")


def part_path(dest: str | os.PathLike) -> Path:
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def is_remote(url: str) -> bool:
    return urlparse(str(url)).scheme in ("http", "https")


def local_source(url: str) -> Path | None:
    """The local file a ``file://`` URL or plain path names; None for http(s)."""
    parsed = urlparse(str(url))
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise DataError(
            f"unsupported URL scheme {parsed.scheme!r} in {redact_url(url)!r}; expected http(s)://, file:// or a path"
        )
    return Path(url)


def auth_headers(url: str) -> dict[str, str]:
    """Bearer auth from HF_TOKEN, only for huggingface.co (requests drops it on redirects to other hosts)."""
    host = (urlparse(url).hostname or "").lower()
    token = os.environ.get("HF_TOKEN")
    if token and any(host == h or host.endswith("." + h) for h in HF_HOSTS):
        return {"Authorization": f"Bearer {token}"}
    return {}


_USERINFO = re.compile(r"(//)[^/?#@\s'\"]+@")
_QUERY_VALUE = re.compile(r"([?&][^=&#\s'\"]+=)[^&#\s'\")]+")


def _scrub(text: str, url: str | None = None) -> str:
    """``text`` (an exception's message, a library's log line) without credentials of ``url`` or of any URL in it."""
    if url:
        text = text.replace(str(url), redact_url(url))
    return redact(_QUERY_VALUE.sub(r"\1***", _USERINFO.sub(r"\1", text)))


class _ScrubFilter(logging.Filter):
    def __init__(self, url: str):
        super().__init__()
        self.url = url

    def filter(self, record: logging.LogRecord) -> bool:
        with contextlib.suppress(Exception):
            record.msg, record.args = _scrub(record.getMessage(), self.url), None
        return True


@contextlib.contextmanager
def _scrubbed_library_logs(url: str):
    """Scrub credentials from what requests/urllib3 log (urllib3 logs request lines, query included, at DEBUG)."""
    import requests  # noqa: F401  (so that its loggers and urllib3's exist)

    names = [n for n in list(logging.Logger.manager.loggerDict) if n.split(".")[0] in ("urllib3", "requests")]
    loggers = [logging.getLogger(n) for n in names]
    filt = _ScrubFilter(url)
    for lg in loggers:
        lg.addFilter(filt)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(filt)


class _Transient(Exception):
    """A failure worth retrying (connection lost, transfer cut short, timeout, 429, 5xx)."""


def _expected(dest: Path, sha256: str | None, size: int | None) -> tuple[str | None, int | None, str]:
    """Expected digest/size: configured values win; else those recorded in the lock file; else none yet."""
    if sha256:
        return sha256.lower(), size, "configured"
    lock = lock_path(dest)
    if lock.is_file():
        try:
            recorded = json.loads(lock.read_text())
            return str(recorded["sha256"]).lower(), int(recorded["size"]), f"lock file {lock}"
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"lock file {lock} is unreadable ({exc}); delete it to record the file again") from exc
    return None, size, "none"


def _verify(path: Path, dest: Path, sha256: str | None, size: int | None, origin: str) -> str:
    """Check ``path`` against sha256/size; on mismatch delete it and raise naming expected vs got."""
    got_size = path.stat().st_size
    if size is not None and got_size != size:
        path.unlink()
        raise DataError(f"size mismatch for {dest}: expected {size} bytes ({origin}), got {got_size}")
    digest = sha256_file(path)
    if sha256 is not None and digest != sha256:
        path.unlink()
        raise DataError(f"sha256 mismatch for {dest}: expected {sha256} ({origin}), got {digest}")
    return digest


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _encoded(resp) -> bool:
    """Whether the body has a content coding (gzip...): its Content-Length then counts encoded bytes."""
    return resp.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a ``Content-Range: bytes a-b/total`` header; None where absent or ``*``."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    return int(m.group(1)), (None if m.group(2) == "*" else int(m.group(2)))


class _Remote:
    """What the server said about the version whose bytes are in the partial file (within this run)."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.total_from = ""
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.encoded = False
        self.head_tried = False

    def start(self, resp) -> None:
        """A 200 answer: the partial file restarts with this version."""
        self.etag = resp.headers.get("ETag")
        self.last_modified = resp.headers.get("Last-Modified")
        self.encoded = _encoded(resp)
        self.total = None if self.encoded else _int(resp.headers.get("Content-Length"))
        self.total_from = "Content-Length"
        self.head_tried = False

    def if_range(self) -> str | None:
        """The validator for ``If-Range``: a strong ETag (a weak one is not allowed there), else Last-Modified."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


def _download_http(
    url: str, part: Path, size: int | None, verifiable: bool, timeout: float, retries: int, backoff: float
) -> int | None:
    """Download into ``part`` until it holds the whole file; returns the total size the server announced, if any.

    ``size`` (configured or recorded) stands in for the total when the server announces none; ``verifiable`` says
    whether a sha256 will be checked afterwards (which makes resuming bytes of an unknown version safe).
    """
    import requests

    headers = {"User-Agent": "spatialreasoner-fetch", "Accept-Encoding": "identity", **auth_headers(url)}
    remote = _Remote()
    attempt = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        req_headers = dict(headers)
        if offset:
            validator = remote.if_range()
            if remote.encoded or (validator is None and not verifiable):
                log.info("cannot tell which version the %d bytes of %s belong to; restarting from byte 0", offset, part)
                part.unlink()
                offset = 0
            else:
                req_headers["Range"] = f"bytes={offset}-"
                if validator:
                    req_headers["If-Range"] = validator
        try:
            _stream_once(requests, url, part, offset, req_headers, timeout, remote)
            _check_complete(requests, url, part, headers, timeout, remote, size)
            return remote.total
        except _Transient as exc:
            attempt += 1
            if attempt > retries:
                raise DataError(f"download of {redact_url(url)} failed after {retries} retries: {exc}") from exc
            delay = backoff * 2 ** (attempt - 1)
            log.warning("download of %s: %s; retry %d/%d in %.1f s", redact_url(url), exc, attempt, retries, delay)
            time.sleep(delay)


def _stream_once(requests, url: str, part: Path, offset: int, headers: dict, timeout: float, remote: _Remote) -> None:
    try:
        resp = requests.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=True)
    except requests.RequestException as exc:
        raise _Transient(_scrub(f"{type(exc).__name__}: {exc}", url)) from exc
    with resp:
        if resp.status_code >= 500 or resp.status_code == 429:
            raise _Transient(f"HTTP {resp.status_code}")
        if resp.status_code == 416 and offset:
            # the partial file is already complete (or longer than the file): start over to be safe
            part.unlink()
            raise _Transient("HTTP 416 for the resumed range; restarting from byte 0")
        if resp.status_code >= 400:
            raise DataError(f"download of {redact_url(url)} failed: HTTP {resp.status_code} {resp.reason}")
        if resp.status_code == 206:
            if not offset:
                raise DataError(f"download of {redact_url(url)} failed: HTTP 206 to a request without Range")
            first, total = _content_range(resp.headers.get("Content-Range"))
            etag = resp.headers.get("ETag")
            if (
                first != offset
                or _encoded(resp)
                or (remote.etag and etag and etag != remote.etag)
                or (remote.total is not None and total is not None and total != remote.total)
            ):
                part.unlink()
                raise _Transient("the resumed answer does not continue the partial file; restarting from byte 0")
            log.info("resuming %s at byte %d", part.name, offset)
            if remote.if_range() is None:  # bytes from an earlier run: their version is now this answer's
                remote.etag, remote.last_modified = etag, resp.headers.get("Last-Modified")
            if total is not None:
                remote.total, remote.total_from = total, "Content-Range"
            mode = "ab"
        else:
            if offset:
                log.info(
                    "server sent the whole file (Range not supported, or the file changed since the partial "
                    "download); restarting %s from byte 0",
                    part.name,
                )
            offset, mode = 0, "wb"
            remote.start(resp)
        total = remote.total
        try:
            with (
                open(part, mode) as f,
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name) as bar,
            ):
                for chunk in resp.iter_content(HTTP_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
        except requests.RequestException as exc:
            of = f" of {total}" if total is not None else ""
            raise _Transient(f"transfer interrupted at byte {part.stat().st_size}{of}: {type(exc).__name__}") from exc


def _head_size(requests, url: str, headers: dict, timeout: float, remote: _Remote) -> int | None:
    """The size a HEAD request announces for the version being downloaded; None when it tells nothing usable."""
    try:
        resp = requests.head(url, headers=headers, timeout=timeout, allow_redirects=True)
    except requests.RequestException as exc:
        log.info("HEAD %s failed: %s", redact_url(url), _scrub(f"{type(exc).__name__}: {exc}", url))
        return None
    with resp:
        etag = resp.headers.get("ETag")
        if resp.status_code != 200 or _encoded(resp) or (remote.etag and etag and etag != remote.etag):
            return None
        return _int(resp.headers.get("Content-Length"))


def _check_complete(
    requests, url: str, part: Path, headers: dict, timeout: float, remote: _Remote, size: int | None
) -> None:
    """Raise _Transient unless ``part`` holds as many bytes as the known total (an early end is an interruption)."""
    got = part.stat().st_size
    if remote.total is None and not remote.encoded and not remote.head_tried:
        remote.head_tried = True
        remote.total, remote.total_from = _head_size(requests, url, headers, timeout, remote), "HEAD"
    if remote.total is not None:
        total, source = remote.total, f"announced by the server's {remote.total_from}"
    elif size is not None:
        total, source = size, "expected size"
    else:
        return
    if got < total:
        raise _Transient(f"connection ended at byte {got} of {total} ({source})")
    if got > total and remote.total is not None:
        part.unlink()
        raise _Transient(f"received {got} bytes, more than the {total} {source}; restarting from byte 0")


def _copy_local(src: Path, part: Path) -> None:
    if not src.is_file():
        raise DataError(f"source file {src} does not exist")
    with (
        open(src, "rb") as fin,
        open(part, "wb") as fout,
        tqdm(total=src.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name) as bar,
    ):
        while chunk := fin.read(CHUNK):
            fout.write(chunk)
            bar.update(len(chunk))


def fetch(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` verified; returns ``dest``. Nothing unverified is left under ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shown = redact_url(str(url))
    src = local_source(url)
    # Local files are often made by the workflow itself (the demo's synthesize), so a recorded checksum would only
    # go stale when they are regenerated: they are checked against a configured sha256 alone.
    use_lock = src is None
    if use_lock:
        expected_sha, expected_size, origin = _expected(dest, sha256, size)
    else:
        expected_sha, expected_size, origin = (sha256.lower() if sha256 else None), size, "configured"
    if dest.exists():
        # an existing file counts only when verified; otherwise it is replaced
        if expected_sha is not None:
            try:
                _verify(dest, dest, expected_sha, expected_size, origin)
                log.info("%s already present and verified (%s)", dest, origin)
                return dest
            except DataError as exc:
                log.warning("%s; downloading again", exc)
        else:
            dest.unlink()
    part = part_path(dest)
    started = time.perf_counter()
    if src is None:
        verifiable = expected_sha is not None
        resumed_old = part.exists() and part.stat().st_size > 0
        with _scrubbed_library_logs(str(url)):
            total = _download_http(url, part, expected_size, verifiable, timeout, retries, backoff)
            if total is None and expected_sha is None and expected_size is None:
                got = part.stat().st_size
                part.unlink()
                raise DataError(
                    f"download of {shown} cannot be verified: the server announced no size (no Content-Length or "
                    f"Content-Range, and none on HEAD), so a transfer cut short cannot be told from a complete one "
                    f"({got} bytes received); configure the file's sha256 (or size) to download it"
                )
            try:
                digest = _verify(part, dest, expected_sha, expected_size, origin)
            except DataError as exc:
                if not (resumed_old and verifiable):
                    raise
                # the partial file of an earlier run may hold bytes of another version: once more from byte 0
                log.warning("%s after resuming an earlier partial download; downloading again from byte 0", exc)
                _download_http(url, part, expected_size, verifiable, timeout, retries, backoff)
                digest = _verify(part, dest, expected_sha, expected_size, origin)
    else:
        if part.exists():
            part.unlink()
        _copy_local(src, part)
        digest = _verify(part, dest, expected_sha, expected_size, origin)
    os.replace(part, dest)
    nbytes = dest.stat().st_size
    if expected_sha is None and use_lock:
        write_json_atomic(
            lock_path(dest),
            {
                "url": shown,
                "sha256": digest,
                "size": nbytes,
                "recorded": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            },
        )
        log.info("recorded sha256 %s of %s in %s", digest, dest, lock_path(dest))
    elapsed = time.perf_counter() - started
    log.info("fetched %s -> %s (%d bytes, sha256 %s, %.1f s)", shown, dest, nbytes, digest, elapsed)
    return dest


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(url: str, where: str = "url") -> str:
    """``url`` with every ``${VAR}`` replaced by the environment variable's value (a DataError naming it if unset)."""

    def value(m: re.Match) -> str:
        if m.group(1) not in os.environ:
            raise DataError(f"{where} refers to ${{{m.group(1)}}}, which is not set in the environment")
        return os.environ[m.group(1)]

    return _ENV_REF.sub(value, url)


def source_spec(configfiles: list[str], name: str) -> dict:
    """The ``sources.<name>`` entry of the configuration made of ``configfiles`` (merged as Snakemake merges them)."""
    from spatialreasoner.config import load_yaml_strict, merge_configs
    from spatialreasoner.errors import ConfigError

    config: dict = {}
    for path in configfiles:
        content = load_yaml_strict(path)
        if isinstance(content, dict):
            merge_configs(config, content)
    spec = (config.get("sources") or {}).get(name)
    if not isinstance(spec, dict) or "url" not in spec:
        raise ConfigError(f"config key sources.{name}.url: not set in {', '.join(map(str, configfiles))}")
    return spec


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=None, help="http(s):// URL, file:// URL or a local path (or --source with --configfile)"
    )
    parser.add_argument("--source", default=None, help="a URL source of the configuration: its url, sha256 and size")
    parser.add_argument("--configfile", nargs="+", default=[], help="the config files holding --source")
    parser.add_argument("--out", required=True, help="destination file")
    parser.add_argument("--sha256", default=None, help="expected sha256 (else recorded in <out>.lock.json)")
    parser.add_argument("--size", type=int, default=None, help="expected size in bytes")
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles)")
    parser.add_argument("--timeout", type=float, default=60.0, help="connect/read timeout in seconds")


def run(args) -> int:
    if (args.url is None) == (args.source is None):
        raise DataError("give exactly one of --url and --source")
    url = args.url
    if args.source is not None:
        spec = source_spec(args.configfile, args.source)
        url = spec["url"]
        args.sha256 = args.sha256 or spec.get("sha256")
        args.size = args.size if args.size is not None else spec.get("size")
    url = expand_env(str(url), f"sources.{args.source}.url" if args.source else "--url")
    sha = args.sha256 or None
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha)):
        raise DataError(f"--sha256 must be 64 hex characters, got {sha!r}")
    fetch(url, args.out, sha, args.size, args.retries, args.backoff, args.timeout)
    return 0
