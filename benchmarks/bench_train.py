"""Training on the demo: per-step time and peak memory of SFT and GRPO, and format/accuracy rewards before and after.

Usage: python benchmarks/bench_train.py [--config config/demo.yaml] [--sft-table T --rl-table T --init DIR]
Without tables it synthesises the demo data (SynthSpatial) and builds the tiny model in a temporary folder; the runs
use the demo config's `runs` (SpatialReasoner-SFT, then SpatialReasoner from it), each in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def sh(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "spatialreasoner.cli", *args], check=True, stdout=subprocess.DEVNULL)


def prepare(tmp: Path, seed: int) -> tuple[Path, Path, Path]:
    """Synthesize, extract and canonicalise the demo data; build the tiny model."""
    sh("synthesize", "--out", str(tmp / "syn"), "--config", json.dumps({"seed": 0}))
    for name in ("openimages", "llava"):
        sh("extract", "--tar", str(tmp / "syn" / f"{name}.tar"), "--out", str(tmp / "images" / name))
    roots = {"openimages": tmp / "images/openimages/openimages", "llava": tmp / "images/llava/llava"}
    sh("canonicalize", "--kind", "sft", "--annotations", str(tmp / "syn/SpatialReasonerTrain-SFT"), "--split", "train",
       "--images", f"image_filename={roots['openimages']}", f"image_path={roots['llava']}", "--out", str(tmp / "sft.parquet"))  # fmt: skip
    sh("canonicalize", "--kind", "rl", "--annotations", str(tmp / "syn/SpatialReasonerTrain-RL"), "--split", "train",
       "--images", f"image_filename={roots['openimages']}", "--out", str(tmp / "rl.parquet"))  # fmt: skip
    sh("build-tiny-model", "--out", str(tmp / "tiny"), "--seed", str(seed))
    return tmp / "sft.parquet", tmp / "rl.parquet", tmp / "tiny"


def train_measured(run: str, cfg: dict, init: Path, data: Path, tmp: Path, config: dict) -> dict:
    """Run `spatialreasoner train` as a child process; its wall time, peak RSS and trainer state."""
    out, work = tmp / "models" / run, tmp / "checkpoints" / run
    vision = config.get("vision", {})
    cmd = [
        sys.executable, "-m", "spatialreasoner.cli", "train", "--run-name", run, "--run-config", json.dumps(cfg),
        "--init", str(init), "--data", str(data), "--workdir", str(work), "--out", str(out),
        "--prompts", json.dumps(config.get("prompts", {})), "--seed", str(config.get("seed", 42)),
    ]  # fmt: skip
    if vision.get("min_pixels"):
        cmd += ["--min-pixels", str(vision["min_pixels"]), "--max-pixels", str(vision["max_pixels"])]
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=(tmp / f"{run}.log").open("w"))
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"{run} failed:\n" + "\n".join((tmp / f"{run}.log").read_text().splitlines()[-30:]))
    state = json.loads((out / "trainer_state.json").read_text())
    steps = state["global_step"]
    # The loop's own time (without imports and model loading), as `spatialreasoner train` logs it.
    found = re.search(r"training stopped at step \d+ after ([\d.]+) s", (tmp / f"{run}.log").read_text())
    train_runtime = float(found.group(1))
    return {
        "out": out,
        "steps": steps,
        "wall_s": time.time() - started,
        "s_per_step": train_runtime / steps,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "state": state,
    }


def rewards_of(model_dir: Path, table: Path, rows: int, system: str | None, max_new_tokens: int) -> dict:
    """Mean format and accuracy rewards of greedy answers to the first ``rows`` rows of an RL table."""
    import pandas as pd

    from spatialreasoner.modeling import load_model, load_processor
    from spatialreasoner.train.common import load_rgb
    from spatialreasoner.train.grpo import question_text
    from spatialreasoner.train.rewards import accuracy_reward, format_reward

    model, processor = load_model(model_dir), load_processor(model_dir)
    df = pd.read_parquet(table).head(rows)
    completions = []
    for row in df.to_dict("records"):
        user = {"role": "user", "content": [{"type": "image", "image": load_rgb(row["image"])},
                                            {"type": "text", "text": question_text(row)}]}  # fmt: skip
        msgs = ([{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []) + [user]
        inputs = processor.apply_chat_template(
            msgs, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        completions.append(processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    cols = {c: df[c].tolist() for c in ("answer", "A", "B", "C", "D") if c in df}
    fmt = format_reward(completions)
    acc = accuracy_reward(completions, **cols)
    return {"format": sum(fmt) / len(fmt), "accuracy": sum(acc) / len(acc), "example": completions[0][:200]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "config/demo.yaml"))
    parser.add_argument("--sft-table", type=Path)
    parser.add_argument("--rl-table", type=Path)
    parser.add_argument("--init", type=Path, help="base model folder (default: build the tiny model)")
    parser.add_argument("--eval-rows", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = yaml.safe_load(Path(args.config).read_text())
    runs = config["runs"]
    system = config.get("prompts", {}).get("system")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.sft_table and args.rl_table and args.init:
            sft_table, rl_table, init = args.sft_table, args.rl_table, args.init
        else:
            sft_table, rl_table, init = prepare(tmp, 0)
        if system is None:
            from spatialreasoner.config import load_schema  # the schema's default system prompt

            schema = load_schema(ROOT / "workflow/schemas/config.schema.yaml")
            system = schema["properties"]["prompts"]["properties"]["system"]["default"]
            config.setdefault("prompts", {})["system"] = system
        rows = [("base (no system prompt)", rewards_of(init, rl_table, args.eval_rows, None, args.max_new_tokens))]
        sft = train_measured("SpatialReasoner-SFT", runs["SpatialReasoner-SFT"], init, sft_table, tmp, config)
        rows.append(("after SFT (no system prompt)", rewards_of(sft["out"], rl_table, args.eval_rows, None, args.max_new_tokens)))  # fmt: skip
        rows.append(("after SFT (system prompt)", rewards_of(sft["out"], rl_table, args.eval_rows, system, args.max_new_tokens)))  # fmt: skip
        grpo = train_measured("SpatialReasoner", runs["SpatialReasoner"], sft["out"], rl_table, tmp, config)
        rows.append(("after SFT+GRPO (system prompt)", rewards_of(grpo["out"], rl_table, args.eval_rows, system, args.max_new_tokens)))  # fmt: skip

        print(f"\nTraining on the demo ({args.config}), CPU, {os.cpu_count()} cores")
        print(f"{'stage':<8} {'steps':>5} {'s/step':>8} {'peak RSS MB':>12} {'wall s':>8}")
        for name, r in (("SFT", sft), ("GRPO", grpo)):
            print(f"{name:<8} {r['steps']:>5} {r['s_per_step']:>8.3f} {r['peak_rss_mb']:>12.0f} {r['wall_s']:>8.1f}")
        losses = [h["loss"] for h in sft["state"]["log_history"] if "loss" in h]
        print(f"SFT loss: first {losses[0]:.3f} -> last {losses[-1]:.3f}")
        grpo_logs = [h for h in grpo["state"]["log_history"] if "reward" in h]
        for key in ("rewards/format_reward/mean", "rewards/accuracy_reward/mean"):
            vals = [h[key] for h in grpo_logs if key in h]
            if vals:
                print(f"GRPO {key}: first step {vals[0]:.3f}, last step {vals[-1]:.3f}")
        print(f"\nGreedy answers on the first {args.eval_rows} RL rows (max {args.max_new_tokens} new tokens)")
        print(f"{'model':<32} {'format':>7} {'accuracy':>9}")
        for name, r in rows:
            print(f"{name:<32} {r['format']:>7.3f} {r['accuracy']:>9.3f}")
        print("\nexample answer after SFT:", repr(rows[1][1]["example"]))


if __name__ == "__main__":
    main()
