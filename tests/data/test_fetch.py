"""fetch: real HTTP transfers against a loopback server (resume, retries, checksums), file:// and plain paths."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import socket
import subprocess
import sys
import threading

import pytest

from spatialreasoner.data.fetch import auth_headers, fetch, lock_path, part_path
from spatialreasoner.errors import DataError
from spatialreasoner.utils import redact_url

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, not compressible into anything clever


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Server:
    """A loopback HTTP server whose behaviour the test scripts request by request."""

    def __init__(self):
        self.payload = PAYLOAD
        # per request: "ok", "cut" (send half, then drop), "cut+change" (cut, then switch to next_payload/next_etag),
        # "norange" (ignore Range), "503", "500", "404"
        self.plan: list[str] = []
        self.requests: list[dict] = []
        self.heads: list[dict] = []
        self.length = True  # send Content-Length with a 200 (else the body ends when the connection closes)
        self.head_length = True  # answer HEAD with a Content-Length (else with none)
        self.etag: str | None = None  # sent as ETag; a Range whose If-Range differs from it gets the whole file
        self.honor_if_range = True
        self.next_payload, self.next_etag = PAYLOAD[::-1], '"v2"'
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                server.heads.append({"path": self.path, "headers": dict(self.headers)})
                self.send_response(200)
                if server.head_length:
                    self.send_header("Content-Length", str(len(server.payload)))
                if server.etag:
                    self.send_header("ETag", server.etag)
                self.end_headers()

            def do_GET(self):
                action = server.plan.pop(0) if server.plan else "ok"
                record = {"path": self.path, "headers": dict(self.headers), "action": action}
                server.requests.append(record)
                if action in ("500", "503", "404"):
                    body = b"nope"
                    record["status"] = int(action)
                    self.send_response(int(action))
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data, start = server.payload, 0
                rng = self.headers.get("Range") if action != "norange" else None
                if rng and server.honor_if_range and self.headers.get("If-Range") not in (None, server.etag):
                    rng = None  # the client's bytes are of another version: send the whole file
                if rng and rng.startswith("bytes="):
                    start = int(rng[len("bytes=") :].split("-")[0])
                    if start >= len(data):
                        record["status"] = 416
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    record["status"] = 206
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    record["status"] = 200
                    self.send_response(200)
                body = data[start:]
                if server.etag:
                    self.send_header("ETag", server.etag)
                if server.length or start:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if action.startswith("cut"):
                    if action == "cut+change":  # the upstream file changes while this copy is cut short
                        server.payload, server.etag = server.next_payload, server.next_etag
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"{self.base}/files/data.bin"

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
    server.etag = '"v1"'
    dest = tmp_path / "data.bin"
    fetch(server.url, dest, backoff=0.01)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 2
    assert "Range" not in server.requests[0]["headers"]
    offset = int(server.requests[1]["headers"]["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < offset < len(PAYLOAD)  # the second request asked only for the missing tail
    assert server.requests[1]["headers"]["If-Range"] == '"v1"' and server.requests[1]["status"] == 206
    assert json.loads(lock_path(dest).read_text())["sha256"] == sha(PAYLOAD)


def test_changed_file_is_not_spliced_onto_a_partial_download(server, tmp_path):
    server.plan = ["cut+change"]
    server.etag = '"v1"'
    dest = tmp_path / "data.bin"
    fetch(server.url, dest, backoff=0.01)
    resumed = server.requests[1]
    assert resumed["headers"]["Range"].startswith("bytes=") and resumed["headers"]["If-Range"] == '"v1"'
    assert resumed["status"] == 200  # the version changed: the whole new file, written from byte 0
    assert dest.read_bytes() == server.next_payload
    assert json.loads(lock_path(dest).read_text())["sha256"] == sha(server.next_payload)


def test_resumed_answer_of_another_version_restarts_from_zero(server, tmp_path):
    server.plan = ["cut+change"]
    server.etag, server.honor_if_range = '"v1"', False  # answers 206 with the new version's ETag
    dest = tmp_path / "data.bin"
    fetch(server.url, dest, backoff=0.01)
    assert [r["status"] for r in server.requests] == [200, 206, 200]
    assert "Range" not in server.requests[2]["headers"]
    assert dest.read_bytes() == server.next_payload


def test_partial_bytes_of_unknown_version_are_not_resumed_without_sha256(server, tmp_path):
    server.plan = ["cut"]  # no ETag nor Last-Modified: nothing to send as If-Range
    dest = tmp_path / "data.bin"
    part_path(dest).write_bytes(PAYLOAD[:1000])  # left by an earlier run
    fetch(server.url, dest, backoff=0.01)
    assert [("Range" in r["headers"]) for r in server.requests] == [False, False]
    assert dest.read_bytes() == PAYLOAD


def test_dropped_connection_without_any_size_is_refused(server, tmp_path):
    server.length, server.head_length = False, False
    server.plan = ["cut"]
    dest = tmp_path / "data.bin"
    with pytest.raises(DataError) as err:
        fetch(server.url, dest, backoff=0.01)
    msg = str(err.value)
    assert msg.startswith(f"download of {server.url} cannot be verified: the server announced no size")
    assert f"({len(PAYLOAD) // 2} bytes received); configure the file's sha256" in msg
    assert len(server.requests) == 1 and len(server.heads) == 1
    assert not dest.exists() and not lock_path(dest).exists() and not part_path(dest).exists()


def test_dropped_connection_with_size_from_head_is_resumed(server, tmp_path):
    server.length, server.etag = False, '"v1"'
    server.plan = ["cut"]
    dest = tmp_path / "data.bin"
    fetch(server.url, dest, backoff=0.01)
    assert server.requests[1]["headers"]["Range"] == f"bytes={len(PAYLOAD) // 2}-"
    assert server.requests[1]["headers"]["If-Range"] == '"v1"'
    assert dest.read_bytes() == PAYLOAD
    assert json.loads(lock_path(dest).read_text())["size"] == len(PAYLOAD)


def test_connection_ending_early_is_an_interruption_not_completion(server, tmp_path):
    server.length = False  # the size comes from HEAD only; every transfer is cut short
    server.plan = ["cut"] * 10
    dest = tmp_path / "data.bin"
    with pytest.raises(DataError) as err:
        fetch(server.url, dest, retries=2, backoff=0.01)
    assert str(err.value) == (
        f"download of {server.url} failed after 2 retries: "
        f"connection ended at byte {len(PAYLOAD) // 2} of {len(PAYLOAD)} (announced by the server's HEAD)"
    )
    assert len(server.requests) == 3
    assert not dest.exists() and not lock_path(dest).exists()


def test_complete_transfer_without_any_size_needs_a_configured_checksum(server, tmp_path):
    server.length, server.head_length = False, False  # close-delimited bodies, HEAD without Content-Length
    dest = tmp_path / "data.bin"
    with pytest.raises(DataError, match=r"cannot be verified: .* configure the file's sha256 \(or size\)"):
        fetch(server.url, dest, backoff=0.01)  # a complete transfer looks just like a cut one
    assert not dest.exists() and not lock_path(dest).exists() and not part_path(dest).exists()
    fetch(server.url, dest, sha256=sha(PAYLOAD), backoff=0.01)
    assert dest.read_bytes() == PAYLOAD and not lock_path(dest).exists()
    # a configured size tells a cut transfer from a complete one: the first is resumed, the second recorded
    server.plan = ["cut"]
    sized = tmp_path / "sized.bin"
    fetch(server.url, sized, size=len(PAYLOAD), backoff=0.01)
    assert sized.read_bytes() == PAYLOAD
    assert json.loads(lock_path(sized).read_text())["sha256"] == sha(PAYLOAD)


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


SECRETS = ("hf_secret_token_value_123", "pw-secret-4711", "tok-secret-1", "sig-secret-2")


def secret_url(base: str) -> str:
    """``base`` with a password in its userinfo, tokens in its query and HF_TOKEN's value in its fragment."""
    return (
        base.replace("http://", "http://alice:pw-secret-4711@") + "?token=tok-secret-1&sig=sig-secret-2#" + SECRETS[0]
    )


