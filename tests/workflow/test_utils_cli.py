"""Shared helpers: atomic outputs never leave half-written results; the CLI reports user errors in one line."""

import os
import subprocess
import sys

import pytest

from spatialreasoner.prompts import format_question, present_options
from spatialreasoner.utils import atomic_path, redact


def test_atomic_file_is_renamed_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole"


def test_atomic_directory_replaces_an_old_one(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old").write_text("x")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.mkdir()
        raise ValueError
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_redact_hides_secret_values(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secretvalue123")
    assert redact("Authorization: Bearer hf_secretvalue123") == "Authorization: Bearer ***"


def test_redact_hides_credentials_carried_in_a_urls_query():
    signed = "GET https://b.s3.example/k.tar?X-Amz-Credential=AKIA9/x&X-Amz-Signature=beef01&X-Amz-Expires=60 failed"
    assert (
        redact(signed)
        == "GET https://b.s3.example/k.tar?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60 failed"
    )
    assert (
        redact("from https://u:pw@h/a?api_key=K1&rev=main&sig=S2#top")
        == "from https://***@h/a?api_key=***&rev=main&sig=***#top"
    )
    # parameters that name no credential, and text that is not a URL, stay as they are
    plain = "https://huggingface.co/api/models?search=qwen&limit=5 and token=abc"
    assert redact(plain) == plain


def test_question_prompt_lists_only_present_options():
    row = {"A": "yes", "B": "no", "C": float("nan"), "D": "  "}
    options = present_options(row)
    assert options == {"A": "yes", "B": "no"}
    assert format_question("Is it?", options) == (
        "Question: Is it?\nOptions:\nA. yes\nB. no\nPlease select the correct answer from the options above."
    )


def test_cli_reports_a_config_error_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: one\n")
    proc = subprocess.run(
        [sys.executable, "-m", "spatialreasoner.cli", "validate-config", str(bad)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "config key seed: 'one' is not of type 'integer'" in proc.stderr


def test_redacting_filter_hides_secrets_from_the_handlers_of_a_logger(monkeypatch):
    import io
    import logging

    from spatialreasoner.utils import RedactingFilter

    monkeypatch.setenv("HF_TOKEN", "hf_secretvalue123")
    url = "https://bob:hunter2pass@host/x.tar"
    stream = io.StringIO()
    logger = logging.getLogger("test-redacting-filter")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s [%(shellcmd)s]"))
    logger.addHandler(handler)
    logger.addFilter(RedactingFilter())
    try:
        logger.error("source %s: %s", url, "token hf_secretvalue123", extra={"shellcmd": "get hf_secretvalue123"})
        try:
            raise ValueError(f"bad url {url}")
        except ValueError:
            logger.exception("failed", extra={"shellcmd": url})
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[:2] == ["source https://***@host/x.tar: token *** [get ***]", "failed [https://***@host/x.tar]"]
    assert lines[-1] == "ValueError: bad url https://***@host/x.tar"
    assert "hunter2pass" not in stream.getvalue() and "hf_secretvalue123" not in stream.getvalue()
