"""GRPO reward functions (format, strict format, accuracy, reasoning steps, 3D-aware process) and their registry.

Each reward is ``f(completions, **columns) -> list[float]``: one float per completion, never an exception on odd text.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from spatialreasoner.errors import ConfigError
from spatialreasoner.matcher import answer_content, match_option
from spatialreasoner.prompts import OPTION_LETTERS, is_present

log = logging.getLogger(__name__)

RewardFunc = Callable[..., list[float]]


def completion_text(completion) -> str:
    """The text of one completion as TRL passes it: a string, or chat messages whose last turn is the answer."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        content = completion.get("content", "")
    elif isinstance(completion, Sequence) and completion:
        return completion_text(completion[-1])
    else:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):  # content blocks: [{"type": "text", "text": ...}, ...]
        return "".join(str(b.get("text") or "") for b in content if isinstance(b, Mapping))
    return "" if content is None else str(content)


def _safe(name: str, func: Callable[[str, int], float], completions) -> list[float]:
    """Apply ``func(text, i)`` to every completion; a failure scores that completion 0 and is logged, never raised."""
    rewards = []
    for i, completion in enumerate(completions):
        try:
            rewards.append(float(func(completion_text(completion), i)))
        except Exception:  # a reward must never stop training; the log shows the cause
            log.warning("%s reward failed on completion %d; scored 0", name, i, exc_info=True)
            rewards.append(0.0)
    return rewards


def _column(kwargs: Mapping, name: str, i: int):
    values = kwargs.get(name)
    if values is None:
        return None
    try:
        return values[i]
    except (IndexError, KeyError, TypeError):
        return None


# --- format ---------------------------------------------------------------------------------------------------------

# The official check, verbatim: re.match anchors the start; with MULTILINE, `$` also matches before any newline, so
# a trailing newline, and further lines after the line that ends with `</answer>`, still pass.
FORMAT_PATTERN = re.compile(r"^<think>.*?</think>\s*<answer>.*?</answer>$", re.DOTALL | re.MULTILINE)
# The stricter variant: the whole completion is exactly the two blocks (nothing before, between or after them).
STRICT_FORMAT_PATTERN = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)


def format_reward(completions, **kwargs) -> list[float]:
    """1.0 if the completion starts with ``<think>…</think>``, then optional white space and ``<answer>…</answer>``
    ending a line (the official reward's ``re.match`` with DOTALL | MULTILINE), else 0.0."""
    return _safe("format", lambda text, i: 1.0 if FORMAT_PATTERN.match(text) else 0.0, completions)


def strict_format_reward(completions, **kwargs) -> list[float]:
    """1.0 if the completion is exactly ``<think>…</think>``, optional white space, ``<answer>…</answer>``."""
    return _safe("format_strict", lambda text, i: 1.0 if STRICT_FORMAT_PATTERN.fullmatch(text) else 0.0, completions)


# --- accuracy -------------------------------------------------------------------------------------------------------


def options_of_row(kwargs: Mapping, i: int) -> dict[str, str]:
    """The non-empty option cells (columns ``A``, ``B``, …) of row ``i`` of the reward's keyword columns."""
    options = {}
    for letter in OPTION_LETTERS:
        if letter not in kwargs:
            if letter > "D":
                break
            continue
        value = _column(kwargs, letter, i)
        if is_present(value):
            options[letter] = str(value)
    return options


def names_other_option(content: str, options: Mapping[str, str]) -> bool:
    """True if ``content`` starts with ``X.`` for an option X but also contains another option's text.

    Such an answer ("A. left ... but the right side ...") is ambiguous; the official reward scores it 0. Only the
    first option letter the content starts with is checked, as in the official code.
    """
    for letter in options:
        if content.startswith(letter + "."):
            return any(text in content for other, text in options.items() if other != letter)
    return False


def accuracy_reward(completions, answer=None, **kwargs) -> list[float]:
    """1.0 if the first ``<answer>`` content (else the whole completion) maps to the ground-truth option letter.

    Mapping uses the evaluation's matcher (``spatialreasoner.matcher.match_option``, VLMEvalKit's deterministic
    matcher in its default, non-verbose mode). The official reward carried an older copy that additionally refused a
    letter when ``A`` is a token among more than three; we use the single matcher the benchmarks are scored with, so
    that the reward and the reported accuracy agree. As in the official reward: 1.0 when all options are identical
    (any answer is right), and 0.0 for an answer that starts with ``X.`` but also quotes another option's text. The
    official code returned a bare 0.0 for the whole batch in that case; here only that completion scores 0.
    """

    def score(text: str, i: int) -> float:
        truth = _column({"answer": answer}, "answer", i)
        if not is_present(truth):
            return 0.0
        options = options_of_row(kwargs, i)
        if options and len(set(options.values())) == 1:
            return 1.0
        content = answer_content(text).strip()
        if names_other_option(content, options):
            return 0.0
        return 1.0 if match_option(content, options) == str(truth).strip() else 0.0

    return _safe("accuracy", score, completions)


