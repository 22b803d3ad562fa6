"""Token budget of a job, checked before it starts: each row's prompt or sequence length in tokens (its images'
tokens from the Qwen2.5-VL resize rule at the job's pixel limits, plus its text tokens) against the run's limits.

A prompt longer than the trainer's limit is the classic Qwen2.5-VL failure: truncation cuts image tokens and the
model stops with "Image features and image tokens do not match", after the job has waited for its GPUs and loaded
its weights. Image sizes come from the files' headers (PIL opens images lazily), so 48,000 rows take seconds.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from spatialreasoner.errors import DataError

log = logging.getLogger(__name__)

#: Rows an error message lists.
SHOWN_ROWS = 5
#: The placeholder the chat template writes for each image; the processor expands it to the image's tokens.
IMAGE_PAD = "<|image_pad|>"


@dataclass(frozen=True)
class VisionGrid:
    """How the image processor turns an image into tokens: ``patch_size`` pixel patches, merged
    ``merge_size`` x ``merge_size`` into one token, after resizing into ``[min_pixels, max_pixels]``."""

    patch_size: int
    merge_size: int
    min_pixels: int
    max_pixels: int

    @classmethod
    def from_processor(cls, processor) -> VisionGrid:
        ip = getattr(processor, "image_processor", processor)
        size = dict(getattr(ip, "size", None) or {})
        min_pixels = size.get("shortest_edge") or getattr(ip, "min_pixels", None)
        max_pixels = size.get("longest_edge") or getattr(ip, "max_pixels", None)
        if not (min_pixels and max_pixels):
            raise DataError(f"image processor {type(ip).__name__} states no pixel limits (size={size})")
        return cls(int(ip.patch_size), int(ip.merge_size), int(min_pixels), int(max_pixels))

    def tokens(self, width: int, height: int) -> int:
        """Image tokens of a ``width`` x ``height`` image: transformers' own resize rule, then one token per merged
        patch group."""
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        h, w = smart_resize(
            height, width, factor=self.patch_size * self.merge_size, min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
        )  # fmt: skip
        return (h // self.patch_size) * (w // self.patch_size) // (self.merge_size**2)


def image_size(source) -> tuple[int, int]:
    """(width, height) of an image file (a path) or of encoded image bytes, read from the header only."""
    from PIL import Image

    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        return im.size


def base64_image_size(cell: str) -> tuple[int, int]:
    """(width, height) of a base64-encoded image (a VLMEvalKit TSV cell)."""
    return image_size(base64.b64decode(cell, validate=False))


def model_context(model_dir: str | Path) -> int | None:
    """The longest sequence the model's positions allow (``max_position_embeddings`` of its text config)."""
    config_file = Path(model_dir) / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"model config {config_file} cannot be read: {exc}") from exc
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    value = text.get("max_position_embeddings") or config.get("max_position_embeddings")
    return int(value) if value else None


@dataclass
class Lengths:
    """Token counts of a job's rows: ``rows`` names each row in messages, ``image``/``text`` are its tokens."""

    rows: list[str]
    image: list[int]
    text: list[int]

    @property
    def total(self) -> list[int]:
        return [i + t for i, t in zip(self.image, self.text, strict=True)]

    def summary(self) -> dict:
        import numpy as np

        total = np.asarray(self.total)
        return {
            "rows": len(total),
            "min": int(total.min()),
            "median": float(np.median(total)),
            "max": int(total.max()),
            "image_tokens_max": int(max(self.image)),
        }

    def longest(self, n: int = SHOWN_ROWS) -> list[dict]:
        """The ``n`` longest rows, longest first: name and tokens (total, image, text)."""
        order = sorted(range(len(self.rows)), key=lambda k: -(self.image[k] + self.text[k]))[:n]
        return [{"row": self.rows[k], "tokens": self.image[k] + self.text[k], "image": self.image[k],
                 "text": self.text[k]} for k in order]  # fmt: skip

    def check(self, limit: int | None, what: str, extra: int = 0) -> None:
        """A DataError listing the rows whose length plus ``extra`` exceeds ``limit`` (``what`` names the limit)."""
        if limit is None:
            return
        over = [(r, i, t) for r, i, t in zip(self.rows, self.image, self.text, strict=True) if i + t + extra > limit]
        if not over:
            return
        over.sort(key=lambda x: -(x[1] + x[2]))
        shown = "; ".join(
            f"{r}: {i + t} tokens ({i} image + {t} text{f' + {extra} to generate' if extra else ''})"
            for r, i, t in over[:SHOWN_ROWS]
        )
        raise DataError(
            f"{len(over)} of {len(self.rows)} row(s) exceed {what} = {limit} tokens, longest first: {shown}. "
            "Raise the limit or lower the pixel limits (vision.max_pixels / evaluate.max_pixels) before the job runs"
        )


