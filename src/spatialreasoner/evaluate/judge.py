"""VLMEvalKit's answer extraction with an LLM judge (`evaluate.protocol: vlmevalkit`), through any OpenAI-compatible
endpoint: the exact matcher on the whole reply first, VLMEvalKit's judge prompt for the rows it cannot decide.

Every judge reply is appended to a cache file as it arrives (keyed by the judge model and the exact prompt), so a
rerun, or a run killed half-way, asks only for what is missing. The API key comes from the environment only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from spatialreasoner.errors import ConfigError, DataError
from spatialreasoner.matcher import NO_MATCH, choices_of, infer_letter, infer_text
from spatialreasoner.prompts import OPTION_LETTERS, is_present
from spatialreasoner.utils import atomic_path, redact, redact_url, register_secret

log = logging.getLogger(__name__)

#: The judge VLMEvalKit's multiple-choice evaluation used (``chatgpt-0125``).
DEFAULT_JUDGE_MODEL = "gpt-3.5-turbo-0125"
#: VLMEvalKit's judge settings: temperature 0, 2048 new tokens, three attempts per row.
DEFAULT_MAX_TOKENS = 2048
DEFAULT_ATTEMPTS = 3
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
#: Columns of a judged file, after ``index``.
COLUMNS = ("prediction", "exact", "judged", "judge_attempts", "judge_reply", "fallback", "letter", "judge_model")

# VLMEvalKit's `build_prompt` (vlmeval/dataset/utils/multiple_choice.py), character for character.
JUDGE_TEMPLATE = (
    "You are an AI assistant who will help me to match "
    "an answer with several options of a single-choice question. "
    "You are provided with a question, several options, and an answer, "
    "and you need to find which option is most similar to the answer. "
    "If the meaning of all options are significantly different from the answer, output Z. "
    "Your should output a single uppercase character in A, B, C, D (if they are valid options), and Z. \n"
    "Example 1: \n"
    "Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: a cute teddy bear\nYour output: A\n"
    "Example 2: \n"
    "Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: Spider\nYour output: Z\n"
    "Example 3: \n"
    "Question: {}?\nOptions: {}\nAnswer: {}\nYour output: "
)


def option_text(choices: Mapping[str, str]) -> str:
    """VLMEvalKit's ``build_option_str``."""
    return "There are several options: \n" + "".join(f"{letter}. {text}\n" for letter, text in choices.items())


def judge_prompt(question: str, choices: Mapping[str, str], prediction: str) -> str:
    return JUDGE_TEMPLATE.format(question, option_text(choices), prediction)


def exact_letter(text: str, choices: Mapping[str, str]) -> str | None:
    """VLMEvalKit's ``can_infer`` on the whole reply: a letter, ``Z`` (a refusal), or None (undecided)."""
    letter = infer_letter(text, choices)
    return letter if letter is not None else infer_text(text, choices)


def cache_key(judge_model: str, prompt: str, attempt: int) -> str:
    return hashlib.sha256(f"{judge_model}\n{attempt}\n{prompt}".encode()).hexdigest()


