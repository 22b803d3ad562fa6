"""Snapshots reuse a Hugging Face cache (HF_HOME) that already holds the pinned commit, with no download."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

COMMIT = "c" * 40


def fill_cache(hf_home, repo: str, files: dict[str, bytes], repo_type="model"):
    """A cache laid out as huggingface_hub lays it out: blobs by hash, the commit's snapshot of links to them."""
    storage = hf_home / "hub" / f"{repo_type}s--{repo.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    for name, data in files.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = storage / "snapshots" / COMMIT / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def snapshot_cli(tmp_path, hf_home, repo, out, repo_type="dataset"):
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    log = tmp_path / "snapshot.log"
    cmd = [sys.executable, "-m", "spatialreasoner.cli", "--log", str(log), "snapshot", "--repo", repo,
           "--revision", COMMIT, "--repo-type", repo_type, "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    return proc, log.read_text() if log.exists() else ""


def test_a_cached_commit_is_taken_from_hf_home_without_network(tmp_path):
    hf_home = tmp_path / "hf"
    files = {"all/train-00000-of-00001.parquet": b"rows", "README.md": b"# card"}
    fill_cache(hf_home, "ccvl/SFT", files, repo_type="dataset")
    out = tmp_path / "resources" / "snapshots" / "sft"
    proc, log = snapshot_cli(tmp_path, hf_home, "ccvl/SFT", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name, data in files.items():
        assert (out / name).read_bytes() == data
        assert not (out / name).is_symlink()  # a real file of the folder, not a link into the cache
    assert json.loads((out / ".snapshot.json").read_text())["commit"] == COMMIT
    assert "taken from the Hugging Face cache" in log


def test_an_uncached_commit_is_downloaded_as_before(tmp_path):
    hf_home = tmp_path / "hf"
    fill_cache(hf_home, "ccvl/other", {"README.md": b"x"}, repo_type="dataset")
    proc, log = snapshot_cli(tmp_path, hf_home, "ccvl/SFT", tmp_path / "out")
    # offline and not cached: the download is attempted and fails with the usual error
    assert proc.returncode == 2
    assert "snapshot of ccvl/SFT@" in log and "failed (offline: HF_HUB_OFFLINE is set)" in log, log
    assert not (tmp_path / "out").exists()
