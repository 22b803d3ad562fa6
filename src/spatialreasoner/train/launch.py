"""The shell command of one training job: one CPU process, ``accelerate launch`` with N CPU processes (gloo) or on a
node's GPUs, or one ``accelerate launch`` per node through ``srun`` for multi-node runs (plus a vLLM server GPU).

Pure string composition (no torch import), so the workflow and the tests can build and inspect it; plus how the
launched processes share the job's log.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping

#: Accelerate config files, relative to the workflow's root folder.
ACCELERATE_CONFIGS = {"gpu": "workflow/accelerate/zero3.yaml", "cpu": "workflow/accelerate/cpu.yaml"}
MAIN_PROCESS_PORT = 29500
VLLM_SERVER_PORT = 8000
#: Signals the launcher forwards to the training processes: its defaults plus SLURM's warning signals, which the
#: trainer also answers with a checkpoint (an unhandled SIGUSR1 would kill the launcher and orphan the workers).
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2"
#: Seconds the launcher waits for the processes to save and exit after forwarding a signal, before SIGKILL
#: (torch's own default is 30 s). A run's ``shutdown_timeout`` overrides it.
SHUTDOWN_TIMEOUT = 540
#: Seconds between SLURM's warning signal and the launcher's deadline: the step in progress ends and the save starts.
SIGNAL_MARGIN = 60


def shutdown_timeout(run_cfg: Mapping) -> int:
    """The run's ``shutdown_timeout``, or the workflow's default when the run leaves it unset."""
    timeout = run_cfg.get("shutdown_timeout")
    return int(SHUTDOWN_TIMEOUT if timeout is None else timeout)


def stop_signal_lead(run_cfg: Mapping) -> int:
    """Seconds before a training job's time limit at which SLURM sends SIGTERM (``--signal=TERM@<lead>``): the
    launcher's grace period for the checkpoint plus a margin for the step in progress."""
    return shutdown_timeout(run_cfg) + SIGNAL_MARGIN


def training_processes(run_cfg: Mapping) -> int:
    """Processes that train per node: ``num_processes`` when set, else the node's GPUs minus the vLLM server's in
    server mode; on CPU (``gpus: 0``) one unless ``num_processes`` says more."""
    res = run_cfg.get("resources") or {}
    gpus = int(res.get("gpus", 0) or 0)
    vllm = run_cfg.get("vllm") or {}
    if gpus and vllm.get("mode") == "server":
        gpus -= int(vllm.get("server_gpus", 1))
    if run_cfg.get("num_processes"):
        return int(run_cfg["num_processes"])
    return max(gpus, 0) if int(res.get("gpus", 0) or 0) else 1


