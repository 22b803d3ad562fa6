"""fetch: real HTTP transfers against a loopback server (resume, retries, checksums), file:// and plain paths."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import threading

import pytest

from spatialreasoner.data.fetch import auth_headers, fetch, lock_path, part_path
from spatialreasoner.errors import DataError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, not compressible into anything clever


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Server:
    """A loopback HTTP server whose behaviour the test scripts request by request."""

    def __init__(self):
        self.payload = PAYLOAD
        # per request: "ok", "cut" (send half, then drop), "norange" (ignore Range), "503", "500", "404"
        self.plan: list[str] = []
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                action = server.plan.pop(0) if server.plan else "ok"
                server.requests.append({"path": self.path, "headers": dict(self.headers), "action": action})
                if action in ("500", "503", "404"):
                    body = b"nope"
                    self.send_response(int(action))
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data, start = server.payload, 0
                rng = self.headers.get("Range") if action != "norange" else None
                if rng and rng.startswith("bytes="):
                    start = int(rng[len("bytes=") :].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if action == "cut":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files/data.bin"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def test_plain_download_records_lock(server, tmp_path):
    dest = tmp_path / "dl" / "data.bin"
    fetch(server.url, dest, backoff=0.01)
    assert dest.read_bytes() == PAYLOAD
    assert not part_path(dest).exists()
    lock = json.loads(lock_path(dest).read_text())
    assert lock["sha256"] == sha(PAYLOAD) and lock["size"] == len(PAYLOAD)
    assert len(server.requests) == 1


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    server.plan = ["cut"]
    dest = tmp_path / "data.bin"
    fetch(server.url, dest, sha256=sha(PAYLOAD), backoff=0.01)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 2
    assert "Range" not in server.requests[0]["headers"]
    offset = int(server.requests[1]["headers"]["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < offset < len(PAYLOAD)  # the second request asked only for the missing tail


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    dest = tmp_path / "data.bin"
    part_path(dest).write_bytes(PAYLOAD[:1000])
    fetch(server.url, dest, sha256=sha(PAYLOAD), backoff=0.01)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[0]["headers"]["Range"] == "bytes=1000-"


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    dest = tmp_path / "data.bin"
    part_path(dest).write_bytes(b"stale bytes of another version")
    server.plan = ["norange"]
    fetch(server.url, dest, sha256=sha(PAYLOAD), backoff=0.01)
    assert dest.read_bytes() == PAYLOAD and len(server.requests) == 1


def test_complete_partial_file_is_fetched_again(server, tmp_path):
    dest = tmp_path / "data.bin"
    part_path(dest).write_bytes(PAYLOAD)  # killed after the transfer, before the check
    fetch(server.url, dest, sha256=sha(PAYLOAD), backoff=0.01)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[0]["headers"]["Range"] == f"bytes={len(PAYLOAD)}-"
    assert "Range" not in server.requests[1]["headers"]


def test_wrong_checksum_is_refused_and_nothing_left(server, tmp_path):
    dest = tmp_path / "data.bin"
    wrong = sha(b"something else")
    with pytest.raises(DataError) as err:
        fetch(server.url, dest, sha256=wrong, backoff=0.01)
    msg = str(err.value)
    assert f"sha256 mismatch for {dest}: expected {wrong} (configured), got {sha(PAYLOAD)}" == msg
    assert not dest.exists() and not part_path(dest).exists() and not lock_path(dest).exists()


def test_wrong_size_is_refused(server, tmp_path):
    dest = tmp_path / "data.bin"
    with pytest.raises(
        DataError, match=rf"size mismatch for .*data.bin: expected 5 bytes \(configured\), got {len(PAYLOAD)}"
    ):
        fetch(server.url, dest, sha256=sha(PAYLOAD), size=5, backoff=0.01)
    assert not dest.exists() and not part_path(dest).exists()


def test_server_errors_are_retried_then_succeed(server, tmp_path):
    server.plan = ["503", "500"]
    dest = tmp_path / "data.bin"
    fetch(server.url, dest, retries=3, backoff=0.01)
    assert dest.read_bytes() == PAYLOAD
    assert [r["action"] for r in server.requests] == ["503", "500", "ok"]


def test_server_errors_are_reported_after_retries(server, tmp_path):
    server.plan = ["500"] * 10
    dest = tmp_path / "data.bin"
    with pytest.raises(DataError, match=r"failed after 2 retries: HTTP 500"):
        fetch(server.url, dest, retries=2, backoff=0.01)
    assert len(server.requests) == 3
    assert not dest.exists()


def test_client_error_is_not_retried(server, tmp_path):
    server.plan = ["404"]
    with pytest.raises(DataError, match=r"failed: HTTP 404"):
        fetch(server.url, tmp_path / "data.bin", retries=3, backoff=0.01)
    assert len(server.requests) == 1


def test_lock_file_is_checked_on_later_downloads(server, tmp_path):
    dest = tmp_path / "data.bin"
    fetch(server.url, dest, backoff=0.01)
    dest.unlink()
    server.payload = PAYLOAD[::-1]  # the remote file changed since it was recorded
    with pytest.raises(DataError) as err:
        fetch(server.url, dest, backoff=0.01)
    assert f"expected {sha(PAYLOAD)} (lock file {lock_path(dest)}), got {sha(PAYLOAD[::-1])}" in str(err.value)
    assert not dest.exists()


def test_verified_existing_file_is_kept(server, tmp_path):
    dest = tmp_path / "data.bin"
    fetch(server.url, dest, backoff=0.01)
    fetch(server.url, dest, backoff=0.01)
    assert len(server.requests) == 1


def test_token_only_for_huggingface_and_never_logged(server, tmp_path, monkeypatch, caplog):
    token = "hf_secret_token_value_123"
    monkeypatch.setenv("HF_TOKEN", token)
    assert auth_headers("https://huggingface.co/datasets/x/y/resolve/main/f") == {"Authorization": f"Bearer {token}"}
    assert auth_headers("https://cdn-lfs.huggingface.co/x") == {"Authorization": f"Bearer {token}"}
    assert auth_headers("https://huggingface.co.evil.example/x") == {}
    assert auth_headers("https://example.org/x") == {}
    with caplog.at_level(logging.DEBUG):
        fetch(server.url, tmp_path / "data.bin", backoff=0.01)
    assert "Authorization" not in server.requests[0]["headers"]
    assert token not in caplog.text
    assert token not in lock_path(tmp_path / "data.bin").read_text()


def test_file_url_and_plain_path(tmp_path, monkeypatch):
    src = tmp_path / "src" / "payload.bin"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    fetch(f"file://{src}", tmp_path / "a.bin", sha256=sha(PAYLOAD))
    monkeypatch.chdir(tmp_path)
    fetch(os.path.join("src", "payload.bin"), tmp_path / "b.bin")
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD == (tmp_path / "b.bin").read_bytes()
    # local files (often regenerated by the workflow) are checked against a configured sha256 only: no lock file
    assert not lock_path(tmp_path / "b.bin").exists()
    with pytest.raises(DataError, match=r"sha256 mismatch for .*c.bin: expected 0{64} \(configured\)"):
        fetch(f"file://{src}", tmp_path / "c.bin", sha256="0" * 64)
    assert not (tmp_path / "c.bin").exists()


def test_missing_local_source(tmp_path):
    with pytest.raises(DataError, match=r"source file .*nothing.bin does not exist"):
        fetch(str(tmp_path / "nothing.bin"), tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


def test_unsupported_scheme(tmp_path):
    with pytest.raises(DataError, match=r"unsupported URL scheme 'ftp'"):
        fetch("ftp://example.org/x", tmp_path / "out.bin")


def test_cli_rejects_malformed_sha(tmp_path, capsys):
    from spatialreasoner.cli import main

    rc = main(["fetch", "--url", str(tmp_path / "x"), "--out", str(tmp_path / "y"), "--sha256", "abc"])
    assert rc == 2
    assert "--sha256 must be 64 hex characters, got 'abc'" in capsys.readouterr().err
