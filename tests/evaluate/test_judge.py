"""Protocol vlmevalkit: VLMEvalKit's exact matcher on the whole reply, then its judge prompt sent to a real
OpenAI-compatible server (vLLM's, on CPU, serving the tiny model), replies cached per row, judged rows counted.

The tiny model's replies are nonsense, so these tests pin the plumbing on real responses: which rows are judged,
what is asked, that every reply is cached and reused, the seeded fallback, the key from the environment, scoring.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest

from spatialreasoner.errors import ConfigError, DataError
from spatialreasoner.evaluate import judge as J
from spatialreasoner.evaluate.score import score_file
from spatialreasoner.evaluate.tables import scoring_markdown

from .conftest import make_benchmark

OPTIONS = {"A": "yes", "B": "no", "C": "=1+1"}


# ----------------------------------------------------------------------------------------------- no server needed


def test_the_prompt_is_vlmevalkits():
    prompt = J.judge_prompt("Is the cube higher", {"A": "yes", "B": "no"}, "<think>hm</think><answer>no</answer>")
    assert prompt == (
        "You are an AI assistant who will help me to match an answer with several options of a single-choice "
        "question. You are provided with a question, several options, and an answer, and you need to find which "
        "option is most similar to the answer. If the meaning of all options are significantly different from the "
        "answer, output Z. Your should output a single uppercase character in A, B, C, D (if they are valid "
        "options), and Z. \nExample 1: \nQuestion: What is the main object in image?\nOptions: A. teddy bear "
        "B. rabbit C. cat D. dog\nAnswer: a cute teddy bear\nYour output: A\nExample 2: \nQuestion: What is the "
        "main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\nAnswer: Spider\nYour output: Z\n"
        "Example 3: \nQuestion: Is the cube higher?\nOptions: There are several options: \nA. yes\nB. no\n\n"
        "Answer: <think>hm</think><answer>no</answer>\nYour output: "
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("The answer is (A).", "A"),
        ("I'm sorry, but without the image provided I cannot say", "Z"),  # a refusal is final, never judged
        ("<think>a or b</think><answer>B</answer>", None),  # one token "<answer>B</answer>": no letter
        ("<think>yes, or maybe no</think>", None),  # two options' texts: undecided
        ("it is =1+1", "C"),
        ("", None),
    ],
)
def test_exact_matcher_on_the_whole_reply(text, expected):
    assert J.exact_letter(text, OPTIONS) == expected


def test_a_cut_cache_line_is_ignored_and_the_rest_kept(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text(json.dumps({"key": "k1", "reply": "A"}) + "\n" + '{"key": "k2", "rep')
    cache = J.ReplyCache(path)
    assert cache.get("k1") == "A" and cache.get("k2") is None
    cache.put("k3", "B")
    assert J.ReplyCache(path).get("k3") == "B"


def test_no_key_in_the_environment_is_a_config_error(monkeypatch):
    monkeypatch.delenv("SR_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="SR_TEST_NO_SUCH_KEY"):
        J.Judge("m", "http://127.0.0.1:9/v1", "SR_TEST_NO_SUCH_KEY", 8, 5)


# ----------------------------------------------------------------------------------------------- a real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def judge_server(tiny_model_dir, tmp_path_factory):
    """vLLM's OpenAI-compatible server on CPU serving the tiny model, requiring an API key."""
    port, key = _free_port(), secrets.token_hex(8)
    log = tmp_path_factory.mktemp("judge-server") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model_dir),
           "--served-model-name", "tiny-judge", "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
           "--host", "127.0.0.1", "--port", str(port), "--api-key", key]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 900
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not ready after 900 s:\n{log.read_text()[-3000:]}")
            time.sleep(2)
        yield {"base_url": base_url, "key": key, "model": "tiny-judge"}
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def predictions(tmp_path, replies):
    tmp_path.mkdir(parents=True, exist_ok=True)
    bench = tmp_path / "bench.tsv"
    ref = make_benchmark(bench, n=len(replies))
    preds = ref.drop(columns=["image"]).assign(prediction=replies)
    path = tmp_path / "preds.parquet"
    preds.to_parquet(path)
    return path, bench


REPLIES = [
    "A",  # exact
    "<think>The cube is higher, so yes, or no?</think><answer>A</answer>",  # undecided: judged
    "I'm sorry, but without the image provided I cannot answer",  # refusal: Z, not judged
    "<think>hm</think><answer>maybe</answer>",  # undecided: judged
]


