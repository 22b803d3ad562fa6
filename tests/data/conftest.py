"""Helpers shared by the data-stage tests."""

from __future__ import annotations

import io
import tarfile


def make_tar(path, members):
    """members: (name, kind, payload_or_linkname); kind in file, dir, sym, link, chr, fifo."""
    with tarfile.open(path, "w") as tar:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(extra)
                tar.addfile(info, io.BytesIO(extra))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "sym": tarfile.SYMTYPE,
                "link": tarfile.LNKTYPE,
                "chr": tarfile.CHRTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            if kind in ("sym", "link"):
                info.linkname = extra
            tar.addfile(info)
    return path
