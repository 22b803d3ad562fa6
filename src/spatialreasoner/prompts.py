"""The question prompt shared by training and inference, as in the official SpatialReasoner code."""

from __future__ import annotations

import math
import string
from collections.abc import Mapping

OPTION_LETTERS = tuple(string.ascii_uppercase)


def is_present(value) -> bool:
    """True for a non-empty option cell (not None, not NaN, not blank)."""
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return str(value).strip() != ""


def present_options(row: Mapping) -> dict[str, str]:
    """The option letters of ``row`` (columns ``A``, ``B``, ...) whose cell is present, in letter order."""
    options = {}
    for letter in OPTION_LETTERS:
        if letter not in row:
            if letter > "D":
                break
            continue
        if is_present(row[letter]):
            options[letter] = str(row[letter])
    return options


def format_question(question: str, options: Mapping[str, str]) -> str:
    """``Question: …\\nOptions:\\nA. …\\n…\\nPlease select the correct answer from the options above.``"""
    lines = [f"Question: {question}", "Options:"]
    lines += [f"{letter}. {text}" for letter, text in options.items() if is_present(text)]
    lines.append("Please select the correct answer from the options above.")
    return "\n".join(lines)
