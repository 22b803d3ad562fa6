"""The shell command of one training job: one CPU process, ``accelerate launch`` with N CPU processes (gloo) or on a
node's GPUs, or one ``accelerate launch`` per node through ``srun`` for multi-node runs (plus a vLLM server GPU).

Pure string composition (no torch import), so the workflow and the tests can build and inspect it; plus how the
launched processes share the job's log.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from pathlib import Path

#: Accelerate config files, relative to the workflow's root folder.
ACCELERATE_CONFIGS = {"gpu": "workflow/accelerate/zero3.yaml", "cpu": "workflow/accelerate/cpu.yaml"}
#: The only ZeRO stage the workflow's DeepSpeed path runs (the paper's; the one the tests train with).
ZERO_STAGE = 3
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
    config_file = accelerate_config_file(run_cfg)
    zero = uses_deepspeed(run_cfg)
    if gpus == 0:
        # CPU processes share the job's cores (torchrun would give each one thread without being told).
        cores = job_resources(run_cfg)["threads"]
        env["OMP_NUM_THREADS"] = str(max(1, cores // procs))
        if zero:
            # DeepSpeed's CPU accelerator (gloo, as no oneCCL is installed): the same ZeRO-3 code as on GPUs.
            env["DS_ACCELERATOR"] = "cpu"
    launch = [
        *(f"{k}={v}" for k, v in env.items()),
        "accelerate launch",
        f"--config_file {shlex.quote(config_file)}",
        f"--num_processes {procs * nodes}",
    ]
    if gpus or zero:
        # The run's precision, not the config file's bf16, so that accelerate and the Trainer agree (fp32 runs).
        launch.append(f"--mixed_precision {launcher_mixed_precision(run_cfg)}")
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
        # A second job on the same checkpoint folder stops before it starts a server on its GPUs.
        free = f"python -m spatialreasoner.train.lock {shlex.quote(checkpoint_dir)} --log {shlex.quote(log)} || exit 2"
        command = (
            f"{free}; {server} server=$!; {ready}; "
            f'trap "kill $server" EXIT; CUDA_VISIBLE_DEVICES={train_devices} {command}'
        )
    return command


def accelerate_config_file(run_cfg: Mapping) -> str:
    """The run's accelerate config file: ``accelerate_config`` when set, else ZeRO-3 on GPUs and DDP on CPU."""
    given = run_cfg.get("accelerate_config")
    if given:
        return str(given)
    gpus = int((run_cfg.get("resources") or {}).get("gpus", 0) or 0)
    return ACCELERATE_CONFIGS["gpu" if gpus else "cpu"]


def launcher_mixed_precision(run_cfg: Mapping) -> str:
    """accelerate's ``--mixed_precision`` for the run's ``precision``: fp32 -> no, bf16 -> bf16, auto -> bf16 on
    GPUs and no on CPU."""
    precision = run_cfg.get("precision", "auto")
    gpus = int((run_cfg.get("resources") or {}).get("gpus", 0) or 0)
    if precision in ("fp32", "float32") or (precision == "auto" and not gpus):
        return "no"
    return "bf16"


def read_accelerate_config(path: str | Path) -> dict:
    """An accelerate config file as a mapping; a missing or unreadable file is a ConfigError naming it."""
    import yaml

    from spatialreasoner.errors import ConfigError

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"accelerate config {path} cannot be read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"accelerate config {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"accelerate config {path} is not a mapping of accelerate settings")
    return data


def uses_deepspeed(run_cfg: Mapping) -> bool:
    """Whether the run's accelerate config runs DeepSpeed (the default GPU file does; a given file is read)."""
    given = run_cfg.get("accelerate_config")
    if not given:
        return bool(int((run_cfg.get("resources") or {}).get("gpus", 0) or 0))
    return read_accelerate_config(given).get("distributed_type") == "DEEPSPEED"


def zero_settings_of_file(path: str | Path) -> dict | None:
    """The DeepSpeed settings of an accelerate config file (None when it does not use DeepSpeed), in the shape
    :func:`check_zero_settings` takes."""
    data = read_accelerate_config(path)
    if data.get("distributed_type") != "DEEPSPEED":
        return None
    ds = data.get("deepspeed_config") or {}
    return {
        "zero_stage": ds.get("zero_stage"),
        "zero3_save_16bit_model": ds.get("zero3_save_16bit_model"),
        "mixed_precision": data.get("mixed_precision"),
        "deepspeed_config_file": ds.get("deepspeed_config_file"),
    }


def zero_settings_of_environment(environ: Mapping) -> dict | None:
    """The DeepSpeed settings ``accelerate launch`` handed the training process (None without DeepSpeed)."""
    if str(environ.get("ACCELERATE_USE_DEEPSPEED", "")).lower() != "true":
        return None
    stage = environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    save = environ.get("ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL")
    return {
        "zero_stage": int(stage) if stage and stage.isdigit() else stage,
        "zero3_save_16bit_model": None if save is None else save.lower() == "true",
        "mixed_precision": environ.get("ACCELERATE_MIXED_PRECISION"),
        "deepspeed_config_file": environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or None,
    }


