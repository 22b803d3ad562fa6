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


LAUNCHER_ENV = [
    "PET_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2",
    "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=540",
]


def test_one_node_of_gpus_uses_accelerate_with_zero3():
    argv = shlex.split(train_command("r", run_cfg(gpus=4), **PATHS))
    assert argv[:2] == LAUNCHER_ENV
    assert argv[2:12] == [
        "accelerate", "launch", "--config_file", "workflow/accelerate/zero3.yaml", "--num_processes", "4",
        "--mixed_precision", "bf16", "--main_process_port", "0",
    ]  # fmt: skip
    assert argv[12:15] == ["-m", "spatialreasoner.cli", "--log"]
    fp32 = shlex.split(train_command("r", {**run_cfg(gpus=4), "precision": "fp32"}, **PATHS))
    assert fp32[fp32.index("--mixed_precision") + 1] == "no"


def test_cpu_processes_go_through_the_same_launcher_with_gloo():
    cfg = {**run_cfg(cpus_per_gpu=1), "num_processes": 2, "shutdown_timeout": 90}
    assert training_processes(cfg) == 2 and training_processes(run_cfg()) == 1
    argv = shlex.split(train_command("r", cfg, **PATHS))
    assert argv[:3] == [LAUNCHER_ENV[0], "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=90", "OMP_NUM_THREADS=1"]
    assert argv[3:11] == [
        "accelerate", "launch", "--config_file", "workflow/accelerate/cpu.yaml", "--num_processes", "2",
        "--main_process_port", "0",
    ]  # fmt: skip
    assert argv[11:14] == ["-m", "spatialreasoner.cli", "--log"] and "--mixed_precision" not in argv
    # Two processes take two cores of the job; four cores give each process two threads.
    assert job_resources(cfg)["threads"] == 2
    four = {**run_cfg(cpus_per_gpu=4), "num_processes": 2}
    assert "OMP_NUM_THREADS=2" in shlex.split(train_command("r", four, **PATHS)) and job_resources(four)["threads"] == 4


def test_vllm_server_takes_the_last_gpu_and_three_train():
    cfg = {**run_cfg(gpus=4), "vllm": {"mode": "server", "server_gpus": 1, "gpu_memory_utilization": 0.6}}
    assert training_processes(cfg) == 3
    cmd = train_command("r", cfg, **PATHS)
    free, rest = cmd.split("; ", 1)
    assert free == f"python -m spatialreasoner.train.lock {PATHS['checkpoint_dir']} --log {PATHS['log']} || exit 2"
    assert rest.startswith("CUDA_VISIBLE_DEVICES=3 trl vllm-serve --model resources/models/base")
    assert f'trap "kill $server" EXIT; CUDA_VISIBLE_DEVICES=0,1,2 {" ".join(LAUNCHER_ENV)} accelerate launch' in cmd
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
                   "cpus_per_gpu": 8, "nodes": 1, "mem_mb": 480000, "runtime": 4320, "threads": 32,
                   "slurm_extra": "--signal=TERM@600"}  # fmt: skip
    cpu = job_resources({"resources": {"gpus": 0, "cpus_per_gpu": 2, "mem_mb": 4000, "runtime": 30}})
    assert (cpu["gpu"], cpu["cpus_per_gpu"], cpu["threads"]) == (0, 0, 2)
    multi = job_resources({"resources": {"gpus": 4, "nodes": 2}})
    # Per-node GPUs as GRES and one task per node, so the rule's own srun starts one launcher per node.
    assert (multi["gpu"], multi["gres"], multi["mpi"], multi["tasks"], multi["nodes"]) == (None, "gpu:4", "srun", 2, 2)
    assert job_resources({"resources": {"gpus": 4, "nodes": 2, "gpu_model": "h100"}})["gres"] == "gpu:h100:4"


