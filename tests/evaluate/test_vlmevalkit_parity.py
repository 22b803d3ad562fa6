"""Parity with the VLMEvalKit fork the paper was scored with (github.com/wufeim/VLMEvalKit, commit 0765d3f, the
submodule of the official SpatialReasoner repository): benchmark TSV cells reading "NA", "None", "n/a" or nothing
are missing options, and protocol ``vlmevalkit`` without a judge endpoint decides every row as the fork does without
one.

Where the expected values come from: the fork's own functions, run once on the benchmark and replies of this module
(``TSV`` and ``REPLIES`` below, written to a file) in a scratch folder outside this project, with this project's
environment:

    meta = vlmeval.smp.load("bench.tsv")                      # the fork's TSV reader: pd.read_csv(f, sep="\\t")
    data = meta.drop(columns="image"); data["prediction"] = REPLIES
    mcq_vanilla_eval(None, data, meta, 1, "r.pkl", "3DSRBench")  # vlmeval/dataset/utils/multiple_choice.py;
                                                              # model None: no judge (exact_matching, no API key)
    extract_answer_from_item(None, row)["opt"]                # the letter behind each hit
    build_choices(row)                                        # the options the matcher chooses among

and the official evaluation's prompt (``prepare_test_messages`` of ``src/eval/infer.py`` in the SpatialReasoner
repository, commit 339b29a) on the same file. Their outputs are copied below as literals; no code of either is
part of this project.
"""

from __future__ import annotations

import base64
import io

import pandas as pd
import pytest
from PIL import Image

from spatialreasoner.data.benchmarks import validate
from spatialreasoner.evaluate.judge import judge_predictions
from spatialreasoner.evaluate.rows import build_messages, read_benchmark
from spatialreasoner.evaluate.score import score_file


def _png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (28, 28), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


COLUMNS = ("index", "qid", "question", "A", "B", "C", "D", "answer", "category")
#: One benchmark row per case; option cells "NA", "None", "n/a" and "" are what the fork reads as missing.
TSV_ROWS = [
    (1, "q1", "Is the red lamp higher than the chair", "yes", "no", "NA", "", "B", "height_higher"),
    (2, "q2", "Is the ball closer to the camera than the box", "yes", "no", "", "", "B", "location_closer_to_camera"),
    (3, "q3", "How far is the cup from the plate", "None", "2 meters", "n/a", "", "B", "multi_object_closer_to"),
    (4, "q4", "Is the car on the left of the tree", "yes", "no", "", "", "A", "orientation_on_the_left"),
    (5, "q5", "Which object is closer to the camera", "the dog", "the cat", "NA", "None", "A", "location_next_to"),
    (6, "q6", "Is the cup above the table", "yes", "no", "", "", "A", "location_above"),
    (7, "q7", "Is the man facing the camera", "yes", "no", "", "", "B", "orientation_in_front_of"),
    (8, "q8", "Is the box higher than the shelf", "yes", "no", "", "", "A", "height_higher"),
]
REPLIES = [
    # "no" is also in "not", and "na" in "banana": with "NA" kept as option text the matcher would see two
    "<think>The banana lamp is not higher.</think><answer>B</answer>",
    # A and B both stand alone in the reasoning: undecided, so a miss without a judge
    "<think>Looking at A and B, the box is nearer.</think><answer>B</answer>",
    # "None" read as an option's text would also occur in the reply
    "<think>None of the others; it is 2 meters.</think><answer>B</answer>",
    # a stray A in the reasoning decides the row (here rightly)
    "<think>Option A is right.</think><answer>A</answer>",
    # neither the dog nor the cat named: undecided
    "<think>The animal is closer.</think><answer>A</answer>",
    "Cannot determine the answer",  # a refusal: Z
    "B",
    "",  # an empty reply (the fork reads it back as "nan")
]