class ReplyCache:
    """Judge replies by key, read from and appended to a JSON-lines file (one reply per line, flushed at once)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.replies: dict[str, str] = {}
        self.hits = 0
        self._lock = threading.Lock()
        if self.path.is_file():
            text = self.path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):
                with self.path.open("a", encoding="utf-8") as f:
                    f.write("\n")  # so that the next reply does not extend a line cut by a killed job
            for n, line in enumerate(text.splitlines(), 1):
                try:
                    record = json.loads(line)
                    self.replies[record["key"]] = str(record["reply"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    # A line cut by a killed job; everything before it is kept.
                    log.warning("%s line %d is not a cached reply; ignored", self.path, n)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> str | None:
        with self._lock:
            reply = self.replies.get(key)
            if reply is not None:
                self.hits += 1
            return reply

    def put(self, key: str, reply: str) -> None:
        with self._lock:
            self.replies[key] = reply
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n")


class Judge:
    """An OpenAI-compatible chat endpoint asked with VLMEvalKit's settings (temperature 0, no system prompt)."""

    def __init__(self, model: str, base_url: str | None, key_env: str, max_tokens: int, timeout: float):
        key = os.environ.get(key_env)
        if not key:
            raise ConfigError(
                f"evaluate.judge: the environment variable {key_env} (evaluate.judge.api_key_env) holds no API key; "
                "set it (a local server without authentication accepts any value)"
            )
        from urllib.parse import urlsplit

        from openai import OpenAI

        register_secret(key)  # a server may echo it (e.g. in a 401 reply's body): it is redacted everywhere
        if base_url:
            register_secret(urlsplit(base_url).password)
        self.model, self.base_url, self.max_tokens = model, base_url, max_tokens
        self.endpoint = redact_url(base_url) if base_url else "the OpenAI API"
        self.client = OpenAI(api_key=key, base_url=base_url, timeout=timeout)
        self.requests = 0
        self._lock = threading.Lock()

    def ask(self, prompt: str) -> str:
        import openai

        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model=self.model,
                messages=[{"role": "user", "content": prompt}],
                temperature=0,
                max_tokens=self.max_tokens,
            )
        except openai.APIError as exc:  # a server's reply may echo the key: it is redacted (a registered secret)
            body = getattr(getattr(exc, "response", None), "text", "") or ""
            sent = f"; it sent {redact(_shown(body))!r}" if body and _shown(body) not in str(exc) else ""
            raise DataError(
                f"judge {self.model!r} at {self.endpoint} failed: {type(exc).__name__}: {redact(str(exc))}{sent}; "
                "replies received so far are cached, rerun to continue"
            ) from exc
        reply = self.reply_text(raw.status_code, raw.headers.get("content-type", ""), raw.text)
        with self._lock:
            self.requests += 1
        return reply

    def reply_text(self, status: int, content_type: str, body: str) -> str:
        """The first choice's message text of a chat completion's body; DataError naming the endpoint and showing
        what came back when the body is anything else (an HTML page, cut JSON, no choices, no message)."""
        problem = None
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            data, problem = None, f"not JSON ({exc.msg} at character {exc.pos})"
        if problem is None:
            choices = data.get("choices") if isinstance(data, dict) else None
            message = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
            if not isinstance(choices, list) or not choices:
                problem = "no choices"
            elif not isinstance(message, dict) or not isinstance(message.get("content", 0), (str, type(None))):
                problem = "its first choice has no message text"
            elif "content" not in message:
                problem = "its first choice's message has no content"
            else:
                return message["content"] or ""
        shown = _shown(body)
        raise DataError(
            f"judge {self.model!r} at {self.endpoint} answered HTTP {status} ({content_type or 'no content type'}) "
            f"with a reply that is not a chat completion: {problem}; it sent {redact(shown)!r}. Check "
            "evaluate.judge.base_url (an OpenAI-compatible endpoint ending in /v1); replies received so far are "
            "cached, rerun to continue"
        )


def _shown(body: str, limit: int = 300) -> str:
    """A server's reply body on one line, cut to ``limit`` characters."""
    text = " ".join(body.split())
    return text[:limit] + ("..." if len(text) > limit else "")


class LazyJudge:
    """The judge, made at the first reply that is not cached: a fully cached rerun needs neither key nor server."""

    def __init__(self, make):
        self._make, self._judge, self._lock = make, None, threading.Lock()

    @property
    def requests(self) -> int:
        return self._judge.requests if self._judge else 0

    def ask(self, prompt: str) -> str:
        with self._lock:
            if self._judge is None:
                self._judge = self._make()
        return self._judge.ask(prompt)


def judge_row(row: Mapping, judge, cache: ReplyCache, judge_model: str, attempts: int, seed: int):
    """One row: the exact matcher on the whole reply, else up to ``attempts`` judge replies matched the same way,
    else (as VLMEvalKit) a random choice among the options and Z, seeded per row here."""
    choices = choices_of({k: row.get(k) for k in OPTION_LETTERS})
    prediction = "" if not is_present(row.get("prediction")) else str(row["prediction"])
    out = {"index": row["index"], "prediction": prediction, "exact": exact_letter(prediction, choices)}
    out |= {"judged": False, "judge_attempts": 0, "judge_reply": None, "fallback": False, "letter": out["exact"]}
    if out["exact"] is not None:
        return out
    prompt = judge_prompt(str(row.get("question", "")), choices, prediction)
    out["judged"] = True
    for attempt in range(attempts):
        key = cache_key(judge_model, prompt, attempt)
        reply = cache.get(key)
        if reply is None:
            reply = judge.ask(prompt)
            cache.put(key, reply)
        out["judge_attempts"], out["judge_reply"] = attempt + 1, reply
        letter = exact_letter(reply, choices)
        if letter is not None:
            out["letter"] = letter
            return out
    out["fallback"] = True
    rng = random.Random(f"{seed}:{row['index']}")
    out["letter"] = rng.choice([*choices, NO_MATCH])
    return out


def exact_only_row(row: Mapping) -> dict:
    """One row as the VLMEvalKit fork decides it when no judge is available (``exact_matching``, or no API key): the
    exact matcher on the whole reply, and ``Z`` (a miss) for every row it cannot decide (``extract_answer_from_item``
    in ``vlmeval/dataset/utils/multiple_choice.py``)."""
    choices = choices_of({k: row.get(k) for k in OPTION_LETTERS})
    prediction = "" if not is_present(row.get("prediction")) else str(row["prediction"])
    exact = exact_letter(prediction, choices)
    return {"index": row["index"], "prediction": prediction, "exact": exact, "judged": False, "judge_attempts": 0,
            "judge_reply": None, "fallback": False, "letter": NO_MATCH if exact is None else exact}  # fmt: skip