def accelerate_view(command: str):
    """What accelerate makes of a composed training command: its own parser reads the launch arguments and the config
    file, and its DeepSpeed launcher's environment (what the processes' DeepSpeedPlugin is built from)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.environment import patch_environment
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    argv = shlex.split(command)
    argv = argv[argv.index("launch") + 1 :]
    args, defaults, mp_from_config = _validate_launch_command(launch_command_parser().parse_args(argv))
    if not args.use_deepspeed:
        return args, {}, None
    fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(args)
    env = {k: v for k, v in env.items() if k.startswith("ACCELERATE_")}
    with patch_environment(**env):
        plugin = DeepSpeedPlugin()
    return args, env, plugin


def test_gpu_jobs_accelerate_and_deepspeed_settings_agree_with_the_run(repo_root, monkeypatch, tmp_path):
    import yaml

    from spatialreasoner.config import load_schema, validate_config
    from spatialreasoner.train import common
    from spatialreasoner.train.common import resolve_run_config, training_kwargs

    config = yaml.safe_load((repo_root / "config/config.yaml").read_text())
    validate_config(config, load_schema(repo_root / "workflow/schemas/config.schema.yaml"))
    monkeypatch.chdir(repo_root)
    monkeypatch.setattr(common, "on_gpu", lambda: True)  # the job's view: GPUs present
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path))
    runs = {**config["runs"], "fp32": {**config["runs"]["SpatialReasoner-SFT"], "precision": "fp32"}}
    for name, run in runs.items():
        cfg = resolve_run_config(run)
        args, env, plugin = accelerate_view(train_command(name, run, **PATHS))
        kwargs = training_kwargs(cfg, tmp_path, 100, 0, name)
        assert args.use_deepspeed and args.zero_stage == 3, name
        assert args.num_processes == training_processes(run) * run["resources"]["nodes"], name
        # Mixed precision: accelerate's (from the command) and the Trainer's (from the run) are the same.
        assert env["ACCELERATE_MIXED_PRECISION"] == ("bf16" if kwargs["bf16"] else "no"), name
        assert kwargs["bf16"] == (cfg["precision"] != "fp32"), name
        # Micro-batch and accumulation: the DeepSpeed config leaves them to the Trainer ("auto"), which fills them
        # from the run's values; a number in the file would have to be the run's.
        ds = plugin.deepspeed_config
        for key, value in (
            ("train_micro_batch_size_per_gpu", cfg["per_device_train_batch_size"]),
            ("gradient_accumulation_steps", cfg["gradient_accumulation_steps"]),
        ):
            assert ds[key] in ("auto", value), (name, key, ds[key])
        assert kwargs["per_device_train_batch_size"] == cfg["per_device_train_batch_size"]
        assert kwargs["gradient_accumulation_steps"] == cfg["gradient_accumulation_steps"]
        assert ds["zero_optimization"]["stage"] == 3
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_cpu_config_makes_accelerate_start_torchrun_processes(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    cfg = {**run_cfg(cpus_per_gpu=2), "num_processes": 2}
    args, _, _ = accelerate_view(train_command("r", cfg, **PATHS))
    # MULTI_GPU is what makes accelerate use torch's elastic launcher; the processes then choose gloo on the CPU.
    assert args.multi_gpu and not args.cpu and not args.use_deepspeed
    assert (args.num_processes, args.num_machines, args.main_process_port, args.mixed_precision) == (2, 1, 0, "no")
    assert args.use_cpu


def test_only_training_asks_for_the_stop_warning_and_in_time_for_its_save():
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    default = job_resources({"resources": {"gpus": 4, "runtime": 4320}})
    # The launcher's grace period (540 s by default) plus a minute for the step in progress.
    assert default["slurm_extra"] == "--signal=TERM@600"
    assert job_resources({"shutdown_timeout": 1200, "resources": {"gpus": 4}})["slurm_extra"] == "--signal=TERM@1260"
    # An option the SLURM plugin accepts in slurm_extra (it refuses those it sets itself, e.g. --gpus).
    validate_slurm_extra(SimpleNamespace(resources=SimpleNamespace(slurm_extra=default["slurm_extra"])))
