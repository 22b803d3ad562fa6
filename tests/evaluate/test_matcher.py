"""Hand-written cases for every branch of the VLMEvalKit option matcher."""

import math

import pytest

from spatialreasoner.matcher import answer_content, extract, match_option

OPTS = {"A": "yes", "B": "no"}
FOUR = {"A": "left of the chair", "B": "right of the chair", "C": "behind the chair", "D": "in front of the chair"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("B.", "B"),
        ("(A) yes", "A"),
        ("The answer is [B].", "B"),
        ("Answer: C; because", "C"),
        ("**D**", "D"),
        ("#A!", "A"),
        ("{B}", "B"),
        ("answer:\tB\n", "B"),
        ("A, B", None),  # two letters: no letter match, text match below decides
    ],
)
def test_letter_match_tokens(text, expected):
    got = match_option(text, FOUR)
    if expected is None:
        assert got == "Z"
    else:
        assert got == expected


def test_lowercase_letter_is_not_a_choice_token():
    assert match_option("b", FOUR) == "Z"


def test_separators_exclude_angle_brackets_slash_and_quotes():
    # "<answer>B</answer>" is one token, so the full-text protocol finds no letter
    assert match_option("<answer>B</answer>", FOUR) == "Z"
    assert match_option("'B'", FOUR) == "Z"
    assert match_option('"B"', FOUR) == "Z"
    assert match_option("A/B", FOUR) == "Z"
    assert match_option("B-", FOUR) == "Z"


def test_letter_not_among_present_choices_does_not_count():
    # only A and B are options: the token C is no choice, so B is the single match
    assert match_option("C or B", OPTS) == "B"
    assert match_option("D", {"A": "x", "B": "y", "C": "", "D": float("nan")}) == "Z"


def test_refusals_give_z_even_with_a_letter_and_stop_text_matching():
    for refusal in (
        "Sorry, I can't help with images of people yet.",
        "I can't process this file.",
        "I'm sorry, but without the image provided",
        "Cannot determine the answer",
    ):
        assert match_option(f"{refusal} A yes", OPTS) == "Z"
    # case matters: a lower-case variant is no refusal
    assert match_option("cannot determine the answer: A", OPTS) == "A"


def test_lone_z_token_is_final():
    # Z from letter matching is final even though the text mentions option A's text
    assert match_option("Z yes", OPTS) == "Z"
    assert match_option("Z. left of the chair", FOUR) == "Z"


def test_z_with_a_choice_letter_gives_the_letter():
    assert match_option("Z A", OPTS) == "A"


def test_text_match_single_option():
    assert match_option("it is behind the chair", FOUR) == "C"
    assert match_option("IT IS BEHIND THE CHAIR", FOUR) == "C"
    assert match_option("Yes, it is.", OPTS) == "A"


def test_text_match_ambiguous_or_absent():
    # both option texts occur
    assert match_option("yes and no", OPTS) == "Z"
    assert match_option("maybe", OPTS) == "Z"
    # "no" is a substring of "not": substring semantics, as in VLMEvalKit
    assert match_option("I do not know", OPTS) == "B"


def test_text_match_after_two_letters():
    assert match_option("A or B behind the chair", FOUR) == "C"
    # "?" is no separator: "B?" is not the token B, so A is the single letter
    assert match_option("A or B? behind the chair", FOUR) == "A"


def test_api_failure_skips_letter_matching_only():
    assert match_option("Failed to obtain answer via API. B", FOUR) == "Z"
    assert match_option("Failed to obtain answer via API. behind the chair", FOUR) == "C"


def test_missing_prediction():
    assert match_option(None, OPTS) == "Z"
    assert match_option(float("nan"), OPTS) == "Z"
    assert match_option("", OPTS) == "Z"


def test_answer_content():
    assert answer_content("<think>A is wrong</think><answer> B </answer>") == "B"
    assert answer_content("<answer>\nC\n</answer> then <answer>D</answer>") == "C"
    assert answer_content("no tags, A") == "no tags, A"
    assert answer_content("<answer>unclosed A") == "<answer>unclosed A"
    assert answer_content(None) == ""


def test_protocols_differ():
    text = "<think>Option A is left, option D is right.</think>\n<answer>B</answer>"
    assert extract(text, FOUR, "answer_tag") == "B"
    # full text: A and D are tokens (B is glued to the tags) -> two letters; no single option text -> Z
    assert extract(text, FOUR, "full_text") == "Z"
    assert extract("<think>x</think><answer>B. right of the chair</answer>", FOUR) == "B"
    with pytest.raises(ValueError, match="protocol"):
        extract("A", FOUR, "judge")


def test_options_may_hold_non_strings():
    assert match_option("3", {"A": 3, "B": 4.5, "C": math.nan}) == "A"
