"""Rewards on hand-written completions, including the official reward module's bug cases."""

from __future__ import annotations

import re

import pytest

from spatialreasoner.errors import ConfigError
from spatialreasoner.train import rewards as R


def msg(text):
    """A completion as TRL passes it for conversational prompts."""
    return [{"role": "assistant", "content": text}]


# --- format ---------------------------------------------------------------------------------------------------------


# (text, official `format`, `format_strict`)
FORMAT_CASES = [
    ("<think>a</think><answer>B</answer>", 1.0, 1.0),
    ("<think>line 1\nline 2</think>\n  <answer>\nB\n</answer>", 1.0, 1.0),
    ("<think></think><answer></answer>", 1.0, 1.0),
    ("<answer>B</answer>", 0.0, 0.0),
    ("<think>a</think>", 0.0, 0.0),
    (" <think>a</think><answer>B</answer>", 0.0, 0.0),
    ("\n<think>a</think><answer>B</answer>", 0.0, 0.0),
    ("<think>a</think> text <answer>B</answer>", 0.0, 0.0),
    # The official MULTILINE `$` matches before a newline: a trailing newline and later lines pass `format`.
    ("<think>x</think><answer>A</answer>\n", 1.0, 0.0),
    ("<think>a</think><answer>B</answer>\nmore text", 1.0, 0.0),
    ("<think>a</think><answer>B</answer>\nmore text\n", 1.0, 0.0),
    # Both patterns' lazy `.*?` may run on to a later `</answer>` (DOTALL).
    ("<think>a</think><answer>B</answer>\n\n<answer>C</answer>", 1.0, 1.0),
    # ... but not text after `</answer>` on its own line, unless a later line ends with `</answer>` again.
    ("<think>a</think><answer>B</answer> more", 0.0, 0.0),
    ("<think>a</think><answer>B</answer> more\nthen</answer>", 1.0, 1.0),
    ("", 0.0, 0.0),
]


@pytest.mark.parametrize("text, official, strict", FORMAT_CASES)
def test_format_reward_is_the_official_regex(text, official, strict):
    assert R.format_reward([msg(text)]) == [official]
    assert R.strict_format_reward([msg(text)]) == [strict]
    # The official check, verbatim, on the same text.
    verbatim = re.match(r"^<think>.*?</think>\s*<answer>.*?</answer>$", text, re.DOTALL | re.MULTILINE)
    assert (verbatim is not None) == (official == 1.0)


def test_format_reward_accepts_plain_strings_and_odd_inputs():
    assert R.format_reward(["<think>x</think><answer>A</answer>", None, 42, [], msg(None)]) == [1.0, 0, 0, 0, 0]


# --- accuracy -------------------------------------------------------------------------------------------------------

OPTS = {"A": ["left", "left"], "B": ["right", "right"], "C": [None, None], "D": [float("nan"), float("nan")]}


def accuracy(texts, answers, **options):
    cols = options or {k: v[: len(texts)] for k, v in OPTS.items()}
    return R.accuracy_reward([msg(t) for t in texts], answer=answers, **cols)


def test_accuracy_letter_in_answer_tag():
    assert accuracy(["<think>x</think><answer>B</answer>"], ["B"]) == [1.0]
    assert accuracy(["<think>x</think><answer>A</answer>"], ["B"]) == [0.0]


def test_accuracy_uses_first_answer_tag_and_whole_text_without_tag():
    assert accuracy(["<answer>A</answer><answer>B</answer>"], ["A"]) == [1.0]
    assert accuracy(["The answer is B."], ["B"]) == [1.0]


def test_accuracy_text_match_and_no_match():
    assert accuracy(["<answer>it is on the right</answer>"], ["B"]) == [1.0]
    assert accuracy(["<answer>A or B</answer>"], ["A"]) == [0.0]  # two letters: no letter; no text either
    assert accuracy(["<answer>Cannot determine the answer</answer>"], ["A"]) == [0.0]


def test_accuracy_single_matcher_keeps_a_among_many_tokens():
    # The official reward's older matcher refused "A" among more than three tokens; the evaluation's matcher (and
    # so this reward) accepts it, keeping reward and reported accuracy consistent.
    assert accuracy(["<answer>A is the correct option</answer>"], ["A"]) == [1.0]


