"""Damaged model folders are refused naming the folder and the file; weight checksums are recorded and checked."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from spatialreasoner.errors import DataError
from spatialreasoner.modeling import check_model_dir, verify_weights, weight_hashes


@pytest.fixture
def model(tiny_model_dir, tmp_path):
    dest = tmp_path / "models" / "m"
    shutil.copytree(tiny_model_dir, dest)
    return dest


def flip_one_byte(path, offset_from_end=100):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def refused(folder, *fragments, verify=True):
    with pytest.raises(DataError) as info:
        check_model_dir(folder, verify=verify)
    message = str(info.value)
    assert f"model folder {folder}" in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_tiny_model_records_its_weights(model):
    record = json.loads((model / "tiny_model.json").read_text())
    digest = hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
    assert record["weights_sha256"] == {"model.safetensors": digest}
    assert verify_weights(model) is True
    check_model_dir(model)


@pytest.mark.parametrize("how", ["zero-bytes", "half", "header-only"])
def test_truncated_weights(model, how):
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    keep = {"zero-bytes": 0, "half": len(data) // 2, "header-only": 8 + int.from_bytes(data[:8], "little")}[how]
    weights.write_bytes(data[:keep])
    refused(model, "model.safetensors", "truncated", verify=False)


@pytest.mark.parametrize("how", ["zero-bytes", "cut"])
@pytest.mark.parametrize("name", ["config.json", "preprocessor_config.json", "tokenizer_config.json"])
def test_empty_or_cut_json_files(model, how, name):
    path = model / name
    if not path.is_file():
        name = "processor_config.json"
        path = model / name
    text = path.read_text()
    path.write_text("" if how == "zero-bytes" else text[: len(text) // 2])
    refused(model, name, "empty" if how == "zero-bytes" else "not valid JSON", verify=False)


def test_corrupted_weights_of_the_right_size(model):
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    flip_one_byte(weights)
    assert weights.stat().st_size == size
    check_model_dir(model, verify=False)  # the structure is intact: only the checksum tells
    refused(model, "model.safetensors has sha256", "tiny_model.json records", "corrupt")


def test_unrecorded_or_missing_weight_file(model):
    shutil.copy(model / "model.safetensors", model / "model-extra.safetensors")
    refused(model, "model-extra.safetensors are not recorded")
    (model / "model-extra.safetensors").unlink()
    record = json.loads((model / "tiny_model.json").read_text())
    record["weights_sha256"]["model-00002.safetensors"] = "0" * 64
    (model / "tiny_model.json").write_text(json.dumps(record))
    refused(model, "model-00002.safetensors recorded in", "missing")


def test_inference_refuses_corrupted_weights_before_any_output(model, tmp_path):
    from spatialreasoner.evaluate.infer import run_inference

    flip_one_byte(model / "model.safetensors")
    out = tmp_path / "preds" / "p.parquet"
    with pytest.raises(DataError, match=rf"model folder {model}: model.safetensors has sha256"):
        run_inference(model, tmp_path / "bench.tsv", out)
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_training_refuses_a_corrupted_init_before_any_output(model, tmp_path):
    from spatialreasoner.train.main import train

    flip_one_byte(model / "model.safetensors")
    out = tmp_path / "results" / "models" / "r"
    with pytest.raises(DataError, match=rf"model folder {model}: model.safetensors has sha256"):
        train("r", {"stage": "sft", "init": "m", "data": "d"}, model, tmp_path / "d.parquet", tmp_path / "ck", out)
    assert not out.exists() and not (tmp_path / "ck").exists()


def test_final_model_run_json_records_and_guards_its_weights(model, tmp_path):
    from spatialreasoner.train.common import export_final_model

    checkpoint = tmp_path / "checkpoint-5"
    shutil.copytree(model, checkpoint)
    (checkpoint / "tiny_model.json").unlink()  # a checkpoint has no record of its own
    out = export_final_model(checkpoint, tmp_path / "final", {"run": "r"})
    record = json.loads((out / "run.json").read_text())
    assert record["weights_sha256"] == weight_hashes(checkpoint)
    assert (
        record["weights_sha256"]["model.safetensors"]
        == hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
    )
    flip_one_byte(out / "model.safetensors")
    refused(out, "model.safetensors has sha256", "run.json records")


def test_hub_model_snapshot_records_weights_in_marker_and_lock(model, tmp_path, monkeypatch):
    """The released models' lock keeps the weights' sha256; a later corruption of the folder is refused."""
    import huggingface_hub

    from spatialreasoner.data import snapshot as snap

    def fake_download(repo_id, *, repo_type, revision, local_dir, allow_patterns=None, token=None):
        shutil.copytree(model, local_dir, dirs_exist_ok=True)
        (local_dir / "tiny_model.json").unlink()
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    out = tmp_path / "resources" / "models" / "released"
    commit = "c" * 40
    snap.snapshot("ccvl/SpatialReasoner", commit, "model", out)
    lock = json.loads(snap.lock_path(out).read_text())
    assert lock["commit"] == commit and lock["weights_sha256"] == weight_hashes(model)
    assert json.loads((out / snap.MARKER).read_text())["weights_sha256"] == lock["weights_sha256"]
    check_model_dir(out)
    # the folder's own marker edited to match corrupted weights still loses against the lock outside it
    flip_one_byte(out / "model.safetensors")
    marker = json.loads((out / snap.MARKER).read_text())
    marker["weights_sha256"] = weight_hashes(out)
    (out / snap.MARKER).write_text(json.dumps(marker))
    refused(out, "model.safetensors has sha256", f"{snap.lock_path(out)} records")