# ---------------------------------------------------------------- values produced by the fork's functions (above)
#: build_choices(row) of each row, in order.
FORK_CHOICES = [
    {"A": "yes", "B": "no"},
    {"A": "yes", "B": "no"},
    {"B": "2 meters"},
    {"A": "yes", "B": "no"},
    {"A": "the dog", "B": "the cat"},
    {"A": "yes", "B": "no"},
    {"A": "yes", "B": "no"},
    {"A": "yes", "B": "no"},
]
#: extract_answer_from_item(None, row)["opt"] of each row.
FORK_LETTERS = ["B", "Z", "B", "A", "Z", "Z", "B", "Z"]
#: mcq_vanilla_eval(None, ...)["hit"] of each row.
FORK_HITS = [1, 0, 1, 1, 0, 0, 1, 0]
#: The user text of prepare_test_messages for row 3 (index 3) and row 5 (index 5).
OFFICIAL_PROMPT_3 = (
    "Question: How far is the cup from the plate\nOptions:\nB. 2 meters\n"
    "Please select the correct answer from the options above."
)
OFFICIAL_PROMPT_5 = (
    "Question: Which object is closer to the camera\nOptions:\nA. the dog\nB. the cat\n"
    "Please select the correct answer from the options above."
)


def write_case(folder):
    """The benchmark TSV (VLMEvalKit layout, option cells written literally) and its replies as a parquet."""
    folder.mkdir(parents=True, exist_ok=True)
    image = _png()
    lines = ["\t".join((*COLUMNS, "image"))]
    lines += ["\t".join((*map(str, row), image)) for row in TSV_ROWS]
    bench = folder / "bench.tsv"
    bench.write_text("\n".join(lines) + "\n")
    preds = folder / "preds.parquet"
    pd.DataFrame({"index": [r[0] for r in TSV_ROWS], "prediction": REPLIES}).to_parquet(preds)
    return bench, preds


def test_na_none_and_empty_option_cells_are_missing_options_in_the_prompt(tmp_path):
    bench, _ = write_case(tmp_path)
    validate(bench, "3DSRBench")  # row 3's answer B is its only option; "None" and "n/a" are no options
    rows = read_benchmark(bench).to_dict("records")
    for row, choices in zip(rows, FORK_CHOICES, strict=True):
        assert {k: row[k] for k in "ABCD" if isinstance(row[k], str)} == choices
    texts = {r["index"]: build_messages(r, None)[0]["content"][1]["text"] for r in rows}
    assert texts[3] == OFFICIAL_PROMPT_3
    assert texts[5] == OFFICIAL_PROMPT_5


def test_vlmevalkit_without_a_judge_decides_every_row_as_the_fork(tmp_path):
    bench, preds = write_case(tmp_path)
    judged = tmp_path / "judged.parquet"
    summary = judge_predictions(preds, bench, judged, tmp_path / "cache.jsonl", judge_model=None)
    assert summary["judged"] == 0 and summary["requests"] == 0 and summary["judge_model"] is None
    assert summary["undecided"] == FORK_LETTERS.count("Z") - 1  # the refusal is decided (Z) by the matcher
    scored = score_file(preds, "3DSRBench", tmp_path / "score", protocol="vlmevalkit", reference=bench, judged=judged)
    hits = pd.read_csv(tmp_path / "score" / "hits.csv")
    assert hits["extracted"].tolist() == FORK_LETTERS
    assert hits["hit"].astype(int).tolist() == FORK_HITS
    assert scored["judge_model"] is None and scored["judged"] == 0
    assert scored["per_row"]["overall"] == pytest.approx(round(100 * sum(FORK_HITS) / len(FORK_HITS), 1))


def test_answer_tag_reads_the_stated_answers_of_the_same_replies(tmp_path):
    """The paper config's main protocol on the same rows: the <answer> content, where the whole reply misleads."""
    bench, preds = write_case(tmp_path)
    score_file(preds, "3DSRBench", tmp_path / "score", protocol="answer_tag", reference=bench)
    hits = pd.read_csv(tmp_path / "score" / "hits.csv")
    assert hits["extracted"].tolist() == ["B", "B", "B", "A", "A", "Z", "B", "Z"]
