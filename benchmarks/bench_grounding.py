"""How much of the SFT targets' image-dependent content a tiny model learns: a probe of the demo's SFT.

Trains a copy of a tiny model on an SFT table (the project's dataset builder and collator, plain AdamW with warm-up and
cosine decay) and, at intervals, scores held-out rows with teacher forcing: the share of tokens predicted exactly, per
kind, in every ``The 3D location of the <colour> <shape> is (x, y, z)`` line of the reasoning and the ``<answer>``
letter. Each kind is printed next to its majority baseline (the most frequent value among the training targets).

- colour, shape: copying the question's objects into the reasoning (text only);
- x, y, z: reading the object's 3D location from the picture (the only targets that need the image);
- answer: the letter, given the gold reasoning before it (text only).

Usage, after the demo's data stage (``snakemake --configfile config/demo.yaml results/data/sft.parquet
resources/models/tiny-Qwen2.5-VL``):

    python benchmarks/bench_grounding.py [--table results/data/sft.parquet] [--model resources/models/tiny-Qwen2.5-VL]
        [--steps 1200] [--lr 1e-2] [--batch 8] [--held-out 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import re
import time
from collections import Counter
from pathlib import Path

LOCATION = re.compile(
    r"The 3D location of the (\w+) (\w+) is \((-?\d+(?:\.\d+)?), (-?\d+(?:\.\d+)?), (-?\d+(?:\.\d+)?)\)"
)
KINDS = ("colour", "shape", "x", "y", "z")
ANSWER = re.compile(r"<answer>([A-D])")


def split_rows(dataset, held_out: int) -> tuple[list[int], list[int]]:
    """Train and held-out row indices; the boundary moves forward so that no image is in both."""
    n = len(dataset)
    cut = max(1, n - held_out)
    while cut < n and dataset[cut]["images"] == dataset[cut - 1]["images"]:
        cut += 1
    return list(range(cut)), list(range(cut, n))


def targets(text: str) -> list[tuple[str, int, int, str]]:
    """(kind, start, end, value) of every probed target in an assistant reply (character offsets)."""
    out = []
    for m in LOCATION.finditer(text):
        for group, kind in enumerate(KINDS, start=1):
            out.append((kind, m.start(group), m.end(group), m.group(group)))
    m = ANSWER.search(text)
    if m:
        out.append(("answer", m.start(1), m.end(1), m.group(1)))
    return out


def assistant_text(example) -> str:
    return "".join(part["text"] for msg in example["messages"] if msg["role"] == "assistant" for part in msg["content"])


def majority_baselines(dataset, rows: list[int], held: list[int]) -> dict[str, float]:
    """Accuracy on the held-out targets of always predicting the training targets' most frequent value."""
    train_counts: dict[str, Counter] = {}
    for i in rows:
        for kind, _, _, value in targets(assistant_text(dataset[i])):
            train_counts.setdefault(kind, Counter())[value] += 1
    hits: Counter = Counter()
    total: Counter = Counter()
    for i in held:
        for kind, _, _, value in targets(assistant_text(dataset[i])):
            total[kind] += 1
            hits[kind] += value == train_counts.get(kind, Counter({"": 1})).most_common(1)[0][0]
    return {k: hits[k] / total[k] for k in total}


def probe(model, collator, tokenizer, dataset, held: list[int], batch: int = 16) -> dict[str, tuple[int, int]]:
    """Teacher-forced hits per kind: a value is a hit when every token overlapping its characters is predicted."""
    import torch

    hits: Counter = Counter()
    total: Counter = Counter()
    start_tag = "<|im_start|>assistant\n"
    model.eval()
    with torch.no_grad():
        for k in range(0, len(held), batch):
            examples = [dataset[i] for i in held[k : k + batch]]
            inputs = collator(examples)
            logits = model(**{key: v for key, v in inputs.items() if key != "labels"}).logits
            predicted = logits[:, :-1].argmax(-1)
            for r in range(len(examples)):
                ids = inputs["input_ids"][r].tolist()
                pieces = [tokenizer.decode([t]) for t in ids]
                offsets, pos = [], 0
                for piece in pieces:
                    offsets.append(pos)
                    pos += len(piece)
                text = "".join(pieces)
                begin = text.find(start_tag)
                if begin < 0:
                    continue
                begin += len(start_tag)
                ends = offsets[1:] + [len(text)]
                for kind, first, last, _ in targets(text[begin:]):
                    first, last = begin + first, begin + last
                    tokens = [i for i in range(1, len(ids)) if offsets[i] < last and ends[i] > first]
                    total[kind] += 1
                    hits[kind] += all(int(predicted[r, i - 1]) == ids[i] for i in tokens)
    model.train()
    return {kind: (hits[kind], total[kind]) for kind in total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", default="results/data/sft.parquet", help="canonical SFT table")
    parser.add_argument("--model", default="resources/models/tiny-Qwen2.5-VL", help="tiny model folder (not changed)")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--held-out", type=int, default=300, help="rows at the table's end kept for the probe")
    parser.add_argument("--reports", type=int, default=4, help="how many times to probe during training")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from spatialreasoner.train.sft import IMAGE_TOKENS, SpatialVisionCollator, build_sft_dataset

    torch.manual_seed(args.seed)
    dataset = build_sft_dataset(Path(args.table))
    rows, held = split_rows(dataset, args.held_out)
    processor = AutoProcessor.from_pretrained(args.model)
    tokenizer = processor.tokenizer
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.float32)
    masked = tuple(tokenizer.convert_tokens_to_ids(t) for t in IMAGE_TOKENS if t in tokenizer.get_vocab())
    collator = SpatialVisionCollator(
        processor=processor,
        max_length=None,
        completion_only_loss=False,
        assistant_only_loss=True,
        masked_token_ids=masked,
    )
    baseline = majority_baselines(dataset, rows, held)
    print(f"table {args.table}: {len(rows)} training rows, {len(held)} held-out rows; model {args.model}")
    print(
        f"steps {args.steps}, batch {args.batch}, lr {args.lr} (5% warm-up, cosine), threads {torch.get_num_threads()}"
    )
    kinds = [k for k in (*KINDS, "answer") if k in baseline]
    print("majority baseline: " + "  ".join(f"{k} {baseline[k]:.3f}" for k in kinds))

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = max(1, args.steps // 20)

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / args.steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    generator = torch.Generator().manual_seed(args.seed)
    every = max(1, args.steps // max(1, args.reports))
    losses: list[float] = []
    start = time.time()
    for step in range(1, args.steps + 1):
        batch = [dataset[rows[i]] for i in torch.randint(len(rows), (args.batch,), generator=generator).tolist()]
        loss = model(**collator(batch)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if step % every == 0 or step == args.steps:
            found = probe(model, collator, tokenizer, dataset, held)
            recent = losses[-50:]
            figures = "  ".join(f"{k} {found[k][0] / found[k][1]:.3f}" for k in kinds if found.get(k, (0, 0))[1])
            print(f"step {step:5d}  loss {sum(recent) / len(recent):.3f}  {figures}  ({time.time() - start:.0f} s)")
    counts = probe(model, collator, tokenizer, dataset, held)
    print("held-out targets: " + "  ".join(f"{k} {counts[k][1]}" for k in kinds if k in counts))


if __name__ == "__main__":
    main()
