"""snapshot: revision pinning through the lock file, offline mode, token handling (Hub calls replaced by fakes)."""

from __future__ import annotations

import json
import logging

import pytest

from spatialreasoner.data import snapshot as snap
from spatialreasoner.errors import DataError

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


class FakeHub:
    """Stands in for huggingface_hub: records calls, writes files into local_dir."""

    def __init__(self, head=COMMIT_A):
        self.head = head
        self.downloads: list[dict] = []
        self.resolved = 0

    def snapshot_download(self, repo_id, *, repo_type, revision, local_dir, allow_patterns=None, token=None):
        self.downloads.append({"repo": repo_id, "revision": revision, "token": token, "patterns": allow_patterns})
        (local_dir / "data").mkdir(parents=True, exist_ok=True)
        (local_dir / "data" / "train-00000-of-00001.parquet").write_text(f"rows at {revision}")
        (local_dir / ".cache").mkdir(exist_ok=True)
        return str(local_dir)

    def repo_info(self, repo_id, *, revision, repo_type, token=None):
        self.resolved += 1

        class Info:
            sha = self.head

        return Info()


@pytest.fixture
def hub(monkeypatch):
    fake = FakeHub()
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)

    class Api:
        def repo_info(self, *a, **kw):
            return fake.repo_info(*a, **kw)

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return fake


def test_branch_is_resolved_once_and_locked(hub, tmp_path):
    out = tmp_path / "snapshots" / "SFT"
    snap.snapshot("ccvl/SFT", "main", "dataset", out)
    assert hub.downloads[-1]["revision"] == COMMIT_A
    lock = json.loads(snap.lock_path(out).read_text())
    assert lock["commit"] == COMMIT_A and lock["revision"] == "main"
    assert json.loads((out / snap.MARKER).read_text())["commit"] == COMMIT_A
    assert not (out / ".cache").exists()
    # the branch moved on the Hub, but the lock keeps the recorded commit
    hub.head = COMMIT_B
    snap.snapshot("ccvl/SFT", "main", "dataset", out)
    assert hub.downloads[-1]["revision"] == COMMIT_A and hub.resolved == 1


def test_pinned_commit_needs_no_lock(hub, tmp_path):
    out = tmp_path / "m"
    snap.snapshot("Qwen/Qwen2.5-VL-7B-Instruct", COMMIT_B, "model", out, allow_patterns=["*.json"])
    assert hub.downloads[-1] == {
        "repo": "Qwen/Qwen2.5-VL-7B-Instruct",
        "revision": COMMIT_B,
        "token": False,
        "patterns": ["*.json"],
    }
    assert hub.resolved == 0
    # a model's lock records the weights' sha256 (none here: the fake repository holds no weight file)
    lock = json.loads(snap.lock_path(out).read_text())
    assert lock["commit"] == COMMIT_B and lock["weights_sha256"] == {}
    data = tmp_path / "d"
    snap.snapshot("ccvl/SFT", COMMIT_B, "dataset", data)
    assert not snap.lock_path(data).exists() and hub.resolved == 0


def test_lock_for_another_revision_is_an_error(hub, tmp_path):
    out = tmp_path / "SFT"
    snap.snapshot("ccvl/SFT", "main", "dataset", out)
    with pytest.raises(DataError, match=r"records ccvl/SFT@main \(dataset\) but the config asks for ccvl/SFT@v2"):
        snap.snapshot("ccvl/SFT", "v2", "dataset", out)


def test_offline_branch_without_lock(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        DataError, match=r"cannot resolve revision 'main' of ccvl/SFT offline \(HF_HUB_OFFLINE is set\)"
    ):
        snap.snapshot("ccvl/SFT", "main", "dataset", tmp_path / "SFT")
    assert hub.resolved == 0 and not (tmp_path / "SFT").exists()


def test_real_hub_offline_failure_is_one_clear_error(tmp_path, monkeypatch):
    # the real huggingface_hub in offline mode, with nothing cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        DataError, match=r"snapshot of ccvl/none@a{40} \(dataset\) failed \(offline: HF_HUB_OFFLINE is set\)"
    ):
        snap.snapshot("ccvl/none", COMMIT_A, "dataset", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_token_from_environment_only_and_not_logged(hub, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_TOKEN", "hf_sekrit_value_42")
    with caplog.at_level(logging.DEBUG):
        snap.snapshot("ccvl/SFT", COMMIT_A, "dataset", tmp_path / "SFT")
    assert hub.downloads[-1]["token"] == "hf_sekrit_value_42"
    assert "hf_sekrit_value_42" not in caplog.text


def test_bad_repo_type(tmp_path):
    with pytest.raises(DataError, match=r"repo_type must be model, dataset or space, got 'models'"):
        snap.snapshot("a/b", COMMIT_A, "models", tmp_path / "x")