@pytest.mark.slow
def test_undecided_rows_go_to_the_judge_and_every_reply_is_cached(judge_server, tmp_path, monkeypatch):
    monkeypatch.setenv("SR_TEST_JUDGE_KEY", judge_server["key"])
    preds, bench = predictions(tmp_path, REPLIES)
    cache, out = tmp_path / "cache" / "replies.jsonl", tmp_path / "judged.parquet"
    kw = dict(judge_model=judge_server["model"], api_key_env="SR_TEST_JUDGE_KEY", max_tokens=8, seed=3)
    first = J.judge_predictions(preds, bench, out, cache, base_url=judge_server["base_url"], **kw)
    judged = pd.read_parquet(out)
    assert judged["judged"].tolist() == [False, True, False, True]
    assert judged["letter"].tolist()[0] == "A" and judged["letter"].tolist()[2] == "Z"
    assert (first["exact"], first["judged"]) == (2, 2)
    # Each judged row asked until a reply matched an option or Z, at most 3 times; each real reply is cached.
    attempts = judged.loc[judged["judged"], "judge_attempts"]
    assert attempts.between(1, 3).all() and first["requests"] == attempts.sum()
    lines = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(lines) == first["requests"] and first["cached_replies"] == 0
    assert judged.loc[judged["judged"], "judge_reply"].isin([r["reply"] for r in lines]).all()
    for _, row in judged[judged["judged"]].iterrows():
        matched = J.exact_letter(row["judge_reply"], {"A": "yes", "B": "no", "C": "=1+1"})
        # a reply that names an option decides the row; after three that do not, the seeded fallback does
        assert row["fallback"] == (matched is None)
        assert row["letter"] == (matched if matched is not None else row["letter"])
        assert row["letter"] in {"A", "B", "C", "Z"}

    # Rerun against no server and without a key: every reply comes from the cache, the file is the same.
    monkeypatch.delenv("SR_TEST_JUDGE_KEY")
    again = J.judge_predictions(preds, bench, tmp_path / "again.parquet", cache,
                                base_url=f"http://127.0.0.1:{_free_port()}/v1", **kw)  # fmt: skip
    assert (again["requests"], again["cached_replies"]) == (0, first["requests"])
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "again.parquet"), judged)

    # One changed reply: only that row is asked again.
    monkeypatch.setenv("SR_TEST_JUDGE_KEY", judge_server["key"])
    changed = [*REPLIES[:3], "<think>still thinking</think>"]
    preds2, _ = predictions(tmp_path / "b", changed)
    third = J.judge_predictions(preds2, bench, tmp_path / "third.parquet", cache, base_url=judge_server["base_url"],
                                **kw)  # fmt: skip
    assert 1 <= third["requests"] <= 3 and third["cached_replies"] == attempts.iloc[0]

    # Scoring with the judged letters; a judged file of other predictions is refused.
    summary = score_file(preds, "3DSRBench", tmp_path / "score", protocol="vlmevalkit", reference=bench, judged=out)
    hits = pd.read_csv(tmp_path / "score" / "hits.csv", dtype=str)
    assert hits["extracted"].tolist() == judged["letter"].tolist()
    assert (summary["judged"], summary["protocol"]) == (2, "vlmevalkit")
    fallback = int(judged["fallback"].sum())
    assert summary["judge_fallback"] == fallback
    shown = scoring_markdown({"3DSRBench": {"m [vlmevalkit]": tmp_path / "score"}})
    undecided = summary["undecided"]
    assert (
        f"| 3DSRBench | m [vlmevalkit] | vlmevalkit | 2 ({fallback} by fallback); {undecided} undecided by the "
        f"matcher, judge: {summary['judge_model']} |" in shown
    ), shown
    with pytest.raises(DataError, match="judged on another prediction"):
        score_file(preds2, "3DSRBench", tmp_path / "s2", protocol="vlmevalkit", reference=bench, judged=out)


@pytest.mark.slow
def test_a_wrong_key_fails_without_showing_it(judge_server, tmp_path, monkeypatch):
    wrong = "wrong-" + secrets.token_hex(6)
    monkeypatch.setenv("SR_TEST_JUDGE_KEY", wrong)
    preds, bench = predictions(tmp_path, REPLIES)
    with pytest.raises(DataError) as info:
        J.judge_predictions(preds, bench, tmp_path / "j.parquet", tmp_path / "c.jsonl", judge_model="tiny-judge",
                            base_url=judge_server["base_url"], api_key_env="SR_TEST_JUDGE_KEY", max_tokens=8)  # fmt: skip
    assert "AuthenticationError" in str(info.value) and wrong not in str(info.value)
    assert not (tmp_path / "j.parquet").exists()
