"""Every conda environment pins exactly the versions pyproject.toml pins."""

import re
import tomllib

import yaml


def pyproject_pins(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    pins = {}
    for req in reqs:
        name, sep, version = req.partition("==")
        assert sep, f"pyproject.toml: {req!r} is not pinned with =="
        pins[name.lower().replace("_", "-")] = version
    return pins


def test_env_files_match_pyproject(repo_root):
    pins = pyproject_pins(repo_root)
    envs = sorted((repo_root / "envs").glob("*.yaml"))
    assert {e.stem for e in envs} >= {"data", "train", "eval"}
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
        assert pip, f"{env.name} has no pip section"
        for line in pip:
            name, sep, version = line.partition("==")
            key = name.lower().replace("_", "-")
            assert sep, f"{env.name}: {line!r} is not pinned with =="
            assert key in pins, f"{env.name}: {name} is not a dependency in pyproject.toml"
            assert pins[key] == version, f"{env.name}: {name}=={version} but pyproject.toml pins {pins[key]}"


def test_post_deploy_pins_match_pyproject(repo_root):
    pins = pyproject_pins(repo_root)
    for script in (repo_root / "envs").glob("*.post-deploy.sh"):
        for name, version in re.findall(r"pip install[^\n]*?\s([A-Za-z0-9_.-]+)==(\S+)", script.read_text()):
            assert pins[name.lower()] == version, f"{script.name}: {name}=={version} vs pyproject {pins[name.lower()]}"


def test_gpu_only_packages_stay_out_of_the_cpu_install(repo_root):
    deps = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split("==")[0] for d in deps}
    assert not names & {"deepspeed", "flash-attn", "vllm"}
