"""The grounding probe (benchmarks/bench_grounding.py) scores the tokens it says it scores."""

from __future__ import annotations

import importlib.util

import pytest

from tests.train.conftest import qa_row


@pytest.fixture(scope="module")
def bench(repo_root):
    spec = importlib.util.spec_from_file_location("bench_grounding", repo_root / "benchmarks" / "bench_grounding.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def probe_parts(tiny_model_dir, train_tables):
    from transformers import AutoProcessor

    from spatialreasoner.train.sft import SpatialVisionCollator, build_sft_dataset

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    collator = SpatialVisionCollator(
        processor=processor, max_length=None, completion_only_loss=False, assistant_only_loss=True
    )
    return build_sft_dataset(train_tables["sft"]), collator, processor.tokenizer


class Predictor:
    """Stands in for the model: logits whose argmax at position t is ``choose(input_ids)[t]``."""

    def __init__(self, choose, vocab: int):
        self.choose, self.vocab = choose, vocab

    def __call__(self, input_ids, **_):
        from types import SimpleNamespace

        import torch

        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits.scatter_(-1, self.choose(input_ids).unsqueeze(-1), 1.0)
        return SimpleNamespace(logits=logits)

    def eval(self):
        return self

    def train(self):
        return self


def test_targets_are_the_location_values_and_the_answer(bench):
    text = qa_row(0, "x.png")["answer_cot"]
    found = [(kind, text[a:b]) for kind, a, b, _ in bench.targets(text)]
    assert found == [
        ("colour", "red"), ("shape", "cube"), ("x", "1.0"), ("y", "0.5"), ("z", "2.0"),
        ("colour", "blue"), ("shape", "cube"), ("x", "0.5"), ("y", "0.5"), ("z", "4.0"),
        ("answer", "A"),
    ]  # fmt: skip


def test_a_perfect_predictor_hits_every_target_and_a_shifted_one_misses(bench, probe_parts):
    import torch

    dataset, collator, tokenizer = probe_parts
    held = list(range(len(dataset)))
    qa_rows = sum(1 for i in held if "<answer>" in bench.assistant_text(dataset[i]))
    vocab = len(tokenizer) + 64

    def next_token(ids):
        return torch.cat([ids[:, 1:], ids[:, -1:]], dim=1)

    perfect = bench.probe(Predictor(next_token, vocab), collator, tokenizer, dataset, held, batch=4)
    assert {kind: total for kind, (_, total) in perfect.items()} == {
        **{kind: 2 * qa_rows for kind in bench.KINDS},
        "answer": qa_rows,
    }
    assert all(hits == total for hits, total in perfect.values()), perfect
    # predicting the current token instead of the next one: the alignment is off by one, so almost nothing hits
    shifted = bench.probe(Predictor(lambda ids: ids, vocab), collator, tokenizer, dataset, held, batch=4)
    assert sum(h for h, _ in shifted.values()) < 0.1 * sum(t for _, t in shifted.values()), shifted


def test_majority_baseline_is_the_most_frequent_training_value(bench, probe_parts):
    dataset, _, _ = probe_parts
    rows, held = list(range(4)), list(range(4, 8))
    base = bench.majority_baselines(dataset, rows, held)
    # training rows 0-3: the first object's z is 2, 3, 4, 2 and the second's 4, 5, 4, 5 -> the majority z is "4.0";
    # held-out rows 4-7 have z values 3, 4, 2, 3 and 4, 5, 4, 5 -> 3 of 8 are "4.0"
    assert base["z"] == pytest.approx(3 / 8)
    assert base["answer"] == pytest.approx(0.5)
