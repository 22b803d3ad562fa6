"""The canary's sensitivity: its accuracy after a small SFT, with and without each cut in the chain.

Trains the tiny model on the canary alone (``spatialreasoner.synth.canary``: paired pictures whose question text is
the same and whose answer the picture decides) with the project's own ``train`` and ``infer``, scores the replies with
the evaluation's matcher, and repeats it with one mutation at a time:

- ``blank-images``: the benchmark's pictures replaced by one grey picture at inference (images do not reach the model);
- ``shuffled-images``: every picture's pixels permuted at inference;
- ``shifted-labels``: SFT labels moved one token to the right (the model learns to predict the token after next);
- ``resume-without-weights``: the run stopped at half its steps and resumed with the checkpoint's optimizer, schedule
  and data position but not its weights (the initial model's instead);
- ``other-chat-template``: inference with a different chat template than training's.

Each should bring the canary to chance (50%; at most 60%). Usage (a training variant runs ``train`` once or twice;
the inference variants reuse the unmutated model):

    python benchmarks/bench_canary.py [--pairs 16] [--repeats 16] [--epochs 4] [--only baseline,blank-images]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path

MUTATIONS = (
    "blank-images",
    "shuffled-images",
    "shifted-labels",
    "resume-without-weights",
    "other-chat-template",
)
#: Mutations that change training (the others change inference of the unmutated model).
TRAINING_MUTATIONS = ("shifted-labels", "resume-without-weights")
IMAGE_SIZE = 112
#: SFT settings under which the tiny model memorises a few canary pairs in a few hundred steps on a CPU.
CANARY_SFT = {
    "stage": "sft",
    "learning_rate": 3.0e-3,
    "warmup_ratio": 0.05,
    "per_device_train_batch_size": 8,
    "gradient_checkpointing": False,
    "max_length": None,
    "report_to": [],
}
#: A chat template other than the model's: plain role headers instead of Qwen's <|im_start|> markers.
OTHER_TEMPLATE = (
    "{% for message in messages %}### {{ message['role'] }}:\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}\n{% endfor %}{% if add_generation_prompt %}### assistant:\n{% endif %}"
)


def write_canary(folder: Path, pairs: int, repeats: int, seed: int = 0) -> tuple[Path, Path]:
    """A canonical SFT table of the canary rows (each ``repeats`` times) and the canary benchmark TSV."""
    import base64

    import numpy as np
    import pandas as pd

    from spatialreasoner.synth.canary import canary_items
    from spatialreasoner.synth.render import encode_jpeg, render

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    sft, bench = [], []
    items = list(canary_items(IMAGE_SIZE, pairs, lambda i: np.random.default_rng([seed, 8, i])))
    for item in items:
        data = encode_jpeg(render(item.scene))
        (folder / "images" / item.image_name).write_bytes(data)
        q = item.question
        options = {"A": q.options[0], "B": q.options[1]}
        sft.append(
            {"kind": "qa", "image": f"images/{item.image_name}", "question": q.question, **options, "C": None,
             "D": None, "answer": q.answer_letter, "category": q.category, "answer_cot": q.answer_cot(),
             "conversations": None, "source_row": len(sft)}
        )  # fmt: skip
        bench.append(
            {"index": len(bench), "question": q.question, **options, "answer": q.answer_letter,
             "category": q.category, "image": base64.b64encode(data).decode("ascii")}
        )  # fmt: skip
    table, tsv = folder / "canary_sft.parquet", folder / "Canary.tsv"
    pd.DataFrame(sft * repeats).to_parquet(table)
    pd.DataFrame(bench).to_csv(tsv, sep="\t", index=False)
    return table, tsv


def mutate_images(tsv: Path, out: Path, how: str, seed: int = 0) -> Path:
    """A copy of the benchmark whose pictures are one grey picture (``blank``) or pixel-shuffled (``shuffled``)."""
    import base64
    import io

    import numpy as np
    import pandas as pd
    from PIL import Image

    df = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    rng = np.random.default_rng(seed)
    cells = []
    for cell in df["image"]:
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(cell))).convert("RGB"))
        if how == "blank":
            pixels = np.full_like(pixels, 128)
        else:
            flat = pixels.reshape(-1, 3)
            pixels = flat[rng.permutation(len(flat))].reshape(pixels.shape)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        cells.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    df["image"] = cells
    df.to_csv(out, sep="\t", index=False)
    return out


def with_chat_template(model: Path, out: Path, template: str) -> Path:
    """A copy of a model folder whose chat template is ``template``."""
    shutil.copytree(model, out)
    for name in ("chat_template.jinja", "chat_template.json"):
        (out / name).unlink(missing_ok=True)
    (out / "chat_template.jinja").write_text(template)
    return out


@contextlib.contextmanager
def shifted_labels():
    """SFT labels moved one token to the right while the context is open (an off-by-one in the collator)."""
    import torch

    from spatialreasoner.train import sft

    original = sft.SpatialVisionCollator.torch_call

    def torch_call(self, examples):
        out = original(self, examples)
        labels = out["labels"]
        out["labels"] = torch.cat([torch.full_like(labels[:, :1], -100), labels[:, :-1]], dim=1)
        return out

    sft.SpatialVisionCollator.torch_call = torch_call
    try:
        yield
    finally:
        sft.SpatialVisionCollator.torch_call = original


@contextlib.contextmanager
def resume_without_weights():
    """Resuming restores optimizer, schedule and data position but leaves the weights as loaded (the init's)."""
    from spatialreasoner.train import resume

    original = resume.load_checkpoint_weights
    resume.load_checkpoint_weights = lambda model, checkpoint: None
    try:
        yield
    finally:
        resume.load_checkpoint_weights = original


def canary_accuracy(model: Path, tsv: Path, out: Path, batch_size: int = 16) -> dict:
    """Greedy inference with the project's ``infer`` and the evaluation's matcher: accuracy (%) and counts."""
    import pandas as pd

    from spatialreasoner.evaluate.infer import run_inference
    from spatialreasoner.evaluate.score import extract_letters

    run_inference(model, tsv, out, max_new_tokens=96, batch_size=batch_size)
    pred = pd.read_parquet(out)
    bench = pd.read_csv(tsv, sep="\t", usecols=lambda c: c != "image", dtype=str, keep_default_na=False)
    df = bench.merge(pred[["index", "prediction"]].astype({"index": str}), on="index")
    letters = extract_letters(df)
    hits = sum(letter == answer for letter, answer in zip(letters, df["answer"], strict=True))
    unmatched = sum(not letter for letter in letters)
    return {"accuracy": 100.0 * hits / len(df), "rows": len(df), "unmatched": unmatched}


def train_canary(
    model: Path, table: Path, work: Path, epochs: int, mutation: str | None, seed: int = 0, lr: float | None = None
) -> Path:
    """SFT of ``model`` on the canary table with the project's ``train``; returns the final model folder."""
    import pyarrow.parquet as pq

    from spatialreasoner.train.main import train

    rows = pq.ParquetFile(table).metadata.num_rows
    steps = epochs * -(-rows // CANARY_SFT["per_device_train_batch_size"])
    cfg = {**CANARY_SFT, "num_train_epochs": epochs, "save_steps": max(1, steps // 2), "stop_steps": steps}
    if lr is not None:
        cfg["learning_rate"] = lr
    if mutation == "resume-without-weights":
        # stop at half the schedule, then resume (a rerun of the same job) with the weights not restored
        train("canary", {**cfg, "stop_steps": steps // 2}, model, table, work / "ckpt", work / "half", seed=seed)
        with resume_without_weights():
            return train("canary", cfg, model, table, work / "ckpt", work / "model", seed=seed)
    context = shifted_labels() if mutation == "shifted-labels" else contextlib.nullcontext()
    with context:
        return train("canary", cfg, model, table, work / "ckpt", work / "model", seed=seed)


def run_variant(
    mutation: str | None, base: Path, table: Path, tsv: Path, root: Path, epochs: int, lr: float | None = None
) -> dict:
    """Train (or reuse the unmutated model) and score one variant."""
    work = root / (mutation or "baseline")
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if mutation in TRAINING_MUTATIONS:
        model = train_canary(base, table, work, epochs, mutation, lr=lr)
    elif (root / "baseline" / "model").is_dir():
        model = root / "baseline" / "model"
    else:
        model = train_canary(base, table, root / "baseline", epochs, None, lr=lr)
    bench = tsv
    if mutation in ("blank-images", "shuffled-images"):
        bench = mutate_images(tsv, work / "Canary.tsv", mutation.split("-")[0])
    if mutation == "other-chat-template":
        model = with_chat_template(model, work / "other-template-model", OTHER_TEMPLATE)
    result = canary_accuracy(model, bench, work / "predictions.parquet")
    return result | {"seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=16, help="canary pairs (two pictures each)")
    parser.add_argument("--repeats", type=int, default=16, help="times each canary row appears in the SFT table")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=CANARY_SFT["learning_rate"])
    parser.add_argument("--only", default="", help="comma-separated variants (baseline and mutations); default all")
    parser.add_argument("--keep", default=None, help="folder to keep the work in (default: a temporary one)")
    args = parser.parse_args()

    import torch

    from spatialreasoner.tiny_model import build_tiny_model

    variants = ["baseline", *MUTATIONS]
    if args.only:
        variants = [v for v in args.only.split(",") if v]
        unknown = set(variants) - {"baseline", *MUTATIONS}
        if unknown:
            parser.error(f"--only: unknown variants {sorted(unknown)}; known: baseline, {', '.join(MUTATIONS)}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        base = build_tiny_model(root / "tiny-model", seed=0)
        table, tsv = write_canary(root / "data", args.pairs, args.repeats)
        print(
            f"canary: {args.pairs} pairs ({2 * args.pairs} rows, chance 50%), each row {args.repeats}x in the SFT "
            f"table, {args.epochs} epochs at lr {args.lr}; threads {torch.get_num_threads()}"
        )
        results = {}
        for variant in variants:
            mutation = None if variant == "baseline" else variant
            results[variant] = run_variant(mutation, base, table, tsv, root, args.epochs, args.lr)
            r = results[variant]
            print(
                f"{variant:24s} canary accuracy {r['accuracy']:5.1f}% of {r['rows']} rows "
                f"({r['unmatched']} without an answer; {r['seconds']:.0f} s)",
                flush=True,
            )
        print(json.dumps(results))


if __name__ == "__main__":
    main()
