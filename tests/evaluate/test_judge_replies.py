"""Judge servers that misbehave: replies that are not a chat completion end in one clear error naming the endpoint
and what came back (replies so far stay cached), and a server echoing the API key never gets it printed."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from spatialreasoner.errors import DataError
from spatialreasoner.evaluate import judge as J

from .test_judge import REPLIES, predictions

KEY = "sk-test-5f0c1d2e3b4a69788796a5b4c3d2e1f0"


def completion(text: str) -> bytes:
    return json.dumps(
        {"id": "c", "object": "chat.completion", "created": 0, "model": "j",
         "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]}
    ).encode()  # fmt: skip


@pytest.fixture
def server():
    """A server answering each POST with the next (status, content type, body) of ``script``; the last repeats."""
    script: list[tuple[int, str, bytes | None]] = []
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, ctype, body = script[min(len(asked), len(script) - 1)]
            asked.append(self.path)
            if body is None:  # echo the request's headers, as some proxies do on errors
                body = json.dumps({"error": {"message": f"bad key; headers: {dict(self.headers)}"}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", script, asked
    httpd.shutdown()
    httpd.server_close()


def run_judge_cli(tmp_path: Path, base_url: str, monkeypatch, capsys) -> tuple[int, str]:
    """The ``judge`` command as a job runs it (its exit code and stderr), the key in the environment."""
    from spatialreasoner.cli import main

    preds, bench = predictions(tmp_path, REPLIES)
    monkeypatch.setenv("SR_TEST_JUDGE_KEY", KEY)
    code = main(["--log", str(tmp_path / "judge.log"), "judge", "--predictions", str(preds), "--reference", str(bench),
                 "--out", str(tmp_path / "judged.parquet"), "--cache", str(tmp_path / "cache.jsonl"), "--judge-model",
                 "j", "--base-url", base_url, "--api-key-env", "SR_TEST_JUDGE_KEY", "--attempts", "1", "--workers",
                 "1", "--timeout", "10"])  # fmt: skip
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_a_server_echoing_the_key_never_gets_it_printed(server, tmp_path, monkeypatch, capsys):
    base_url, script, _ = server
    script.append((401, "application/json", None))
    code, stderr = run_judge_cli(tmp_path, base_url, monkeypatch, capsys)
    log = (tmp_path / "judge.log").read_text()
    assert code == 2
    assert "Bearer" in stderr and "Bearer" in log  # the server's reply is shown ...
    assert KEY not in stderr and KEY not in log  # ... without the key
    assert KEY[:12] not in stderr + log
    assert base_url in stderr


BAD_REPLIES = [
    ((200, "text/html", b"<html><body>Welcome to nginx!</body></html>"), "<html><body>Welcome to nginx!"),
    ((200, "application/json", completion("A")[:40]), '{"id": "c", "object"'),
    ((200, "application/json", json.dumps({"id": "c", "choices": []}).encode()), '"choices": []'),
    ((200, "application/json", b'{"choices": [{"message": {"role": "assistant"}}]}'), '"role": "assistant"'),
]


@pytest.mark.parametrize("reply, shown", BAD_REPLIES, ids=["html", "truncated-json", "no-choices", "no-content"])
def test_a_reply_that_is_not_a_chat_completion_names_the_endpoint(server, tmp_path, monkeypatch, reply, shown):
    base_url, script, asked = server
    script += [(200, "application/json", completion("B")), reply]
    monkeypatch.setenv("SR_TEST_JUDGE_KEY", KEY)
    preds, bench = predictions(tmp_path, REPLIES)
    cache = tmp_path / "cache.jsonl"
    with pytest.raises(DataError) as err:
        J.judge_predictions(preds, bench, tmp_path / "j.parquet", cache, judge_model="j", base_url=base_url,
                            api_key_env="SR_TEST_JUDGE_KEY", attempts=1, workers=1)  # fmt: skip
    message = str(err.value)
    assert f"judge 'j' at {base_url} answered HTTP 200" in message and "not a chat completion" in message
    assert shown in message
    assert not (tmp_path / "j.parquet").exists()
    # The first reply (before the bad one) stays cached: a rerun asks only for the rest.
    assert [json.loads(line)["reply"] for line in cache.read_text().splitlines()] == ["B"] and len(asked) == 2


def test_a_judge_job_given_an_html_page_ends_with_one_line_naming_the_endpoint(server, tmp_path, monkeypatch, capsys):
    base_url, script, _ = server
    script += [BAD_REPLIES[0][0]]
    code, stderr = run_judge_cli(tmp_path, base_url, monkeypatch, capsys)
    assert code == 2 and "Traceback" not in stderr, stderr[-3000:]
    assert f"judge 'j' at {base_url} answered HTTP 200 (text/html)" in stderr
    assert "Welcome to nginx!" in (tmp_path / "judge.log").read_text()


def test_secrets_of_the_environment_are_redacted_from_any_message(monkeypatch):
    from spatialreasoner.utils import redact, register_secret

    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    monkeypatch.setenv("MY_SERVICE_API_KEY", "svc-0123456789")
    register_secret("registered-secret-value")
    text = redact("hf_abcdefghijklmnop svc-0123456789 registered-secret-value https://bob:pa55w0rd@host/x ok")
    assert text == "*** *** *** https://***@host/x ok"


def test_an_uncaught_library_exception_is_redacted(tmp_path):
    code = (
        "import sys; sys.argv = ['spatialreasoner', '--log', sys.argv[1], 'validate-config', 'x.yaml'];"
        "import spatialreasoner.config as c;"
        "c.run = lambda args: (_ for _ in ()).throw(RuntimeError('boom with ' + __import__('os').environ['HF_TOKEN']));"
        "from spatialreasoner.cli import main; sys.exit(main())"
    )
    env = {**os.environ, "HF_TOKEN": "hf_zyxwvutsrqponmlk"}
    log = tmp_path / "x.log"
    proc = subprocess.run([sys.executable, "-c", code, str(log)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode != 0 and "boom with ***" in proc.stderr and "RuntimeError" in proc.stderr
    assert "hf_zyxwvutsrqponmlk" not in proc.stderr + (log.read_text() if log.exists() else "")