def launcher_environment(run_cfg: Mapping) -> dict[str, str]:
    """Environment of ``accelerate launch`` (read by torch's elastic agent): which signals it forwards to the
    training processes and how long it then waits for their checkpoint before killing them."""
    return {
        "PET_SIGNALS_TO_HANDLE": FORWARDED_SIGNALS,
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(shutdown_timeout(run_cfg)),
    }


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
    procs = training_processes(run_cfg)
    if gpus == 0 and procs <= 1:
        return f"spatialreasoner {quoted}"

    env = launcher_environment(run_cfg)
    if gpus == 0:
        # CPU processes share the job's cores (torchrun would give each one thread without being told).
        cores = job_resources(run_cfg)["threads"]
        env["OMP_NUM_THREADS"] = str(max(1, cores // procs))
    launch = [
        *(f"{k}={v}" for k, v in env.items()),
        "accelerate launch",
        f"--config_file {ACCELERATE_CONFIGS['gpu' if gpus else 'cpu']}",
        f"--num_processes {procs * nodes}",
    ]
    if gpus:
        # The run's precision, not the config file's bf16, so that accelerate and the Trainer agree (fp32 runs).
        launch.append(f"--mixed_precision {'no' if run_cfg.get('precision') in ('fp32', 'float32') else 'bf16'}")
    if nodes == 1:
        # Port 0: the launcher picks a free port, so that jobs sharing a node do not collide.
        launch.append("--main_process_port 0")
    else:
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
        server_args = " ".join(shlex.quote(a) for a in vllm_server_args(run_cfg, min_pixels, max_pixels, seed))
        server = (
            f"CUDA_VISIBLE_DEVICES={server_devices} trl vllm-serve --model {shlex.quote(init)} {server_args} "
            f">> {shlex.quote(log + '.vllm')} 2>&1 &"
        )
        # The trainer starts once the server answers; a server that exits first fails the job naming its log.
        ready = (
            f"python -m spatialreasoner.train.vllm_server --port {VLLM_SERVER_PORT} --pid $server "
            f"--log {shlex.quote(log + '.vllm')} || {{ kill $server 2>/dev/null; exit 1; }}"
        )
        command = (
            f'{server} server=$!; {ready}; trap "kill $server" EXIT; CUDA_VISIBLE_DEVICES={train_devices} {command}'
        )
    return command


def vllm_server_args(
    run_cfg: Mapping, min_pixels: int | None = None, max_pixels: int | None = None, seed: int = 42
) -> list[str]:
    """Arguments of ``trl vllm-serve`` (after ``--model``) that make the server see the trainer's prompts as the
    trainer does: the run's pixel limits (else the init folder's processor would resize images differently from the
    prompts' image placeholders), one image per prompt, prompt + completion length, the training dtype and seed.
    Sampling settings (temperature, top-p/k, min-p, repetition penalty, max tokens) travel with every request from
    TRL's client; ``--generation-config vllm`` keeps the model folder's generation_config.json from adding its own.
    Arguments ``trl vllm-serve`` does not know are passed on to ``vllm serve`` as they are."""
    vllm = run_cfg.get("vllm") or {}
    precision = run_cfg.get("precision", "auto")
    args = [
        "--port", str(VLLM_SERVER_PORT),
        "--gpu_memory_utilization", str(vllm.get("gpu_memory_utilization", 0.6)),
        "--dtype", "float32" if precision in ("fp32", "float32") else "bfloat16",
    ]  # fmt: skip
    prompt, completion = run_cfg.get("max_prompt_length"), run_cfg.get("max_completion_length", 512)
    if prompt is not None:
        args += ["--max_model_len", str(int(prompt) + int(completion))]
    limits = {k: int(v) for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    if limits:
        args += ["--mm-processor-kwargs", json.dumps(limits, sort_keys=True)]
    args += ["--limit-mm-per-prompt", json.dumps({"image": 1}), "--generation-config", "vllm", "--seed", str(seed)]
    return args


def job_resources(run_cfg: Mapping) -> dict:
    """What the training job asks the scheduler for, from the run's ``resources`` (``gpus`` is per node)."""
    res = run_cfg.get("resources") or {}
    gpus, nodes = int(res.get("gpus", 0) or 0), int(res.get("nodes", 1) or 1)
    cpus_per_gpu = int(res.get("cpus_per_gpu", 1) or 1)
    # On CPU `cpus_per_gpu` is the job's cores, at least one per training process.
    cpu_threads = max(cpus_per_gpu, training_processes(run_cfg))
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
        # Only training saves on the warning signal, so only training asks for it; a job shorter than the lead
        # would be told to stop as it starts (config.check_run refuses such runs).
        "slurm_extra": f"--signal=TERM@{stop_signal_lead(run_cfg)}",
        "threads": gpus * cpus_per_gpu if gpus else cpu_threads,
    }


def log_from_main_process_only(process_index: int, num_processes: int) -> None:
    """In a multi-process run, keep the log to rank 0's progress: the other ranks write only their warnings and
    errors, marked with their rank (every rank appends to the same log file)."""
    import logging

    if num_processes <= 1 or process_index == 0:
        return
    from spatialreasoner.utils import LOG_FORMAT, RedactingFormatter

    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    for handler in root.handlers:
        # Libraries set their own loggers' levels (transformers' `set_verbosity_info`): filter at the handlers.
        handler.setLevel(logging.WARNING)
        handler.setFormatter(RedactingFormatter(f"[rank {process_index}] {LOG_FORMAT}"))