# --- reasoning steps ------------------------------------------------------------------------------------------------

# "Step N:", numbered lines ("1."), bullets ("- ", "* ") at a line start, and transition words. The official pattern
# anchored numbered lines with `^` but without MULTILINE, so only a number at the very start counted; we count every
# numbered line. A numbered line is "N." followed by white space or the line's end, so "3.5 meters" is no step.
STEP_PATTERN = re.compile(
    r"(Step \d+:|^[ \t]*\d+\.(?=\s|$)|^[ \t]*[-*][ \t]|First,|Second,|Next,|Finally,|Therefore,)", re.MULTILINE
)


def reasoning_steps_reward(completions, **kwargs) -> list[float]:
    """Number of step markers divided by 3, capped at 1.0 (three or more steps earn the full reward)."""
    return _safe("reasoning_steps", lambda text, i: min(1.0, len(STEP_PATTERN.findall(text)) / 3), completions)


# --- 3D-aware process reward ----------------------------------------------------------------------------------------

# The official module's phrase patterns: decimals only ("1.50", not "1"), a space before each number or vector, and
# vectors written "(x, y, z)" with exactly ", " between their numbers.
_DEC = r"-?\d+\.\d+"
_DEC_VEC = rf"\({_DEC}, {_DEC}, {_DEC}\)"

#: Phrase kinds of explicit 3D reasoning and how each is recognised (case-insensitive, within one line), as the
#: official reward module wrote them. ``cos_or_angle`` is one kind found by either of two phrasings.
PHRASES: dict[str, tuple[re.Pattern, ...]] = {
    "location": (re.compile(rf"3D location of .*? {_DEC_VEC}", re.IGNORECASE),),
    "vector": (re.compile(rf"vector from .*? to .*? {_DEC_VEC}", re.IGNORECASE),),
    "camera_distance": (re.compile(r"distance from .*? to the camera .*? \d+\.\d+", re.IGNORECASE),),
    "distance_between": (re.compile(r"distance between .*? \d+\.\d+", re.IGNORECASE),),
    "cos_or_angle": (
        re.compile(rf"cosine similarity between .*? {_DEC}", re.IGNORECASE),
        re.compile(r"angle between .*? \d+", re.IGNORECASE),
    ),
    "front": (re.compile(rf"front direction of .*? {_DEC_VEC}", re.IGNORECASE),),
    "left": (re.compile(rf"left direction of .*? {_DEC_VEC}", re.IGNORECASE),),
}

_NUM = r"-?\d+(?:\.\d+)?"
_VEC = rf"\(\s*{_NUM},\s*{_NUM},\s*{_NUM}\s*\)"

#: The same kinds, recognised more leniently (reward ``process_lenient``): integers count as numbers, negative
#: distances too, and spacing inside and before a vector is free ("(1,2, 3)", "at(1.0, 2.0, 3.0)").
LENIENT_PHRASES: dict[str, tuple[re.Pattern, ...]] = {
    "location": (re.compile(rf"3D location of .*?{_VEC}", re.IGNORECASE),),
    "vector": (re.compile(rf"vector from .*? to .*?{_VEC}", re.IGNORECASE),),
    "camera_distance": (re.compile(rf"distance from .*? to the camera .*?{_NUM}", re.IGNORECASE),),
    "distance_between": (re.compile(rf"distance between .*?{_NUM}", re.IGNORECASE),),
    "cos_or_angle": (
        re.compile(rf"cosine similarity between .*?{_NUM}", re.IGNORECASE),
        re.compile(r"angle between .*?\d+", re.IGNORECASE),
    ),
    "front": (re.compile(rf"front direction of .*?{_VEC}", re.IGNORECASE),),
    "left": (re.compile(rf"left direction of .*?{_VEC}", re.IGNORECASE),),
}
KINDS = tuple(PHRASES)


def _required(**counts: int) -> Counter:
    return Counter(counts)