# Private-use characters around the number of a text block in a rendered skeleton.
_OPEN, _CLOSE = "\ue000", "\ue001"


def _texts_and_skeleton(messages: Sequence[dict]) -> tuple[list[str], list[dict], tuple]:
    """A conversation's text blocks, the same conversation with numbered sentinels in their place, and its shape."""
    texts, skeleton, shape = [], [], []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            skeleton.append({**m, "content": f"{_OPEN}{len(texts)}{_CLOSE}"})
            texts.append(content)
            shape.append((m.get("role"), "str"))
            continue
        blocks = []
        for b in content or []:
            if b.get("type") == "text":
                blocks.append({**b, "text": f"{_OPEN}{len(texts)}{_CLOSE}"})
                texts.append(b.get("text") or "")
            else:
                blocks.append(b)
        skeleton.append({**m, "content": blocks})
        shape.append((m.get("role"), tuple(b.get("type") for b in content or [])))
    return texts, skeleton, tuple(shape)


def render_chats(tokenizer, template, conversations: Sequence[list[dict]], add_generation_prompt: bool) -> list[str]:
    """Each conversation rendered by the chat template, as ``apply_chat_template(tokenize=False)`` renders it.

    The template runs once per conversation shape (roles and block types), with sentinels where the texts go; each
    row then fills in its texts. The first row of each shape is also rendered in full, and a template that does not
    copy texts verbatim (one that edits them) is rendered row by row instead.
    """

    def full(messages):
        return tokenizer.apply_chat_template(
            list(messages), chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    skeletons: dict[tuple, list[str] | None] = {}
    out = []
    for messages in conversations:
        texts, skeleton, shape = _texts_and_skeleton(messages)
        if shape not in skeletons:
            rendered = full(skeleton)
            pieces = rendered.replace(_CLOSE, _OPEN).split(_OPEN)
            numbers = pieces[1::2]
            ok = numbers == [str(i) for i in range(len(texts))]
            skeletons[shape] = pieces[0::2] if ok else None
            if ok and _fill(pieces[0::2], texts) != full(messages):
                skeletons[shape] = None
        literal = skeletons[shape]
        out.append(full(messages) if literal is None else _fill(literal, texts))
    return out


def _fill(literal: list[str], texts: list[str]) -> str:
    parts = [literal[0]]
    for text, after in zip(texts, literal[1:], strict=True):
        parts += [text, after]
    return "".join(parts)


def measure(
    processor,
    conversations: Sequence[list[dict]],
    images: Sequence[Sequence],
    rows: Sequence[str],
    *,
    add_generation_prompt: bool,
    chat_template: str | None = None,
    size_of: Callable[[object], tuple[int, int]] = image_size,
) -> Lengths:
    """Token counts of chat ``conversations`` (image blocks marking where each image goes) with ``images`` (per
    row, one source per image block, whose (width, height) ``size_of`` reads), rendered by the chat template.

    Counts every token the processor would produce: the rendered text tokenized (each image placeholder one token),
    then each placeholder replaced by its image's tokens. Image sizes are cached by source.
    """
    if not (len(conversations) == len(images) == len(rows)):
        raise ValueError("conversations, images and rows must have the same length")
    tokenizer = getattr(processor, "tokenizer", processor)
    template = chat_template or getattr(processor, "chat_template", None)
    grid = VisionGrid.from_processor(processor)
    texts = render_chats(tokenizer, template, conversations, add_generation_prompt)
    pad_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast") and not (backend.padding or backend.truncation):
        # The same ids as tokenizer(texts), without the character offsets nobody reads here; only while no padding
        # or truncation is left set on the backend by an earlier call (the tokenizer's own call resets them).
        ids = [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    else:
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    sizes: dict = {}
    image_tokens, text_tokens = [], []
    for row, row_ids, sources in zip(rows, ids, images, strict=True):
        placeholders = sum(1 for t in row_ids if t == pad_id)
        if placeholders != len(sources):
            raise DataError(f"{row}: {len(sources)} image(s) but {placeholders} image placeholder(s) in its prompt")
        n = 0
        for source in sources:
            if source not in sizes:
                try:
                    sizes[source] = grid.tokens(*size_of(source))
                except (OSError, ValueError, binascii.Error) as exc:
                    where = f" {source}" if isinstance(source, (str, os.PathLike)) and len(str(source)) < 500 else ""
                    raise DataError(f"{row}: image{where} cannot be read for its size: {exc}") from exc
            n += sizes[source]
        image_tokens.append(n)
        text_tokens.append(len(row_ids) - placeholders)
    return Lengths(list(rows), image_tokens, text_tokens)


def text_config(model_dir: str | Path) -> dict:
    """The language model's part of a model folder's ``config.json`` (``text_config``, or the config itself)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return {**config, **(config.get("text_config") or {})}


def batch_memory(tokens_per_row: int, batch_size: int, model_dir: str | Path) -> dict:
    """What a training batch of ``batch_size`` rows of ``tokens_per_row`` tokens implies for one device, beyond the
    weights and optimizer states: the logits in float32 (tokens x vocabulary x 4 bytes, what the loss reads) and one
    bfloat16 hidden state per layer (what activation checkpointing keeps). A lower bound for the batch's activations."""
    text = text_config(model_dir)
    tokens = tokens_per_row * batch_size
    logits = tokens * int(text["vocab_size"]) * 4
    hidden = tokens * int(text["hidden_size"]) * int(text["num_hidden_layers"]) * 2
    return {
        "tokens": tokens,
        "logits_gib": round(logits / 2**30, 2),
        "checkpointed_hidden_gib": round(hidden / 2**30, 2),
    }


def report_longest(lengths: Lengths, batch_size: int, model_dir: str | Path, what: str) -> dict:
    """Log the longest rows and the memory a batch of the longest row implies; returns both for the run record."""
    longest = lengths.longest()
    memory = batch_memory(longest[0]["tokens"], batch_size, model_dir)
    log.info("longest %s: %s", what, "; ".join(f"{r['row']}: {r['tokens']} tokens ({r['image']} image + "
                                               f"{r['text']} text)" for r in longest))  # fmt: skip
    log.info(
        "a batch of %d such rows (%d tokens) needs, per device and beyond weights and optimizer states, about "
        "%.2f GiB of float32 logits and %.2f GiB of checkpointed hidden states",
        batch_size, memory["tokens"], memory["logits_gib"], memory["checkpointed_hidden_gib"],
    )  # fmt: skip
    return {"longest": longest, "longest_batch_memory": memory}


def log_summary(lengths: Lengths, what: str) -> dict:
    s = lengths.summary()
    log.info(
        "token budget of %d %s: min %d, median %.0f, max %d tokens (up to %d image tokens)",
        s["rows"], what, s["min"], s["median"], s["max"], s["image_tokens_max"],
    )  # fmt: skip
    return s


# --- the stages' checks -----------------------------------------------------------------------------------------------


def check_training_budget(
    cfg: Mapping, table: str | Path, processor, model_dir: str | Path, prompts: Mapping | None = None
) -> dict:
    """Before training: every SFT sequence within ``max_length`` and the model's context, or every GRPO prompt
    within ``max_prompt_length`` and, with ``max_completion_length`` more, the context. Returns the summary."""
    from spatialreasoner.train.common import image_path, read_table

    table = Path(table)
    context = model_context(model_dir)
    df = read_table(table, required=("image",))
    records = df.to_dict("records")
    rows = [f"{table} row {r.get('source_row', i)}" for i, r in enumerate(records)]
    if cfg["stage"] == "sft":
        from spatialreasoner.train.sft import sft_example

        examples = [sft_example(r, table) for r in records]
        lengths = measure(
            processor, [e["messages"] for e in examples], [e["images"] for e in examples], rows,
            add_generation_prompt=False,
        )  # fmt: skip
        summary = log_summary(lengths, "SFT sequences")
        # Without max_length (the official SFT: nothing truncated) only a row beyond the model's context is refused.
        summary |= report_longest(lengths, int(cfg.get("per_device_train_batch_size") or 1), model_dir, "SFT sequences")
        lengths.check(cfg.get("max_length"), "runs.<run>.max_length")
        lengths.check(context, "the model's context (max_position_embeddings)")
        return summary

    from trl.data_utils import prepare_multimodal_messages

    from spatialreasoner.train.grpo import grpo_prompt, prompt_texts

    system, instruction = prompt_texts(cfg, prompts or {})
    conversations = [prepare_multimodal_messages(grpo_prompt(r, system, instruction), images=[None]) for r in records]
    lengths = measure(
        processor, conversations, [[image_path(r, table)] for r in records], rows, add_generation_prompt=True
    )
    summary = log_summary(lengths, "GRPO prompts")
    lengths.check(cfg.get("max_prompt_length"), "runs.<run>.max_prompt_length")
    lengths.check(context, "the model's context (max_position_embeddings)", extra=int(cfg["max_completion_length"]))
    return summary


def check_inference_budget(
    processor,
    model_dir: str | Path,
    conversations: Sequence[list[dict]],
    images: Sequence[str],
    rows: Sequence[str],
    max_new_tokens: int,
    context: int | None = None,
) -> dict:
    """Before inference: every prompt plus ``max_new_tokens`` within the model's context (or ``context`` when
    smaller, e.g. vLLM's ``max_model_len``). ``images`` holds one base64 image per row (a benchmark TSV's cells); rows
    whose image does not decode are left to the job's bad-image handling. Returns the summary."""
    sizes: dict = {}
    for cell in images:
        if cell not in sizes:
            try:
                sizes[cell] = base64_image_size(cell)
            except (OSError, ValueError, TypeError, binascii.Error):
                sizes[cell] = None
    keep = [i for i, cell in enumerate(images) if sizes[cell] is not None]
    if not keep:
        return {"rows": 0}
    lengths = measure(
        processor, [conversations[i] for i in keep], [[images[i]] for i in keep], [rows[i] for i in keep],
        add_generation_prompt=True, size_of=sizes.__getitem__,
    )  # fmt: skip
    summary = log_summary(lengths, "prompts")
    limit, what = model_context(model_dir), "the model's context (max_position_embeddings)"
    if context and (limit is None or context < limit):
        limit, what = context, "max_model_len"
    lengths.check(limit, what, extra=max_new_tokens)
    return summary


def check_benchmark_budget(
    model_dir: str | Path,
    df,
    system_prompt: str | None,
    max_new_tokens: int,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    context: int | None = None,
) -> dict:
    """:func:`check_inference_budget` for a benchmark table (``read_benchmark``) and the evaluation prompt, with the
    pixel limits inference applies (the model folder's own where ``min_pixels`` / ``max_pixels`` are None)."""
    from spatialreasoner.evaluate.rows import build_messages
    from spatialreasoner.modeling import load_processor

    processor = load_processor(model_dir, min_pixels, max_pixels)
    records = df.to_dict("records")
    return check_inference_budget(
        processor,
        model_dir,
        [build_messages(r, system_prompt) for r in records],
        [r["image"] for r in records],
        [f"benchmark row index {r['index']}" for r in records],
        max_new_tokens,
        context,
    )
