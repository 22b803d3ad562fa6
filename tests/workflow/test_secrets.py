"""Credentials in a source URL reach the server but never a command line, Snakemake's output, log or metadata."""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

USER, PASSWORD, TOKEN = "alice", "pw-7f3a9c1e", "tok-51d0b2aa"
PAYLOAD = b"private bytes\n" * 100


@pytest.fixture
def private_server():
    """An HTTP server that answers only requests carrying the user's basic auth and the query token."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            auth = self.headers.get("Authorization", "")
            ok = auth == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            seen.append(self.path)
            if not ok or f"token={TOKEN}" not in self.path:
                self.send_response(403)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


def all_text_under(folder: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file())


def test_url_credentials_stay_out_of_snakemake_output_logs_and_metadata(
    repo_root, copy_checkout, tmp_path, private_server
):
    port, seen = private_server
    work = copy_checkout(tmp_path / "work")
    config = yaml.safe_load((repo_root / "config" / "demo.yaml").read_text())
    config["sources"]["private"] = {"url": f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/data.bin?token={TOKEN}"}
    configfile = work / "config" / "private.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
    }
    base = [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "config/private.yaml"]
    target = "resources/downloads/private"

    dry = subprocess.run([*base, "-n", "-p", target], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    dry_out = dry.stdout + dry.stderr
    assert "fetch --source private" in dry_out  # the printed shell command names the source, not the URL

    proc = subprocess.run([*base, "-p", target], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (work / target).read_bytes() == PAYLOAD
    assert hashlib.sha256(PAYLOAD).hexdigest() in (work / f"{target}.lock.json").read_text()
    assert any(f"token={TOKEN}" in path for path in seen)  # the credentials did reach the server

    places = {
        "dry run": dry_out,
        "console": proc.stdout + proc.stderr,
        ".snakemake": all_text_under(work / ".snakemake"),
        "logs": all_text_under(work / "logs"),
        "lock file": (work / f"{target}.lock.json").read_text(),
    }
    assert places[".snakemake"] and places["logs"]
    for where, text in places.items():
        for secret in (PASSWORD, TOKEN):
            assert secret not in text, f"{secret} found in {where}"


def test_environment_reference_in_a_url_is_expanded_only_by_the_download(tmp_path, monkeypatch):
    from spatialreasoner.data.fetch import expand_env
    from spatialreasoner.errors import DataError

    monkeypatch.setenv("PRIVATE_TOKEN", TOKEN)
    assert expand_env("https://h/f?token=${PRIVATE_TOKEN}") == f"https://h/f?token={TOKEN}"
    monkeypatch.delenv("PRIVATE_TOKEN")
    with pytest.raises(DataError, match=r"sources.x.url refers to \$\{PRIVATE_TOKEN\}, which is not set"):
        expand_env("https://h/f?token=${PRIVATE_TOKEN}", "sources.x.url")


def test_fetch_by_source_name_reads_url_and_checks_from_the_config_files(tmp_path):
    src = tmp_path / "file.bin"
    src.write_bytes(PAYLOAD)
    base = tmp_path / "a.yaml"
    base.write_text(yaml.safe_dump({"sources": {"f": {"url": str(src)}, "g": {"path": "x"}}}))
    override = tmp_path / "b.yaml"  # merged over the first file, as Snakemake merges --configfile's
    override.write_text(yaml.safe_dump({"sources": {"f": {"sha256": "0" * 64}}}))
    out = tmp_path / "downloads" / "f"

    def fetch(*files, source="f"):
        cmd = [
            sys.executable,
            "-m",
            "spatialreasoner.cli",
            "fetch",
            "--source",
            source,
            "--configfile",
            *map(str, files),
        ]
        return subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=120)

    assert fetch(base).returncode == 0 and out.read_bytes() == PAYLOAD
    out.unlink()
    bad = fetch(base, override)
    assert bad.returncode == 2 and "sha256 mismatch" in bad.stderr and not out.exists()
    missing = fetch(base, source="g")
    assert missing.returncode == 2 and "config key sources.g.url: not set in" in missing.stderr


def test_credentials_from_the_environment_and_netrc(private_server, tmp_path, monkeypatch):
    """A URL without secrets: the password comes from a netrc file, the token from an environment variable."""
    from spatialreasoner.data.fetch import expand_env, fetch

    port, _ = private_server
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("PRIVATE_TOKEN", TOKEN)
    url = f"http://127.0.0.1:{port}/data.bin?token=${{PRIVATE_TOKEN}}"
    out = fetch(expand_env(url), tmp_path / "d" / "data.bin", retries=0)
    assert out.read_bytes() == PAYLOAD
    assert TOKEN not in (tmp_path / "d" / "data.bin.lock.json").read_text()


def test_a_refused_configuration_names_the_key_but_not_the_url_credentials(repo_root, tmp_path):
    """Snakemake prints the errors a Snakefile raises as they are: the workflow's come redacted, as the CLI's."""
    config = yaml.safe_load((repo_root / "config" / "demo.yaml").read_text())
    url = f"https://{USER}:{PASSWORD}@data.example/openimages.tar"
    config["sources"]["openimages.tar"] = {"url": url, "sha256": "not-a-sha256"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config, sort_keys=False))
    runs = {
        "snakemake": [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(bad)],
        "validate-config": [sys.executable, "-m", "spatialreasoner.cli", "validate-config", str(bad)],
    }
    for name, cmd in runs.items():
        proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)
        out = proc.stdout + proc.stderr
        assert PASSWORD not in proc.stdout and PASSWORD not in proc.stderr, name
        assert proc.returncode != 0 and "Job stats" not in out, (name, out[-3000:])
        assert "config key sources.openimages.tar:" in out, (name, out[-3000:])
        assert "https://***@data.example/openimages.tar" in out, (name, out[-3000:])


def test_every_error_the_workflow_raises_is_redacted(repo_root):
    """Config values (source URLs...) end up in the workflow's errors: each is made by workflow_error, which
    redacts them."""
    files = [repo_root / "workflow" / "Snakefile", *sorted((repo_root / "workflow" / "rules").glob("*.smk"))]
    raises = [
        f"{path.name}:{n}: {line.strip()}"
        for path in files
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.match(r"\s*raise\b", line)
    ]
    assert len(raises) >= 4, raises  # the configuration, conda environments, model names, local rules
    assert [r for r in raises if not re.search(r": raise workflow_error\(", r)] == []
