"""``spatialreasoner fetch``: download one file by URL (http(s), file:// or a plain path), verified by sha256.

Bytes stream into ``<dest>.part`` (resumed with an HTTP Range request after an interruption, retried with
exponential backoff on connection errors and 5xx), are checked against the expected sha256 and size, and only then
renamed to ``dest``. Without a configured sha256 the first verified download of a remote file is recorded in
``<dest>.lock.json`` and later downloads must match it. ``HF_TOKEN`` is sent as a bearer token to huggingface.co
only and never logged.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

from tqdm import tqdm

from spatialreasoner.errors import DataError
from spatialreasoner.utils import redact, sha256_file, write_json_atomic

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
        raise DataError(f"unsupported URL scheme {parsed.scheme!r} in {url!r}; expected http(s)://, file:// or a path")
    return Path(url)


def auth_headers(url: str) -> dict[str, str]:
    """Bearer auth from HF_TOKEN, only for huggingface.co (requests drops it on redirects to other hosts)."""
    host = (urlparse(url).hostname or "").lower()
    token = os.environ.get("HF_TOKEN")
    if token and any(host == h or host.endswith("." + h) for h in HF_HOSTS):
        return {"Authorization": f"Bearer {token}"}
    return {}


class _Transient(Exception):
    """A failure worth retrying (connection lost, timeout, 5xx)."""


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


def _download_http(url: str, part: Path, timeout: float, retries: int, backoff: float) -> None:
    import requests

    headers = {"User-Agent": "spatialreasoner-fetch", **auth_headers(url)}
    attempt = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        req_headers = dict(headers)
        if offset:
            req_headers["Range"] = f"bytes={offset}-"
        try:
            _stream_once(requests, url, part, offset, req_headers, timeout)
            return
        except _Transient as exc:
            attempt += 1
            if attempt > retries:
                raise DataError(f"download of {redact(url)} failed after {retries} retries: {exc}") from exc
            delay = backoff * 2 ** (attempt - 1)
            log.warning("download of %s: %s; retry %d/%d in %.1f s", redact(url), exc, attempt, retries, delay)
            time.sleep(delay)


def _stream_once(requests, url: str, part: Path, offset: int, headers: dict, timeout: float) -> None:
    try:
        resp = requests.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=True)
    except requests.RequestException as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from exc
    with resp:
        if resp.status_code >= 500 or resp.status_code == 429:
            raise _Transient(f"HTTP {resp.status_code}")
        if resp.status_code == 416 and offset:
            # the partial file is already complete (or longer than the file): start over to be safe
            part.unlink()
            raise _Transient("HTTP 416 for the resumed range; restarting from byte 0")
        if resp.status_code >= 400:
            raise DataError(f"download of {redact(url)} failed: HTTP {resp.status_code} {resp.reason}")
        mode = "ab"
        if resp.status_code == 200 and offset:
            log.info("server ignored the Range request; restarting %s from byte 0", part.name)
            offset, mode = 0, "wb"
        elif resp.status_code == 206:
            log.info("resuming %s at byte %d", part.name, offset)
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        try:
            with (
                open(part, mode) as f,
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name) as bar,
            ):
                for chunk in resp.iter_content(HTTP_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
        except requests.RequestException as exc:
            raise _Transient(f"transfer interrupted: {type(exc).__name__}") from exc
        if total is not None and part.stat().st_size < total:
            raise _Transient(f"transfer interrupted at byte {part.stat().st_size} of {total}")


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
        _download_http(url, part, timeout, retries, backoff)
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
                "url": redact(str(url)),
                "sha256": digest,
                "size": nbytes,
                "recorded": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            },
        )
        log.info("recorded sha256 %s of %s in %s", digest, dest, lock_path(dest))
    elapsed = time.perf_counter() - started
    log.info("fetched %s -> %s (%d bytes, sha256 %s, %.1f s)", redact(str(url)), dest, nbytes, digest, elapsed)
    return dest


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="http(s):// URL, file:// URL or a local path")
    parser.add_argument("--out", required=True, help="destination file")
    parser.add_argument("--sha256", default=None, help="expected sha256 (else recorded in <out>.lock.json)")
    parser.add_argument("--size", type=int, default=None, help="expected size in bytes")
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles)")
    parser.add_argument("--timeout", type=float, default=60.0, help="connect/read timeout in seconds")


def run(args) -> int:
    sha = args.sha256 or None
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha)):
        raise DataError(f"--sha256 must be 64 hex characters, got {sha!r}")
    fetch(args.url, args.out, sha, args.size, args.retries, args.backoff, args.timeout)
    return 0
