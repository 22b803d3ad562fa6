"""``spatialreasoner extract``: unpack an image tar without trusting its members.

Every member is checked before anything is written: absolute paths, ``..`` components, links resolving outside the
target and device/FIFO members fail the whole extraction, naming the member. The tar is unpacked into a temporary
sibling of the target (with Python's ``data`` extraction filter as a second guard), a marker recording the member
count is written last, and the folder is renamed into place. A tar without files, or with a hard link to a member
it does not hold, is refused before anything is written.
"""

from __future__ import annotations

import argparse
import logging
import os
import posixpath
import tarfile
import time
from pathlib import Path

from tqdm import tqdm

from spatialreasoner.errors import DataError
from spatialreasoner.utils import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

MARKER = ".extracted.json"


def _inside(path: str) -> bool:
    """True when the normalised relative POSIX ``path`` stays inside the extraction root."""
    norm = posixpath.normpath(path)
    return not (norm == ".." or norm.startswith("../") or posixpath.isabs(norm))


def check_member(member: tarfile.TarInfo) -> None:
    """Raise DataError naming ``member`` if extracting it could write outside the target or create a device."""
    name = member.name
    if name.startswith("/") or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"unsafe tar member {name!r}: absolute path")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise DataError(f"unsafe tar member {name!r}: '..' path component")
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        raise DataError(f"unsafe tar member {name!r}: device or FIFO file")
    if member.issym():
        target = member.linkname
        if posixpath.isabs(target) or not _inside(posixpath.join(posixpath.dirname(name), target)):
            raise DataError(f"unsafe tar member {name!r}: symbolic link to {target!r} points outside the target")
    if member.islnk():
        target = member.linkname
        if posixpath.isabs(target) or not _inside(target):
            raise DataError(f"unsafe tar member {name!r}: hard link to {target!r} points outside the target")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise DataError(f"unsafe tar member {name!r}: unsupported member type {member.type!r}")


def check_links_resolve(members: list[tarfile.TarInfo], tar_path: Path) -> None:
    """A hard link must name a regular file that comes earlier in the archive (tar extracts it by copying that)."""
    earlier: set[str] = set()
    for member in members:
        name = posixpath.normpath(member.name)
        if member.islnk() and posixpath.normpath(member.linkname) not in earlier:
            raise DataError(
                f"tar member {member.name!r} of {tar_path} is a hard link to {member.linkname!r}, which is not a file "
                "earlier in the archive (missing member); the tar is incomplete or corrupt"
            )
        if member.isfile() or member.islnk():
            earlier.add(name)


def extract(tar_path: str | os.PathLike, out_dir: str | os.PathLike) -> int:
    """Extract ``tar_path`` into ``out_dir`` (replaced atomically); returns the member count."""
    tar_path, out_dir = Path(tar_path), Path(out_dir)
    if not tar_path.is_file():
        raise DataError(f"tar file {tar_path} does not exist")
    started = time.perf_counter()
    try:
        tar = tarfile.open(tar_path, "r:*")  # noqa: SIM115 (closed by the `with tar:` below)
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{tar_path} is not a readable tar archive: {exc}") from exc
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{tar_path} is truncated or corrupt: {exc}") from exc
        for member in members:
            check_member(member)
        check_links_resolve(members, tar_path)
        if not any(m.isfile() for m in members):
            raise DataError(f"{tar_path} holds no files ({len(members)} members); expected the image set's images")
        with atomic_path(out_dir) as tmp:
            tmp.mkdir(parents=True)
            files = 0
            for member in tqdm(members, desc=f"extract {tar_path.name}", unit="file", mininterval=1.0):
                try:
                    tar.extract(member, tmp, filter="data")
                except (tarfile.TarError, OSError) as exc:
                    raise DataError(f"cannot extract member {member.name!r} of {tar_path}: {exc}") from exc
                files += member.isfile()
            write_json_atomic(tmp / MARKER, {"tar": tar_path.name, "members": len(members), "files": files})
    log.info(
        "extracted %d members (%d files) of %s into %s in %.1f s",
        len(members),
        files,
        tar_path,
        out_dir,
        time.perf_counter() - started,
    )
    return len(members)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tar", required=True, help="tar archive to extract")
    parser.add_argument("--out", required=True, help="target folder (replaced)")


def run(args) -> int:
    extract(args.tar, args.out)
    return 0