def test_accuracy_identical_options_always_right():
    cols = {"A": ["same", "same"], "B": ["same", "same"]}
    assert R.accuracy_reward([msg("<answer>B</answer>"), msg("nonsense")], answer=["A", "A"], **cols) == [1.0, 1.0]


def test_accuracy_option_naming_another_option_scores_only_that_completion_zero():
    # Official bug: `return 0.0` for the whole batch. Here the ambiguous completion scores 0, the others normally.
    texts = ["<answer>A. left, not right</answer>", "<answer>A</answer>", "<answer>B. right</answer>"]
    answers = ["A", "A", "B"]
    cols = {k: [v[0]] * 3 for k, v in OPTS.items()}
    assert R.accuracy_reward([msg(t) for t in texts], answer=answers, **cols) == [0.0, 1.0, 1.0]


def test_accuracy_never_raises():
    out = R.accuracy_reward([msg(None), None, msg("<answer>"), msg("<answer>B</answer>")], answer=["A", None, "A"])
    assert out == [0.0, 0.0, 0.0, 0.0]


# --- reasoning steps ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("no steps here", 0.0),
        ("Step 1: look.", 1 / 3),
        ("Step 1: a\nStep 2: b", 2 / 3),
        ("First, a. Next, b. Finally, c. Therefore, d.", 1.0),
        ("1. a\n2. b", 2 / 3),  # every numbered line counts, not only one at the very start
        ("intro\n- a\n* b\n", 2 / 3),
        ("3.5 meters\n2.1 meters", 0.0),  # a decimal number starting a line is not a numbered step
        ("1.\n2. b", 2 / 3),
    ],
)
def test_reasoning_steps(text, expected):
    assert R.reasoning_steps_reward([msg(text)]) == [pytest.approx(expected)]


# --- process --------------------------------------------------------------------------------------------------------

LOC = "The 3D location of the {} is ({}.0, 1.25, -3.5)."


def test_process_perfect_and_empty_for_location_closer_to_camera():
    cot = " ".join(
        [
            LOC.format("red cube", 1),
            LOC.format("blue cone", 2),
            "The distance from the red cube to the camera is 3.1.",
            "The distance from the blue cone to the camera is 4.2.",
        ]
    )
    assert R.process_reward([msg(cot)], category=["location_closer_to_camera"]) == [1.0]
    # Nothing found: TP=0, FN=4 (2 locations + 2 camera distances), FP=0, TN=5 kinds not required.
    assert R.process_reward([msg("B")], category=["location_closer_to_camera"]) == [pytest.approx(5 / 9)]


def test_process_counts_missing_and_extra_phrases():
    # height_higher needs 2 locations. Found: 3 locations (1 extra) and 1 vector (not required).
    cot = "\n".join(LOC.format(n, i) for i, n in enumerate(["a", "b", "c"])) + "\nvector from a to b is (1.0, 2.0, 3.0)"
    c = R.process_confusion(R.count_phrases(cot), R.REQUIRED["height_higher"])
    assert c == {"tp": 2, "fn": 0, "fp": 2, "tn": 5}
    assert R.process_reward([msg(cot)], category=["height_higher"]) == [pytest.approx(7 / 9)]


def test_process_cosine_or_angle_is_one_interchangeable_kind():
    # multi_object_parallel: 2 front directions + 1 cosine-or-angle. A cosine with its angle counts once.
    cot = (
        "The front direction of the car is (0.0, 0.0, 1.0).\n"
        "The front direction of the bus is (0.0, 0.1, 0.99).\n"
        "The cosine similarity between the two front directions is 0.99, so the angle between them is 8 degrees."
    )
    assert R.count_phrases(cot)["cos_or_angle"] == 1
    assert R.process_reward([msg(cot)], category=["multi_object_parallel"]) == [1.0]
    angle_only = cot.replace("The cosine similarity between the two front directions is 0.99, so the", "The")
    assert R.process_reward([msg(angle_only)], category=["multi_object_parallel"]) == [1.0]


