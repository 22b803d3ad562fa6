"""The vLLM backend of inference: the same prompts, pixel limits, greedy decoding, shards, columns and export as the
transformers backend, and the same replies on a briefly taught tiny model (float32, CPU) for at least 95% of rows."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from spatialreasoner.evaluate import infer
from spatialreasoner.evaluate.backends import cuda_visible_devices, default_workers, worker_gpus
from spatialreasoner.evaluate.backends.vllm import engine_kwargs
from spatialreasoner.evaluate.shards import fingerprint, prepare_shard_dir

from .conftest import make_benchmark, teach

ROWS, TAUGHT, MAX_NEW_TOKENS = 24, 8, 24
#: Not the model folder's own limits (3136-19600): 56x56 images become 84x84 (9 image tokens instead of 4).
LIMITS = {"min_pixels": 28 * 28 * 8, "max_pixels": 28 * 28 * 25}


def test_engine_arguments_carry_the_inference_settings():
    settings = {"model": "m", "dtype": "auto", "min_pixels": 3136, "max_pixels": None, "tensor_parallel_size": 2,
                "gpu_memory_utilization": 0.8, "max_model_len": 4096}  # fmt: skip
    gpu = engine_kwargs(settings, on_cpu=False)
    assert gpu["mm_processor_kwargs"] == {"min_pixels": 3136}
    assert (gpu["dtype"], gpu["tensor_parallel_size"], gpu["gpu_memory_utilization"]) == ("bfloat16", 2, 0.8)
    assert gpu["max_model_len"] == 4096 and gpu["limit_mm_per_prompt"] == {"image": 1, "video": 0}
    assert gpu["generation_config"] == "vllm" and not gpu["enforce_eager"]
    cpu = engine_kwargs({**settings, "min_pixels": None, "max_model_len": None, "tensor_parallel_size": 1}, on_cpu=True)
    assert cpu["dtype"] == "float32" and cpu["enforce_eager"]
    assert "mm_processor_kwargs" not in cpu and "max_model_len" not in cpu  # the folder's limits, the model's length


def test_engines_are_data_parallel_over_groups_of_gpus(monkeypatch):
    from spatialreasoner.evaluate import backends

    monkeypatch.setattr(backends, "visible_gpus", lambda: 4)
    assert default_workers(1) == 4 and default_workers(2) == 2
    assert [worker_gpus(r, 2) for r in range(2)] == [[0, 1], [2, 3]]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # e.g. SLURM's allocation
    assert cuda_visible_devices([2, 3]) == "6,7"
    monkeypatch.setattr(backends, "visible_gpus", lambda: 0)
    assert worker_gpus(0, 1) is None and default_workers(2) == 1


@pytest.fixture(scope="module")
def taught(tiny_model_dir, tmp_path_factory):
    """A benchmark and the tiny model taught its first rows' replies: its replies to the others vary with them."""
    root = tmp_path_factory.mktemp("vllm-infer")
    bench = root / "bench.tsv"
    make_benchmark(bench, n=ROWS, max_repeat=4)
    # lr 1e-2 diverged on some CPUs (loss 1.8 after 40 steps, every reply the same few tags); 3e-3 converges
    model, loss = teach(tiny_model_dir, bench, root / "model", rows=TAUGHT, steps=80, lr=3e-3)
    assert loss < 0.5, f"the tiny model did not learn its {TAUGHT} taught replies (loss {loss:.3f})"
    return bench, model, root


@pytest.mark.slow
def test_vllm_agrees_with_hf_and_resumes_from_shards(taught, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache for the CPU engine
    bench, model, root = taught
    hf_out = root / "hf" / "bench.parquet"
    infer.run_inference(model, bench, hf_out, max_new_tokens=MAX_NEW_TOKENS, batch_size=8, **LIMITS)
    hf = pd.read_parquet(hf_out)

    # a killed vLLM run left two finished rows in its shards
    out, shard_dir = root / "vllm" / "bench.parquet", root / "vllm-shards"
    settings = {"system_prompt": None, "max_new_tokens": MAX_NEW_TOKENS, **LIMITS, "dtype": "auto", "backend": "vllm"}
    prepare_shard_dir(shard_dir, fingerprint(settings, model, bench))
    with open(shard_dir / "rows-0-old.jsonl", "w") as f:
        for index in (10, 11):
            f.write(json.dumps({"index": index, "prediction": f"SHARD-{index}", "gen_seconds": 0.5, "gen_tokens": 3,
                                "error": None}) + "\n")  # fmt: skip
    summary = infer.run_inference(model, bench, out, backend="vllm", max_model_len=1024, shard_dir=shard_dir,
                                  max_new_tokens=MAX_NEW_TOKENS, batch_size=256, **LIMITS)  # fmt: skip
    assert summary["resumed"] == 2 and summary["generated"] == ROWS - 2 and summary["backend"] == "vllm"
    vl = pd.read_parquet(out)
    assert list(vl.columns) == list(hf.columns) and vl["index"].tolist() == hf["index"].tolist()
    assert vl["prediction"].iloc[:2].tolist() == ["SHARD-10", "SHARD-11"]
    assert (vl[["min_pixels", "max_pixels"]].values == list(LIMITS.values())).all()

    a, b = hf.iloc[2:], vl.iloc[2:]
    assert a["prediction"].nunique() >= 4, "the model must answer differently to different rows"
    agree = a["prediction"].to_numpy() == b["prediction"].to_numpy()
    print(f"\nHF vs vLLM greedy predictions: {agree.sum()}/{len(agree)} rows agree ({agree.mean():.1%}); "
          f"{a['prediction'].nunique()} distinct HF replies")  # fmt: skip
    for (_, x), (_, y) in zip(a[~agree].iterrows(), b[~agree].iterrows(), strict=True):
        print(f"  index {x['index']}: HF {x['prediction']!r} vs vLLM {y['prediction']!r}")
    assert agree.mean() >= 0.95
    assert (a["gen_tokens"].to_numpy()[agree] == b["gen_tokens"].to_numpy()[agree]).all()
    # the export holds the same replies
    back = pd.read_excel(out.with_suffix(".xlsx"), keep_default_na=False, na_values=[""])
    assert back["prediction"].astype(str).tolist() == vl["prediction"].astype(str).tolist()
    assert not shard_dir.exists()


def test_the_infer_rule_passes_the_backend_and_its_settings(repo_root, tmp_path):
    import subprocess
    import sys

    override = tmp_path / "vllm.yaml"
    # Tensor parallel needs GPUs (refused on CPU): the inference job asks for 4.
    override.write_text(
        "evaluate:\n  backend: vllm\n  vllm:\n    tensor_parallel_size: 2\n    max_model_len: 4096\n"
        "  resources: {gpus: 4}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--forceall", "--configfile", "config/demo.yaml", str(override)],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    commands = [line for line in proc.stdout.splitlines() if " infer --model " in line]
    assert commands
    for command in commands:
        assert "--backend vllm --tensor-parallel-size 2 --gpu-memory-utilization 0.9 --max-model-len 4096" in command
        assert "--batch-size 256" in command  # evaluate.vllm.batch_size replaces batch_size
