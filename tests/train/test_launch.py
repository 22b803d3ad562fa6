"""The training job's shell command: CPU, one node of GPUs, a vLLM server GPU, and several nodes through srun."""

from __future__ import annotations

import json
import shlex

from spatialreasoner.train.launch import job_resources, train_command, training_processes

PATHS = {"init": "resources/models/base", "data": "results/data/rl.parquet", "checkpoint_dir": "results/checkpoints/r",
         "out": "results/models/r", "log": "logs/train/r.log"}  # fmt: skip


def run_cfg(**resources):
    return {"stage": "grpo", "init": "base", "data": "rl", "resources": {"gpus": 0, "nodes": 1, **resources}}


def test_cpu_runs_one_plain_process_with_the_run_config_quoted():
    cmd = train_command("r", run_cfg(), prompts={"system": "It's <think>"}, seed=7, **PATHS)
    argv = shlex.split(cmd)
    assert argv[:4] == ["spatialreasoner", "--log", "logs/train/r.log", "train"]
    assert json.loads(argv[argv.index("--run-config") + 1])["stage"] == "grpo"
    assert json.loads(argv[argv.index("--prompts") + 1]) == {"system": "It's <think>"}
    assert argv[argv.index("--workdir") + 1] == "results/checkpoints/r" and "accelerate" not in cmd


def test_one_node_of_gpus_uses_accelerate_with_zero3():
    argv = shlex.split(train_command("r", run_cfg(gpus=4), **PATHS))
    assert argv[:6] == [
        "accelerate",
        "launch",
        "--config_file",
        "workflow/accelerate/zero3.yaml",
        "--num_processes",
        "4",
    ]
    assert argv[6:9] == ["-m", "spatialreasoner.cli", "--log"]


def test_vllm_server_takes_the_last_gpu_and_three_train():
    cfg = {**run_cfg(gpus=4), "vllm": {"mode": "server", "server_gpus": 1, "gpu_memory_utilization": 0.6}}
    assert training_processes(cfg) == 3
    cmd = train_command("r", cfg, **PATHS)
    assert cmd.startswith("CUDA_VISIBLE_DEVICES=3 trl vllm-serve --model resources/models/base")
    assert 'trap "kill $server" EXIT; CUDA_VISIBLE_DEVICES=0,1,2 accelerate launch' in cmd
    assert "--num_processes 3 " in cmd


def test_multi_node_runs_one_launcher_per_node_through_srun():
    cmd = train_command("r", run_cfg(gpus=4, nodes=2), **PATHS)
    argv = shlex.split(cmd)
    assert argv[:6] == ["srun", "--nodes", "2", "--ntasks-per-node", "1", "bash"]
    inner = argv[7]
    assert "--num_processes 8" in inner and "--num_machines 2" in inner
    assert "--machine_rank $SLURM_NODEID" in inner and "--main_process_port 29500" in inner
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1' in inner
    # The inner command line still parses, with the run config intact.
    inner_argv = shlex.split(inner.replace("$(", "(").replace("$SLURM_NODEID", "0"))
    assert json.loads(inner_argv[inner_argv.index("--run-config") + 1])["resources"]["nodes"] == 2


def test_job_resources_come_from_the_run():
    paper = {"resources": {"gpus": 4, "cpus_per_gpu": 8, "mem_mb": 480000, "runtime": 4320, "gpu_model": "a100"}}
    res = job_resources(paper)
    assert res == {"gpu": 4, "gpu_model": "a100", "gres": None, "mpi": None, "tasks": None, "tasks_per_gpu": None,
                   "cpus_per_gpu": 8, "nodes": 1, "mem_mb": 480000, "runtime": 4320, "threads": 32}  # fmt: skip
    cpu = job_resources({"resources": {"gpus": 0, "cpus_per_gpu": 2, "mem_mb": 4000, "runtime": 30}})
    assert (cpu["gpu"], cpu["cpus_per_gpu"], cpu["threads"]) == (0, 0, 2)
    multi = job_resources({"resources": {"gpus": 4, "nodes": 2}})
    # Per-node GPUs as GRES and one task per node, so the rule's own srun starts one launcher per node.
    assert (multi["gpu"], multi["gres"], multi["mpi"], multi["tasks"], multi["nodes"]) == (None, "gpu:4", "srun", 2, 2)
    assert job_resources({"resources": {"gpus": 4, "nodes": 2, "gpu_model": "h100"}})["gres"] == "gpu:h100:4"
