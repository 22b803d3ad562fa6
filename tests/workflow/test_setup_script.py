"""scripts/setup.sh refuses bad inputs with one message before it installs anything: a wheelhouse missing a file,
holding one for another Python or platform or one whose hash is not the lock's; a pyproject.toml pin that the lock
does not carry. Its --help names every option and environment variable it reads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.fixture(scope="module")
def checkout(tmp_path_factory, copy_checkout):
    """A copy of the repository without .venv: whatever setup.sh would install there shows as a .venv folder."""
    return copy_checkout(tmp_path_factory.mktemp("setup") / "repo")


def setup(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SETUP_", "VIRTUAL_ENV", "FLASH_ATTN"))}
    return subprocess.run(
        ["bash", "scripts/setup.sh", *args],
        cwd=repo,
        env={**base, "PYTHON": sys.executable, "SETUP_DEVICE": "cpu", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def first_pin(lock: Path) -> tuple[int, str, str]:
    for i, line in enumerate(lock.read_text().splitlines(), 1):
        if m := re.match(r"([A-Za-z0-9_.-]+)==(\S+) \\", line):
            return i, m[1], m[2]
    raise AssertionError(f"{lock} has no pin")


def test_help_lists_every_option_and_environment_variable(repo_root):
    proc = setup(repo_root, "--help")
    assert proc.returncode == 0, proc.stderr
    script = (repo_root / "scripts" / "setup.sh").read_text()
    parsing = script[script.index("while [ $# -gt 0 ]") :]
    parsing = parsing[: parsing.index("\ndone\n")]
    options = set(re.findall(r"^\s+(-{0,2}[a-z][a-z-]*)(?: \| (--[a-z-]+))?\)", parsing, re.M))
    words = {w for pair in options for w in pair if w}
    assert {"test", "vllm", "gpu", "--print-lock", "--wheelhouse", "--python", "--help"} <= words
    variables = set(re.findall(r"\$\{([A-Z][A-Z0-9_]+):[-=]", script))
    assert {"SETUP_DEVICE", "SETUP_WHEELHOUSE", "FLASH_ATTN_WHEEL", "MAX_JOBS"} <= variables
    undocumented = sorted(w for w in words | variables if not re.search(rf"(^|\s){re.escape(w)}\b", proc.stdout, re.M))
    assert undocumented == [], proc.stdout


def test_an_unknown_option_is_named(repo_root):
    proc = setup(repo_root, "--wheelhose", "x")
    assert proc.returncode == 1 and "unknown setup option '--wheelhose'" in proc.stderr


def test_a_pyproject_pin_edited_without_relocking_stops_setup(checkout):
    pyproject = checkout / "pyproject.toml"
    original = pyproject.read_text()
    try:
        pyproject.write_text(original.replace('"transformers==5.17.0"', '"transformers==5.18.0"'))
        proc = setup(checkout, "test")
    finally:
        pyproject.write_text(original)
    assert proc.returncode != 0
    assert f"pyproject.toml pins transformers==5.18.0 but locks/py{PY}/cpu.txt has transformers==5.17.0" in proc.stderr
    assert "bash scripts/lock.sh" in proc.stderr
    assert not (checkout / ".venv").exists()


def test_a_wheelhouse_missing_a_file_names_it_and_its_lock_line(checkout, tmp_path):
    proc = setup(checkout, "test", SETUP_WHEELHOUSE=str(tmp_path))
    line, name, version = first_pin(checkout / "locks" / f"py{PY}" / "cpu.txt")
    assert proc.returncode != 0
    assert f"missing: no file for locks/py{PY}/cpu.txt line {line}: {name}=={version}" in proc.stderr
    assert "nothing was installed" in proc.stderr and not (checkout / ".venv").exists()


def test_a_wheelhouse_file_with_another_hash_is_refused(checkout, tmp_path):
    line, name, version = first_pin(checkout / "locks" / f"py{PY}" / "cpu.txt")
    fake = tmp_path / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    fake.write_bytes(b"not the locked wheel")
    proc = setup(checkout, "test", SETUP_WHEELHOUSE=str(tmp_path))
    assert proc.returncode != 0
    assert f"hash mismatch: {fake.name} has sha256" in proc.stderr
    assert f"not one of the hashes of locks/py{PY}/cpu.txt line {line}: {name}=={version}" in proc.stderr
    assert not (checkout / ".venv").exists()


def test_a_wheelhouse_for_another_python_is_refused(checkout, tmp_path):
    lock = (checkout / "locks" / f"py{PY}" / "cpu.txt").read_text()
    version = re.search(r"^numpy==(\S+) \\", lock, re.M)[1]
    other = "cp312" if PY == "3.11" else "cp311"
    fake = tmp_path / f"numpy-{version}-{other}-{other}-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
    fake.write_bytes(b"a wheel for another Python")
    proc = setup(checkout, "test", SETUP_WHEELHOUSE=str(tmp_path))
    assert proc.returncode != 0
    assert f"wrong Python or platform: {fake.name} cannot install on CPython {PY}" in proc.stderr
    assert not (checkout / ".venv").exists()


def test_a_wheelhouse_for_another_platform_is_refused(checkout, tmp_path):
    lock = (checkout / "locks" / f"py{PY}" / "cpu.txt").read_text()
    version = re.search(r"^numpy==(\S+) \\", lock, re.M)[1]
    cp = "cp" + PY.replace(".", "")
    fake = tmp_path / f"numpy-{version}-{cp}-{cp}-macosx_14_0_arm64.whl"
    fake.write_bytes(b"a wheel for macOS")
    proc = setup(checkout, "test", SETUP_WHEELHOUSE=str(tmp_path))
    assert proc.returncode != 0
    assert f"wrong Python or platform: {fake.name} cannot install" in proc.stderr
