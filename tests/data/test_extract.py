"""extract: malicious tars are refused whole (nothing lands outside or inside the target); good tars unpack."""

from __future__ import annotations

import json

import pytest

from spatialreasoner.data.extract import MARKER, extract
from spatialreasoner.errors import DataError

from .conftest import make_tar


def test_good_tar_extracts_with_marker(tmp_path):
    tar = make_tar(
        tmp_path / "ok.tar",
        [
            ("imgs", "dir", None),
            ("imgs/a.jpg", "file", b"aaa"),
            ("imgs/sub/b.jpg", "file", b"bb"),
            ("imgs/alias.jpg", "sym", "a.jpg"),
        ],
    )
    out = tmp_path / "target"
    assert extract(tar, out) == 4
    assert (out / "imgs/a.jpg").read_bytes() == b"aaa"
    assert (out / "imgs/sub/b.jpg").read_bytes() == b"bb"
    assert (out / "imgs/alias.jpg").read_bytes() == b"aaa"
    assert json.loads((out / MARKER).read_text()) == {"tar": "ok.tar", "members": 4, "files": 2}


MALICIOUS = [
    ("absolute", [("ok.txt", "file", b"x"), ("/{outside}/abs.txt", "file", b"evil")], "absolute path"),
    ("dotdot", [("ok.txt", "file", b"x"), ("a/../../escape.txt", "file", b"evil")], "'..' path component"),
    ("symlink", [("ok.txt", "file", b"x"), ("link", "sym", "../outside_dir")], "points outside the target"),
    ("symlink-abs", [("link", "sym", "/{outside}")], "points outside the target"),
    ("hardlink", [("hl", "link", "../../etc/passwd")], "points outside the target"),
    ("device", [("ok.txt", "file", b"x"), ("dev/null", "chr", None)], "device or FIFO"),
    ("fifo", [("pipe", "fifo", None)], "device or FIFO"),
]


@pytest.mark.parametrize(("case", "members", "reason"), MALICIOUS, ids=[m[0] for m in MALICIOUS])
def test_malicious_tar_is_refused(tmp_path, case, members, reason):
    outside = tmp_path / "outside"
    outside.mkdir()
    members = [(name.format(outside=str(outside).lstrip("/")), kind, extra) for name, kind, extra in members]
    work = tmp_path / "work"
    work.mkdir()
    tar = make_tar(tmp_path / f"{case}.tar", members)
    before = sorted(p for p in tmp_path.rglob("*"))
    target = work / "target"
    with pytest.raises(DataError) as err:
        extract(tar, target)
    bad_name = members[-1][0]
    assert str(err.value).startswith(f"unsafe tar member {bad_name!r}: ")
    assert reason in str(err.value)
    # nothing was written anywhere: not the target, not outside, no temporary left over
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not target.exists()
    assert list(outside.iterdir()) == []


def test_not_a_tar(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar archive at all" * 40)
    with pytest.raises(DataError, match=r"bad.tar is not a readable tar archive"):
        extract(bad, tmp_path / "t")


def test_missing_tar(tmp_path):
    with pytest.raises(DataError, match=r"tar file .*missing.tar does not exist"):
        extract(tmp_path / "missing.tar", tmp_path / "t")


def test_replaces_previous_extraction(tmp_path):
    out = tmp_path / "t"
    extract(make_tar(tmp_path / "a.tar", [("a.txt", "file", b"1")]), out)
    extract(make_tar(tmp_path / "b.tar", [("b.txt", "file", b"2")]), out)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "b.txt"]
