"""Supervised fine-tuning on the canonical SFT table with TRL's SFTTrainer (3D QA rows and LLaVA conversations).

Loss masking follows the official code: every token except padding and image tokens; assistant-only is a switch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from spatialreasoner.errors import DataError
from spatialreasoner.prompts import format_question, is_present, present_options
from spatialreasoner.train.common import image_path, load_rgb

log = logging.getLogger(__name__)

IMAGE_TAG = "<image>"
# Tokens the official collator excluded from the loss besides padding: vision start/end and the image placeholder.
IMAGE_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>")


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def _image() -> dict:
    return {"type": "image", "text": None}


def conversation_turns(conversations, where: str) -> list[dict]:
    """LLaVA turns (``from`` human/gpt, ``value``) as chat messages; each ``<image>`` becomes an image block there."""
    messages = []
    for turn in conversations:
        if not isinstance(turn, Mapping) or "value" not in turn:
            raise DataError(f"{where}: a conversation turn lacks 'from'/'value': {turn!r}")
        role = "user" if turn.get("from") in ("human", "user") else "assistant"
        pieces = str(turn["value"]).split(IMAGE_TAG)
        content = []
        for i, piece in enumerate(pieces):
            if i > 0:
                content.append(_image())
            # The newline that separated the tag from the text belongs to the tag.
            piece = piece.removeprefix("\n") if i > 0 else piece
            piece = piece.removesuffix("\n") if i < len(pieces) - 1 else piece
            if piece:
                content.append(_text(piece))
        messages.append({"role": role, "content": content})
    return messages


def sft_example(row: Mapping, table: Path) -> dict:
    """One training example: ``messages`` (with image blocks) and ``images`` (paths, one per image block)."""
    where = f"{table} row {row.get('source_row', row.get('id', '?'))}"
    kind = row.get("kind")
    is_qa = kind == "qa" if is_present(kind) else is_present(row.get("question"))
    if is_qa:
        options = present_options(row)
        question = format_question(row["question"], options) if options else str(row["question"])
        answer = row.get("answer_cot")
        if not is_present(answer):
            raise DataError(f"{where}: a 3D QA row needs a non-empty 'answer_cot'")
        messages = [
            {"role": "user", "content": [_image(), _text(question)]},
            {"role": "assistant", "content": [_text(str(answer))]},
        ]
    else:
        conversations = row.get("conversations")
        if conversations is None or len(conversations) == 0:
            raise DataError(f"{where}: neither a question nor conversations")
        messages = conversation_turns(list(conversations), where)
    n_images = sum(1 for m in messages for b in m["content"] if b["type"] == "image")
    images = [image_path(row, table)] * n_images if n_images else []
    return {"messages": messages, "images": images}


def build_sft_dataset(table: str | Path):
    from datasets import Dataset

    from spatialreasoner.train.common import read_table

    table = Path(table)
    df = read_table(table, required=("image",))
    records = df.to_dict("records")
    examples = [sft_example(row, table) for row in records]
    n_qa = sum(1 for row in records if is_present(row.get("question")))
    log.info("SFT table %s: %d rows (%d 3D QA, %d conversations)", table, len(examples), n_qa, len(examples) - n_qa)
    return Dataset.from_list(examples)


def assistant_token_mask(input_ids, prefix: list[int], turn_end: int):
    """True on the tokens of every assistant turn: after each ``prefix`` (``<|im_start|>assistant\\n``) up to and
    including the next ``turn_end`` (``<|im_end|>``)."""
    import torch

    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    n = len(prefix)
    for r, row in enumerate(input_ids.tolist()):
        i = 0
        while i <= len(row) - n:
            if row[i : i + n] != prefix:
                i += 1
                continue
            j = i + n
            while j < len(row) and row[j] != turn_end:
                j += 1
            mask[r, i + n : j + 1] = True
            i = j + 1
    return mask


@dataclass
class SpatialVisionCollator(DataCollatorForVisionLanguageModeling):
    """TRL's vision collator, opening image files lazily and also masking image tokens out of the loss.

    With ``assistant_only_loss`` the assistant turns are found from the tokens themselves: transformers 5.17's
    processors return an empty assistant mask for conversations with images (that came with transformers 5.18)."""

    masked_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def torch_call(self, examples):
        examples = [{**ex, "images": [load_rgb(p) for p in ex["images"]]} for ex in examples]
        assistant_only, self.assistant_only_loss = self.assistant_only_loss, False
        try:
            out = super().torch_call(examples)
        finally:
            self.assistant_only_loss = assistant_only
        if assistant_only:
            tok = self.processor.tokenizer
            prefix = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
            keep = assistant_token_mask(out["input_ids"], prefix, tok.convert_tokens_to_ids("<|im_end|>"))
            out["labels"][~keep] = -100
        for token_id in self.masked_token_ids:
            out["labels"][out["input_ids"] == token_id] = -100
        return out


def build_trainer(cfg: Mapping, args_kwargs: dict, init: Path, table: Path, processor, callbacks):
    from trl import SFTConfig, SFTTrainer

    from spatialreasoner.modeling import load_model, resolve_attn_implementation
    from spatialreasoner.train.common import model_dtype
    from spatialreasoner.train.resume import CheckedResumeMixin

    class ResumingSFTTrainer(CheckedResumeMixin, SFTTrainer):
        """SFTTrainer whose resume restores the checkpoint's weights (checked key by key)."""

    args = SFTConfig(
        **{
            "max_length": cfg["max_length"],
            # The collator masks non-assistant tokens itself (SpatialVisionCollator); TRL 1.16 refuses its own
            # assistant-only loss for images under transformers < 5.18, so it is never switched on there.
            "assistant_only_loss": False,
            "dataset_kwargs": {"skip_prepare_dataset": True},
            **args_kwargs,
        }
    )
    dataset = build_sft_dataset(table)
    # Created after the training arguments so that DeepSpeed ZeRO-3 partitions the weights while loading.
    model = load_model(
        init, dtype=model_dtype(cfg), attn_implementation=resolve_attn_implementation(cfg["attn_implementation"])
    )
    tokenizer = processor.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    masked = tuple(tokenizer.convert_tokens_to_ids(t) for t in IMAGE_TOKENS if t in tokenizer.get_vocab())
    collator = SpatialVisionCollator(
        processor=processor,
        max_length=args.max_length,
        completion_only_loss=False,
        assistant_only_loss=bool(cfg["assistant_only_loss"]),
        masked_token_ids=masked,
    )
    return ResumingSFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=processor,
        callbacks=callbacks,
    )