def test_redact_url():
    assert redact_url("https://u:p@host:8080/a/f.bin?token=t&sig=s&flag&empty=") == (
        "https://host:8080/a/f.bin?token=***&sig=***&***&empty="
    )
    assert redact_url("https://host/f.bin") == "https://host/f.bin"
    assert redact_url("file:///data/f.bin") == "file:///data/f.bin"
    assert redact_url("data/f?x.bin") == "data/f?***"  # logs only: a query-like part of a path is hidden too
    assert redact_url("http://h/f#access_token=t") == "http://h/f#***"


def test_credentials_in_url_never_logged_nor_recorded(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_TOKEN", SECRETS[0])
    url, dest = secret_url(server.url), tmp_path / "data.bin"
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    server.plan = ["503", "cut"]  # retry warnings name the URL too
    with caplog.at_level(logging.DEBUG):
        fetch(url, dest, backoff=0.01)
        with pytest.raises(DataError) as refused:
            server.plan = ["404"]
            fetch(url, tmp_path / "other.bin", backoff=0.01)
        with pytest.raises(DataError) as unreachable:  # requests' own message names the path and query
            fetch(secret_url(f"http://127.0.0.1:{closed}/f"), tmp_path / "none.bin", retries=1, backoff=0.01, timeout=2)
    assert server.requests[0]["path"] == "/files/data.bin?token=tok-secret-1&sig=sig-secret-2"  # sent as given
    assert server.requests[0]["headers"]["Authorization"].startswith("Basic ")  # userinfo becomes basic auth
    shown = f"{server.url}?token=***&sig=***#***"
    lock = lock_path(dest).read_text()
    assert json.loads(lock)["url"] == shown and f"fetched {shown} -> {dest}" in caplog.text
    assert str(refused.value) == f"download of {shown} failed: HTTP 404 Not Found"
    assert f"127.0.0.1:{closed}/f?token=***&sig=***#***" in str(unreachable.value)
    for text in (caplog.text, lock, str(refused.value), str(unreachable.value)):
        assert not any(secret in text for secret in SECRETS), text


def test_cli_log_file_holds_no_credentials(server, tmp_path):
    env = {**os.environ, "HF_TOKEN": SECRETS[0]}
    code = "import sys; from spatialreasoner.cli import main; sys.exit(main(sys.argv[1:]))"
    log_file = tmp_path / "fetch.log"
    server.plan = ["503", "cut", "ok", "404"]
    for name, rc in (("data.bin", 0), ("other.bin", 2)):
        out = tmp_path / name
        args = ["--log", log_file, "fetch", "--url", secret_url(server.url), "--out", out, "--backoff", "0.01"]
        proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True)
        assert proc.returncode == rc, proc.stderr
        assert not any(secret in proc.stderr for secret in SECRETS), proc.stderr
    logged = log_file.read_text()
    assert "retry 1/5" in logged and "fetched " in logged and "failed: HTTP 404" in logged
    assert not any(secret in logged for secret in SECRETS), logged
    assert not any(secret in lock_path(tmp_path / "data.bin").read_text() for secret in SECRETS)


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
