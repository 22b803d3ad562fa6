"""VLMEvalKit's deterministic multiple-choice matcher (no judge model), shared by evaluation and the accuracy reward.

Re-implements ``can_infer`` = ``can_infer_option`` then ``can_infer_text`` as in the VLMEvalKit fork the paper used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from spatialreasoner.prompts import is_present

#: Letter returned when nothing matches (or the model refused); it never equals an answer.
NO_MATCH = "Z"

#: Texts that make VLMEvalKit give up on the item at once (result Z, no text matching).
REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)

#: A prediction with this text skips letter matching (VLMEvalKit's marker for a failed API call); text matching
#: still runs. Kept for exactness; a local model never writes it by accident in practice.
API_FAILURE = "Failed to obtain answer via API"

# Characters VLMEvalKit turns into spaces before splitting into tokens. `<`, `>`, `/` and quotes are not among
# them, so "<answer>B</answer>" is a single token and matches no letter.
_SEPARATORS = str.maketrans({c: " " for c in ".()[],:;!*#{}"})

PROTOCOLS = ("answer_tag", "full_text")

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def answer_content(text: str) -> str:
    """The stripped content of the first ``<answer>…</answer>`` in ``text``, or the whole ``text`` without one."""
    text = "" if text is None else str(text)
    found = _ANSWER_TAG.search(text)
    return found.group(1).strip() if found else text


def choices_of(options: Mapping[str, object]) -> dict[str, str]:
    """The options whose cell is present and non-empty, as strings, in the given order."""
    return {letter: str(value) for letter, value in options.items() if is_present(value)}


def infer_letter(text: str, choices: Mapping[str, str]) -> str | None:
    """Step 1 (``can_infer_option``): a letter, ``Z`` for a refusal / lone ``Z`` token, or None for no match."""
    if API_FAILURE in text:
        return None
    if any(refusal in text for refusal in REFUSALS):
        return NO_MATCH
    tokens = set(text.translate(_SEPARATORS).split())
    found = [letter for letter in choices if letter in tokens]
    if len(found) == 1:
        return found[0]
    if not found and NO_MATCH in tokens:
        return NO_MATCH
    return None


def infer_text(text: str, choices: Mapping[str, str]) -> str | None:
    """Step 2 (``can_infer_text``): the one option whose lower-cased text occurs in the lower-cased ``text``."""
    lowered = text.lower()
    found = [letter for letter, option in choices.items() if option.lower() in lowered]
    return found[0] if len(found) == 1 else None


def match_option(text: str, options: Mapping[str, object]) -> str:
    """Map a model's answer ``text`` to an option letter of ``options`` (letter -> text), or ``Z`` for no match.

    Empty or missing options are not choices. A ``Z`` from letter matching is final; otherwise text matching is
    tried. A missing prediction (None/NaN) is treated as empty text. This is VLMEvalKit's default (non-verbose)
    behaviour: its verbose mode, and an older copy in the official reward code, also refuse a letter when ``A`` is
    a token among more than three (``A`` as an article); evaluation and reward share this one matcher instead.
    """
    text = "" if not is_present(text) else str(text)
    choices = choices_of(options)
    letter = infer_letter(text, choices)
    if letter is None:
        letter = infer_text(text, choices)
    return NO_MATCH if letter is None else letter


def extract(text: str, options: Mapping[str, object], protocol: str = "answer_tag") -> str:
    """Apply ``match_option`` under a scoring protocol: ``answer_tag`` (the <answer> content) or ``full_text``."""
    if protocol == "answer_tag":
        return match_option(answer_content("" if not is_present(text) else str(text)), options)
    if protocol == "full_text":
        return match_option(text, options)
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