#: The multiset of phrase kinds each 3DSRBench subtype's reasoning needs (the official reward module's table).
REQUIRED: dict[str, Counter] = {
    "height_higher": _required(location=2),
    "location_above": _required(location=2),
    "location_closer_to_camera": _required(location=2, camera_distance=2),
    "location_next_to": _required(location=2, distance_between=1),
    "orientation_in_front_of": _required(location=2, vector=1, front=1, cos_or_angle=1),
    "orientation_on_the_left": _required(location=2, vector=1, left=1, cos_or_angle=1),
    "orientation_viewpoint": _required(location=1, vector=1, front=1, left=1, cos_or_angle=2),
    "multi_object_closer_to": _required(location=3, distance_between=2),
    "multi_object_parallel": _required(front=2, cos_or_angle=1),
    "multi_object_same_direction": _required(front=2, cos_or_angle=1),
    "multi_object_facing": _required(location=3, front=1, vector=2, cos_or_angle=2),
    "multi_object_viewpoint_towards_object": _required(location=2, vector=1, front=1, left=1, cos_or_angle=2),
}


def count_phrases(text: str, phrases: Mapping[str, tuple[re.Pattern, ...]] = PHRASES) -> Counter:
    """How many phrases of each kind ``text`` states (``phrases``: the official patterns, or ``LENIENT_PHRASES``).

    For ``cos_or_angle`` the larger of the cosine count and the angle count is taken: a cosine and the angle derived
    from it describe the same quantity, so stating both is not two findings. (The official module summed both and
    subtracted one when both occurred; it never ran, because it failed at import.)
    """
    found = Counter()
    for kind, patterns in phrases.items():
        found[kind] = max(len(p.findall(text)) for p in patterns)
    return found


def process_confusion(found: Mapping[str, int], required: Mapping[str, int]) -> dict[str, int]:
    """TP/FN/FP/TN over phrase kinds: TP, FN and FP count phrases, TN counts kinds neither required nor found."""
    tp = sum(min(found.get(k, 0), required.get(k, 0)) for k in KINDS)
    fn = sum(max(required.get(k, 0) - found.get(k, 0), 0) for k in KINDS)
    fp = sum(max(found.get(k, 0) - required.get(k, 0), 0) for k in KINDS)
    tn = sum(1 for k in KINDS if required.get(k, 0) == 0 and found.get(k, 0) == 0)
    return {"tp": tp, "fn": fn, "fp": fp, "tn": tn}


_warned_categories: set[str] = set()


def process_reward(completions, category=None, phrases=PHRASES, **kwargs) -> list[float]:
    """3D-aware process reward: accuracy (TP+TN)/(TP+TN+FP+FN) of the phrase kinds stated vs. those required,
    phrases recognised by the official patterns (``process_lenient``: by ``LENIENT_PHRASES``).

    The required multiset comes from the row's 3DSRBench subtype (``category``); a category outside the table scores
    0.0 (with one warning per category), since there is no reference for its reasoning. Every kind contributes to
    at least one term, so the denominator is never zero.
    """

    def score(text: str, i: int) -> float:
        cat = _column({"category": category}, "category", i)
        required = REQUIRED.get(str(cat))
        if required is None:
            if str(cat) not in _warned_categories:
                _warned_categories.add(str(cat))
                log.warning("process reward: no required phrases for category %r; scored 0", cat)
            return 0.0
        c = process_confusion(count_phrases(text, phrases), required)
        return (c["tp"] + c["tn"]) / (c["tp"] + c["tn"] + c["fp"] + c["fn"])

    return _safe("process", score, completions)


def process_lenient_reward(completions, category=None, **kwargs) -> list[float]:
    """The 3D-aware process reward with the lenient phrase patterns (integers, free spacing in vectors)."""
    return process_reward(completions, category=category, phrases=LENIENT_PHRASES)


# --- registry -------------------------------------------------------------------------------------------------------

REWARDS: dict[str, RewardFunc] = {
    "format": format_reward,
    "format_strict": strict_format_reward,
    "accuracy": accuracy_reward,
    "reasoning_steps": reasoning_steps_reward,
    "process": process_reward,
    "process_lenient": process_lenient_reward,
}


def resolve_reward(name: str) -> RewardFunc:
    """A registered reward by name, or any importable function written ``package.module:function``."""
    if name in REWARDS:
        return REWARDS[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            func = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"reward {name!r}: cannot import {attr!r} from {module_name!r} ({exc})") from exc
        if not callable(func):
            raise ConfigError(f"reward {name!r} is not callable")
        return func
    raise ConfigError(f"unknown reward {name!r}; expected one of {', '.join(REWARDS)} or 'module:function'")


def resolve_rewards(names: Sequence[str]) -> list[RewardFunc]:
    if not names:
        raise ConfigError("runs.<run>.rewards is empty; a GRPO run needs at least one reward")
    return [resolve_reward(n) for n in names]