def check_zero_settings(
    where: str, settings: Mapping, run_cfg: Mapping, processes: int | None = None, launched: bool = False
) -> None:
    """Refuse DeepSpeed settings the run cannot use, naming ``where`` (a file or the launcher's environment) and
    the key: a ZeRO stage other than 3, checkpoints without consolidated 16-bit weights (the final model is made from
    them), fp16 (no run precision trains in it), a launcher precision other than the run's (``launched``: settings
    read from a running job), and a DeepSpeed file whose ``train_batch_size`` is not the run's global batch."""
    import json as _json

    from spatialreasoner.errors import ConfigError

    stage = settings.get("zero_stage")
    if stage != ZERO_STAGE and str(stage) != str(ZERO_STAGE):
        raise ConfigError(
            f"{where}: deepspeed_config.zero_stage is {stage!r}; the workflow's DeepSpeed path runs ZeRO stage "
            f"{ZERO_STAGE} only (the paper's; stages 0-2 are not tested here); expected zero_stage: {ZERO_STAGE}, "
            "or a config without DeepSpeed"
        )
    if settings.get("zero3_save_16bit_model") is not True:
        raise ConfigError(
            f"{where}: deepspeed_config.zero3_save_16bit_model is {settings.get('zero3_save_16bit_model')!r}; "
            "without it ZeRO-3 checkpoints hold only the per-process shards and no model.safetensors, so neither "
            "the final model nor the evaluation of checkpoints can be made; expected zero3_save_16bit_model: true"
        )
    precision = settings.get("mixed_precision")
    if precision == "fp16":
        raise ConfigError(
            f"{where}: mixed_precision is fp16, which no run trains in (runs.<run>.precision is auto, bf16 or fp32); "
            "expected bf16 or no"
        )
    if launched and precision != launcher_mixed_precision(run_cfg):
        # The Trainer's precision comes from the run; DeepSpeed's from the launcher: both must agree.
        raise ConfigError(
            f"{where}: mixed_precision is {precision!r} but runs.<run>.precision {run_cfg.get('precision', 'auto')!r} "
            f"trains with {launcher_mixed_precision(run_cfg)!r}; expected --mixed_precision "
            f"{launcher_mixed_precision(run_cfg)} (the workflow's command passes it)"
        )
    ds_file = settings.get("deepspeed_config_file")
    if ds_file:
        try:
            ds = _json.loads(Path(ds_file).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{where}: deepspeed_config_file {ds_file} cannot be read as JSON: {exc}") from exc
        file_stage = (ds.get("zero_optimization") or {}).get("stage")
        if file_stage not in (None, "auto", ZERO_STAGE):
            raise ConfigError(
                f"{ds_file}: zero_optimization.stage is {file_stage!r}; expected {ZERO_STAGE} (the workflow's "
                "DeepSpeed path runs ZeRO-3 only)"
            )
        check_global_batch(str(ds_file), ds.get("train_batch_size"), run_cfg, processes)


def check_global_batch(where: str, global_batch, run_cfg: Mapping, processes: int | None = None) -> None:
    """A DeepSpeed ``train_batch_size`` (the global batch) must be the processes' share of it times their number:
    per_device_train_batch_size x processes x gradient_accumulation_steps."""
    from spatialreasoner.errors import ConfigError

    if global_batch in (None, "auto"):
        return
    procs = int(processes or training_processes(run_cfg))
    per_device = int(run_cfg.get("per_device_train_batch_size", 1))
    accum = int(run_cfg.get("gradient_accumulation_steps", 1))
    if not isinstance(global_batch, int) or global_batch % procs:
        raise ConfigError(
            f"{where}: train_batch_size {global_batch!r} cannot be split over {procs} processes (num_processes does "
            f'not divide the global batch); expected a multiple of {procs}, or "auto"'
        )
    if global_batch != per_device * procs * accum:
        raise ConfigError(
            f"{where}: train_batch_size {global_batch} is not per_device_train_batch_size x processes x "
            f"gradient_accumulation_steps = {per_device} x {procs} x {accum} = {per_device * procs * accum}; expected "
            '"auto" (the workflow fills it in) or that product'
        )


def check_run_accelerate_config(run_name: str, run_cfg: Mapping) -> None:
    """The run's own ``accelerate_config`` (a path relative to the workflow's folder), checked before any job."""
    given = run_cfg.get("accelerate_config")
    if not given:
        return
    from spatialreasoner.errors import ConfigError

    if not Path(given).is_file():
        raise ConfigError(
            f"config key runs.{run_name}.accelerate_config: {given} is not a file (paths are relative to the "
            f"workflow's folder; the workflow has {', '.join(sorted(set(ACCELERATE_CONFIGS.values())))})"
        )
    settings = zero_settings_of_file(given)
    if settings is not None:
        check_zero_settings(f"config key runs.{run_name}.accelerate_config ({given})", settings, run_cfg)


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
