"""The canary falls to chance when the chain is cut: the tiny model memorises the canary's pairs through the project's
own train and infer, and loses them when the pictures do not reach it, when the SFT labels are shifted by one token,
or when inference uses another chat template (benchmarks/bench_canary.py runs these and the rest)."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.slow

#: The demo's canary (16 pairs), alone: each row 16 times, 4 epochs (256 steps of 8 rows, about 20 s on 2 cores).
PAIRS, REPEATS, EPOCHS, LR = 16, 16, 4, 3e-3
#: The issue's bounds: a working chain memorises the canary; a cut one is at chance (50%) or below this.
MEMORISED, AT_CHANCE = 85.0, 60.0


@pytest.fixture(scope="module")
def bench(repo_root):
    spec = importlib.util.spec_from_file_location("bench_canary", repo_root / "benchmarks" / "bench_canary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def canary(bench, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("canary")
    table, tsv = bench.write_canary(root / "data", PAIRS, REPEATS)
    model = bench.train_canary(tiny_model_dir, table, root / "baseline", EPOCHS, None, lr=LR)
    return {"root": root, "table": table, "tsv": tsv, "model": model}


def test_a_working_chain_memorises_the_canary(bench, canary):
    result = bench.canary_accuracy(canary["model"], canary["tsv"], canary["root"] / "baseline.parquet")
    assert result["accuracy"] >= MEMORISED, result


def test_blank_pictures_bring_the_canary_to_chance(bench, canary):
    blank = bench.mutate_images(canary["tsv"], canary["root"] / "blank.tsv", "blank")
    result = bench.canary_accuracy(canary["model"], blank, canary["root"] / "blank.parquet")
    assert result["accuracy"] <= AT_CHANCE, result


def test_another_chat_template_brings_the_canary_to_chance(bench, canary):
    other = bench.with_chat_template(canary["model"], canary["root"] / "other-template", bench.OTHER_TEMPLATE)
    result = bench.canary_accuracy(other, canary["tsv"], canary["root"] / "other-template.parquet")
    assert result["accuracy"] <= AT_CHANCE, result


def test_labels_shifted_by_one_token_bring_the_canary_to_chance(bench, canary, tiny_model_dir):
    model = bench.train_canary(tiny_model_dir, canary["table"], canary["root"] / "shifted", EPOCHS, "shifted-labels",
                               lr=LR)  # fmt: skip
    result = bench.canary_accuracy(model, canary["tsv"], canary["root"] / "shifted.parquet")
    assert result["accuracy"] <= AT_CHANCE, result
