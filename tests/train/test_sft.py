"""SFT: examples from canonical rows, the official loss masking, learning on the tiny model, the final folder."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from spatialreasoner.errors import DataError
from spatialreasoner.train.rewards import format_reward
from spatialreasoner.train.sft import build_sft_dataset, conversation_turns, sft_example

from .conftest import read_state

TABLE = Path("/data/sft.parquet")


def test_qa_row_becomes_image_question_and_cot_answer():
    row = {"source_row": 1, "question": "Which is closer?", "A": "cube", "B": "ball", "C": None, "D": float("nan")}
    ex = sft_example({**row, "answer_cot": "<think>t</think><answer>A</answer>", "image": "/img/1.png"}, TABLE)
    user, assistant = ex["messages"]
    assert user["role"] == "user" and user["content"][0]["type"] == "image"
    assert user["content"][1]["text"] == (
        "Question: Which is closer?\nOptions:\nA. cube\nB. ball\n"
        "Please select the correct answer from the options above."
    )
    assert assistant == {
        "role": "assistant",
        "content": [{"type": "text", "text": "<think>t</think><answer>A</answer>"}],
    }
    assert ex["images"] == ["/img/1.png"]


def test_llava_row_keeps_turns_with_image_where_the_tag_stood():
    turns = [
        {"from": "human", "value": "Look:\n<image>\nWhat is it?"},
        {"from": "gpt", "value": "A cat."},
        {"from": "human", "value": "Colour?"},
    ]
    messages = conversation_turns(turns, "x")
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert [b["type"] for b in messages[0]["content"]] == ["text", "image", "text"]
    assert messages[0]["content"][0]["text"] == "Look:" and messages[0]["content"][2]["text"] == "What is it?"
    ex = sft_example(
        {"source_row": 2, "kind": "conversation", "question": None, "conversations": turns, "image": "rel/2.png"}, TABLE
    )
    assert ex["images"] == ["/data/rel/2.png"]  # relative to the table's folder


def test_bad_rows_are_errors_naming_the_row(tmp_path):
    with pytest.raises(DataError, match="row 7: a 3D QA row needs a non-empty 'answer_cot'"):
        sft_example({"source_row": 7, "question": "q?", "A": "a", "answer_cot": "", "image": "x.png"}, TABLE)
    with pytest.raises(DataError, match="row 8: neither a question nor conversations"):
        sft_example({"source_row": 8, "question": None, "conversations": [], "image": "x.png"}, TABLE)
    pd.DataFrame({"question": ["q"]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['image'\]"):
        build_sft_dataset(tmp_path / "t.parquet")


def test_collator_masks_only_padding_and_image_tokens_by_default(tiny_model_dir, train_tables):
    from spatialreasoner.modeling import load_processor
    from spatialreasoner.train.sft import IMAGE_TOKENS, SpatialVisionCollator

    processor = load_processor(tiny_model_dir)
    tok = processor.tokenizer
    masked = tuple(tok.convert_tokens_to_ids(t) for t in IMAGE_TOKENS)
    dataset = build_sft_dataset(train_tables["sft"])
    examples = [dataset[0], dataset[9]]  # a QA row and a (shorter) LLaVA row -> padding
    batch = SpatialVisionCollator(processor=processor, masked_token_ids=masked)(examples)
    ids, labels, attn = batch["input_ids"], batch["labels"], batch["attention_mask"]
    is_image = sum(ids == t for t in masked).bool()
    assert is_image.any() and (attn == 0).any()
    assert (labels[is_image] == -100).all() and (labels[attn == 0] == -100).all()
    keep = ~is_image & (attn == 1)
    assert (labels[keep] == ids[keep]).all()  # the whole rest, user turn included, is trained on

    only_assistant = SpatialVisionCollator(
        processor=processor,
        masked_token_ids=masked,
        assistant_only_loss=True,
        chat_template=_training_template(processor),
    )([dataset[0]])
    trained = only_assistant["labels"][only_assistant["labels"] != -100]
    text = tok.decode(trained)
    assert "<answer>" in text and "Question:" not in text


def _training_template(processor):
    from trl.chat_template_utils import get_training_chat_template

    return get_training_chat_template(processor)


def test_sft_learns_the_format_and_writes_a_complete_final_model(sft_trained_dir, train_tables):
    from spatialreasoner.modeling import load_model, load_processor
    from spatialreasoner.train.common import load_rgb
    from spatialreasoner.train.grpo import question_text

    state = read_state(sft_trained_dir)
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert state["global_step"] == 60 and len(losses) == 60
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5

    names = {p.name for p in sft_trained_dir.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "trainer_state.json", "run.json"} <= names
    assert "chat_template.jinja" in names and "optimizer.pt" not in names
    run = json.loads((sft_trained_dir / "run.json").read_text())
    assert run["run"] == "sft-fixture" and run["seed"] == 0 and run["stop_steps"] == 60
    assert run["config"]["learning_rate"] == 5e-3 and run["versions"]["trl"]
    assert json.loads((sft_trained_dir / "config.json").read_text())["use_cache"] is True

    # Greedy answers to the training questions now have the <think>…</think><answer>…</answer> format.
    model, processor = load_model(sft_trained_dir), load_processor(sft_trained_dir)
    rows = pd.read_parquet(train_tables["rl"]).to_dict("records")
    completions = []
    for row in rows:
        image = load_rgb(train_tables["rl"].parent / row["image"])
        msgs = [
            {
                "role": "user",
                "content": [{"type": "image", "image": image}, {"type": "text", "text": question_text(row)}],
            }
        ]
        inputs = processor.apply_chat_template(
            msgs, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        out = model.generate(**inputs, max_new_tokens=80, do_sample=False)
        completions.append(processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    assert sum(format_reward(completions)) / len(completions) >= 0.75, completions


def test_conversation_without_image_needs_no_image_path():
    turns = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]
    ex = sft_example({"source_row": 3, "kind": "conversation", "conversations": turns, "image": None}, TABLE)
    assert ex["images"] == [] and len(ex["messages"]) == 2


def test_assistant_only_loss_trains_on_the_answers_under_this_transformers(tiny_model_dir, train_tables, tmp_path):
    """``assistant_only_loss: true`` builds a trainer (TRL refuses its own for images under transformers < 5.18) whose
    collator keeps the loss on the assistant turns alone, and one training step runs on it."""
    from spatialreasoner.modeling import load_processor
    from spatialreasoner.train import sft
    from spatialreasoner.train.common import resolve_run_config, training_kwargs

    from .conftest import FAST_SFT

    cfg = resolve_run_config({**FAST_SFT, "stop_steps": 1, "assistant_only_loss": True})
    processor = load_processor(tiny_model_dir)
    kwargs = training_kwargs(cfg, tmp_path / "w", 1, 0, "a")
    trainer = sft.build_trainer(cfg, kwargs, tiny_model_dir, train_tables["sft"], processor, [])
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[9]])
    tok = processor.tokenizer
    for row_labels in batch["labels"]:
        trained = tok.decode(row_labels[row_labels != -100])
        assert trained and "<|im_start|>" not in trained and "user" not in trained
    qa = tok.decode(batch["labels"][0][batch["labels"][0] != -100])
    assert qa.startswith("<think>") and qa.endswith("</answer><|im_end|>")
    trainer.train()
    assert trainer.state.global_step == 1 and trainer.state.log_history[-1]["train_loss"] > 0