def judge_predictions(
    predictions: str | Path,
    reference: str | Path,
    out: str | Path,
    cache: str | Path,
    judge_model: str | None = DEFAULT_JUDGE_MODEL,
    base_url: str | None = None,
    api_key_env: str = DEFAULT_KEY_ENV,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    attempts: int = DEFAULT_ATTEMPTS,
    workers: int = 4,
    timeout: float = 120.0,
    seed: int = 42,
) -> dict:
    """Decide every row of ``predictions`` (benchmark columns from ``reference``) and write the judged file.

    ``judge_model`` None: no judge endpoint; every row is decided as the fork does without a judge
    (:func:`exact_only_row`), and no key or server is needed."""
    from spatialreasoner.evaluate.score import join_reference, read_table

    start = time.perf_counter()
    if attempts < 1 or workers < 1 or max_tokens < 1:
        raise ConfigError("evaluate.judge: attempts, workers and max_tokens must be at least 1")
    predictions, reference, out = Path(predictions), Path(reference), Path(out)
    ref = read_table(reference)
    df = join_reference(read_table(predictions), ref, str(predictions), str(reference))
    rows = df.to_dict("records")
    cache = ReplyCache(Path(cache))
    undecided = sum(
        exact_letter("" if not is_present(r.get("prediction")) else str(r["prediction"]),
                     choices_of({k: r.get(k) for k in OPTION_LETTERS})) is None
        for r in rows
    )  # fmt: skip
    judge = LazyJudge(lambda: Judge(judge_model, base_url, api_key_env, max_tokens, timeout))
    if judge_model is None:
        log.info("%s: %d rows, no judge: the %d the exact matcher cannot decide count as misses (Z), as VLMEvalKit "
                 "scores without one", predictions, len(rows), undecided)  # fmt: skip
        results = [exact_only_row(r) for r in rows]
    else:
        log.info("%s: %d rows, %d undecided by the exact matcher go to judge %s", predictions, len(rows), undecided,
                 judge_model)  # fmt: skip
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda r: judge_row(r, judge, cache, judge_model, attempts, seed), rows))
    table = pd.DataFrame(results, columns=["index", *COLUMNS]).assign(judge_model=judge_model)
    with atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False)
    summary = {
        "rows": len(table),
        "exact": int((~table["judged"]).sum()),
        "undecided": undecided,
        "judged": int(table["judged"].sum()),
        "fallback": int(table["fallback"].sum()),
        "requests": judge.requests,
        "cached_replies": cache.hits,
        "judge_model": judge_model,
        "seconds": round(time.perf_counter() - start, 2),
    }
    log.info(
        "%d rows: %d by the exact matcher, %d judged (%d requests, %d cached replies), %d by random fallback -> %s",
        summary["rows"], summary["exact"], summary["judged"], summary["requests"], summary["cached_replies"],
        summary["fallback"], out,
    )  # fmt: skip
    return summary


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--predictions", required=True, help="predictions file (index, prediction)")
    parser.add_argument("--reference", required=True, help="the benchmark TSV (question and options)")
    parser.add_argument("--out", required=True, help="judged file (.parquet): the letter of every row")
    parser.add_argument("--cache", required=True, help="JSON-lines file of judge replies, reused and appended")
    parser.add_argument("--judge-model", default=DEFAULT_JUDGE_MODEL, help=f"default {DEFAULT_JUDGE_MODEL}")
    parser.add_argument(
        "--no-judge",
        action="store_true",
        help="no judge endpoint: rows the exact matcher cannot decide count as misses, as VLMEvalKit without one",
    )
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (default: the OpenAI API)")
    parser.add_argument(
        "--api-key-env",
        default=DEFAULT_KEY_ENV,
        help=f"environment variable holding the key (default {DEFAULT_KEY_ENV})",
    )
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    parser.add_argument("--attempts", type=int, default=DEFAULT_ATTEMPTS, help="judge replies tried per row")
    parser.add_argument("--workers", type=int, default=4, help="concurrent judge requests")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--seed", type=int, default=42, help="seed of the random fallback (per row)")


def run(args: argparse.Namespace) -> int:
    summary = judge_predictions(
        args.predictions,
        args.reference,
        args.out,
        args.cache,
        judge_model=None if args.no_judge else args.judge_model,
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        max_tokens=args.max_tokens,
        attempts=args.attempts,
        workers=args.workers,
        timeout=args.timeout,
        seed=args.seed,
    )
    print(json.dumps(summary))
    return 0