def test_process_required_table_matches_the_official_multisets():
    assert R.REQUIRED["orientation_in_front_of"] == {"location": 2, "vector": 1, "front": 1, "cos_or_angle": 1}
    assert R.REQUIRED["multi_object_facing"] == {"location": 3, "front": 1, "vector": 2, "cos_or_angle": 2}
    assert len(R.REQUIRED) == 12
    assert set().union(*R.REQUIRED.values()) == set(R.KINDS)


def test_process_unknown_category_and_odd_input_score_zero():
    assert R.process_reward([msg(LOC.format("a", 1)), None], category=["Depth", None]) == [0.0, 0.0]
    assert R.process_reward([msg("x")]) == [0.0]


# --- registry -------------------------------------------------------------------------------------------------------


def test_registry_and_module_function():
    assert R.resolve_reward("format") is R.format_reward
    assert R.resolve_reward("format_strict") is R.strict_format_reward
    assert R.resolve_reward("spatialreasoner.train.rewards:process_reward") is R.process_reward
    with pytest.raises(ConfigError, match="unknown reward 'nope'"):
        R.resolve_reward("nope")
    with pytest.raises(ConfigError, match="cannot import"):
        R.resolve_reward("spatialreasoner.train.rewards:missing")
    with pytest.raises(ConfigError, match="at least one reward"):
        R.resolve_rewards([])


# Edge cases of the 3D-aware reward's phrase patterns, and how many matches each official pattern finds in each. The
# counts come from running the official module's own `phrases_dict` (src/spatial_reasoner/reward.py of the
# SpatialReasoner repository, commit 339b29a; the module fails at import, so its source was run up to that table)
# on these texts once, outside this project; they are copied here as literals.
OFFICIAL_PATTERN_COUNTS = [
    ("The 3D location of the cup is (1, 2, 3).", {}),  # integers
    ("The 3D location of the cup is (1.0,2.0,3.0).", {}),  # no space after the commas
    ("The 3D location of the cup is(1.00, 2.00, 3.00).", {}),  # no space before the vector
    ("The 3D location of the cup is ( 1.0, 2.0, 3.0 ).", {}),  # spaces inside the parentheses
    ("The 3D location of the cup is (1.50, -1.01, 22.49).", {"location": 1}),
    ("The distance from the cup to the camera is 3 meters.", {}),
    ("The distance from the cup to the camera is -3.5.", {}),
    (
        "The cosine similarity between a and b is -0.50, so the angle between them is 120 degrees.",
        {"cosine": 1, "angle": 1},
    ),
    ("The cosine similarity between a and b is 1.", {}),
    (
        "The distance between a and b is 2.5. The vector from a to b is (0.5, 0.0, -1.0).",
        {"vector": 1, "dist_between": 1},
    ),
    (
        "The front direction of the car is (0, 0, 1). The left direction of the car is (1.0, 0.0, 0.0).",
        {"front": 1, "left": 1},
    ),
]
# The official names of the patterns, as (kind, position among the kind's patterns) here.
OFFICIAL_NAMES = {"location": ("location", 0), "vector": ("vector", 0), "dist_from": ("camera_distance", 0),
                  "dist_between": ("distance_between", 0), "cosine": ("cos_or_angle", 0),
                  "angle": ("cos_or_angle", 1), "front": ("front", 0), "left": ("left", 0)}  # fmt: skip


@pytest.mark.parametrize("text, official", OFFICIAL_PATTERN_COUNTS)
def test_process_phrase_patterns_match_the_official_ones(text, official):
    for name, (kind, k) in OFFICIAL_NAMES.items():
        assert len(R.PHRASES[kind][k].findall(text)) == official.get(name, 0), name


def test_the_lenient_phrase_patterns_are_a_named_reward():
    loc = "The 3D location of the {} is (1, 2,3)."
    cot = " ".join([loc.format("cup"), loc.format("plate")])  # integers and free spacing: the lenient patterns only
    assert R.count_phrases(cot)["location"] == 0 and R.count_phrases(cot, R.LENIENT_PHRASES)["location"] == 2
    assert R.resolve_reward("process_lenient") is R.process_lenient_reward
    assert R.process_lenient_reward([msg(cot)], category=["height_higher"]) == [1.0]
    # official patterns: nothing found, so 2 locations missing (FN 2) and the 6 other kinds absent (TN 6)
    assert R.process_reward([msg(cot)], category=["height_higher"]) == [pytest.approx(6 / 8)]
