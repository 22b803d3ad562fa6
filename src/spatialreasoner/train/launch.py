"""The shell command of one training job: one CPU process, ``accelerate launch`` on a node's GPUs, or one
``accelerate launch`` per node through ``srun`` for multi-node runs (plus a vLLM server GPU when configured).

Pure string composition (no torch import), so the workflow and the tests can build and inspect it.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping

#: Accelerate config files, relative to the workflow's root folder.
ACCELERATE_CONFIGS = {"gpu": "workflow/accelerate/zero3.yaml", "cpu": "workflow/accelerate/cpu.yaml"}
MAIN_PROCESS_PORT = 29500
VLLM_SERVER_PORT = 8000


def training_processes(run_cfg: Mapping) -> int:
    """Processes that train per node: the node's GPUs minus the vLLM server's in server mode (0 on CPU)."""
    res = run_cfg.get("resources") or {}
    gpus = int(res.get("gpus", 0) or 0)
    vllm = run_cfg.get("vllm") or {}
    if gpus and vllm.get("mode") == "server":
        gpus -= int(vllm.get("server_gpus", 1))
    if run_cfg.get("num_processes"):
        return int(run_cfg["num_processes"])
    return max(gpus, 0)


def train_command(
    run: str,
    run_cfg: Mapping,
    *,
    init: str,
    data: str,
    checkpoint_dir: str,
    out: str,
    log: str,
    prompts: Mapping | None = None,
    seed: int = 42,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> str:
    """The shell command that trains ``run`` as its resources say (``gpus``, ``nodes``, ``vllm.mode``)."""
    res = run_cfg.get("resources") or {}
    gpus, nodes = int(res.get("gpus", 0) or 0), int(res.get("nodes", 1) or 1)
    args = [
        "--log", log, "train",
        "--run-name", run,
        "--run-config", json.dumps(dict(run_cfg), sort_keys=True),
        "--init", init, "--data", data, "--workdir", checkpoint_dir, "--out", out,
        "--prompts", json.dumps(dict(prompts or {}), sort_keys=True),
        "--seed", str(seed),
    ]  # fmt: skip
    if min_pixels is not None:
        args += ["--min-pixels", str(min_pixels)]
    if max_pixels is not None:
        args += ["--max-pixels", str(max_pixels)]
    quoted = " ".join(shlex.quote(a) for a in args)
    if gpus == 0:
        return f"spatialreasoner {quoted}"

    procs = training_processes(run_cfg)
    launch = [
        "accelerate launch",
        f"--config_file {ACCELERATE_CONFIGS['gpu']}",
        f"--num_processes {procs * nodes}",
    ]
    if nodes > 1:
        # One launcher per node (srun starts them); rank and the first node's address come from SLURM's environment.
        launch += [
            f"--num_machines {nodes}",
            "--machine_rank $SLURM_NODEID",
            '--main_process_ip "$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
            f"--main_process_port {MAIN_PROCESS_PORT}",
        ]
    launch += ["-m spatialreasoner.cli", quoted]
    command = " ".join(launch)
    if nodes > 1:
        command = f"srun --nodes {nodes} --ntasks-per-node 1 bash -c {shlex.quote(command)}"

    vllm = run_cfg.get("vllm") or {}
    if vllm.get("mode") == "server":
        # The last GPU(s) of the (first) node serve generations; the others train.
        train_devices = ",".join(str(i) for i in range(procs))
        server_devices = ",".join(str(i) for i in range(procs, gpus))
        server = (
            f"CUDA_VISIBLE_DEVICES={server_devices} trl vllm-serve --model {shlex.quote(init)} "
            f"--port {VLLM_SERVER_PORT} --gpu_memory_utilization {vllm.get('gpu_memory_utilization', 0.9)} "
            f">> {shlex.quote(log + '.vllm')} 2>&1 &"
        )
        command = f'{server} server=$!; trap "kill $server" EXIT; CUDA_VISIBLE_DEVICES={train_devices} {command}'
    return command


def job_resources(run_cfg: Mapping) -> dict:
    """What the training job asks the scheduler for, from the run's ``resources`` (``gpus`` is per node)."""
    res = run_cfg.get("resources") or {}
    gpus, nodes = int(res.get("gpus", 0) or 0), int(res.get("nodes", 1) or 1)
    cpus_per_gpu = int(res.get("cpus_per_gpu", 1) or 1)
    # Several nodes: GPUs per node as GRES, one task per node, and the `mpi` resource so that the SLURM executor
    # does not wrap the command in its own single-task srun; the command's own srun starts one launcher per node.
    # Resources set to None are dropped, so single-node jobs ask for `--gpus` as usual.
    multi = nodes > 1 and gpus > 0
    model = res.get("gpu_model") or ""
    return {
        "gpu": None if multi else gpus,
        "gpu_model": None if multi else model,
        "gres": (f"gpu:{model}:{gpus}" if model else f"gpu:{gpus}") if multi else None,
        "mpi": "srun" if multi else None,
        "tasks": nodes if multi else None,
        "tasks_per_gpu": 0 if multi else None,
        "cpus_per_gpu": cpus_per_gpu if gpus else 0,
        "nodes": nodes,
        "mem_mb": int(res.get("mem_mb", 4000)),
        "runtime": int(res.get("runtime", 60)),
        "threads": max(1, gpus) * cpus_per_gpu,
    }
