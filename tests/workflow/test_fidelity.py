"""The paper config's official behaviours (docs/fidelity.md): the GRPO objective, the run from the released SFT
model, the evaluation's pixel limits, the official circular grouping, and protocols scored side by side."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from spatialreasoner.config import load_schema, validate_config
from spatialreasoner.errors import ConfigError
from spatialreasoner.evaluate.score import circular_group, score_frame
from spatialreasoner.train.common import resolve_run_config

QWEN_LIMITS = {"min_pixels": 3136, "max_pixels": 12845056}


def paper_config(repo_root):
    config = yaml.safe_load((repo_root / "config/config.yaml").read_text())
    return validate_config(config, load_schema(repo_root / "workflow/schemas/config.schema.yaml"))


def test_paper_grpo_runs_use_the_official_objective(repo_root):
    config = paper_config(repo_root)
    grpo = [name for name, run in config["runs"].items() if run["stage"] == "grpo"]
    assert set(grpo) == {"SpatialReasoner-Zero", "SpatialReasoner", "SpatialReasoner-from-released-SFT"}
    for name in grpo:
        run = resolve_run_config(config["runs"][name])
        assert run["loss_type"] == "bnpo", name
        assert run["logprob_temperature"] == 1.0 and run["temperature"] == 0.9, name
        assert run["vllm"]["importance_sampling_correction"] is False, name
        assert run["rewards"] == ["accuracy", "format"], name


def test_paper_and_ablation_runs_train_with_the_official_slow_image_processor(repo_root):
    config = paper_config(repo_root)
    ablations = yaml.safe_load((repo_root / "config/ablations.yaml").read_text())
    for name, run in [*config["runs"].items(), *ablations["runs"].items()]:
        assert resolve_run_config(run)["use_fast"] is False, name


def test_the_grpo_ablation_uses_the_official_objective_too(repo_root):
    ablations = yaml.safe_load((repo_root / "config/ablations.yaml").read_text())
    run = resolve_run_config(ablations["runs"]["SpatialReasoner-Zero-3DRwd"])
    assert (run["loss_type"], run["logprob_temperature"]) == ("bnpo", 1.0)
    assert run["vllm"]["importance_sampling_correction"] is False


def test_grpo_from_the_released_sft_model_differs_only_in_its_start(repo_root):
    config = paper_config(repo_root)
    ours, released = config["runs"]["SpatialReasoner"], config["runs"]["SpatialReasoner-from-released-SFT"]
    assert (ours["init"], released["init"]) == ("SpatialReasoner-SFT", "ccvl-SpatialReasoner-SFT")
    assert config["released"]["ccvl-SpatialReasoner-SFT"]["repo"] == "ccvl/SpatialReasoner-SFT"
    assert {k: v for k, v in ours.items() if k != "init"} == {k: v for k, v in released.items() if k != "init"}
    assert config["evaluate"]["models"]["SpatialReasoner-from-released-SFT"]["system_prompt"] is True


def test_trained_models_are_evaluated_at_their_released_counterparts_pixel_limits(repo_root):
    config = paper_config(repo_root)
    counterpart = {"SpatialReasoner-SFT": "ccvl-SpatialReasoner-SFT", "SpatialReasoner-Zero": "ccvl-SpatialReasoner-Zero",
                   "SpatialReasoner": "ccvl-SpatialReasoner", "SpatialReasoner-from-released-SFT": "ccvl-SpatialReasoner"}  # fmt: skip
    for model, spec in config["evaluate"]["models"].items():
        assert {k: spec[k] for k in QWEN_LIMITS} == {"min_pixels": None, "max_pixels": None}, model
        if model in config["runs"]:
            assert spec["pixels_from"] == counterpart[model], model
            released = config["released"][counterpart[model]]
            assert released["repo"] == "ccvl/" + counterpart[model].removeprefix("ccvl-"), model
            # the counterpart reproduces the same published row
            assert config["evaluate"]["models"][counterpart[model]]["paper"] == spec["paper"], model
        else:  # released models: their folders' own settings, as the official evaluation
            assert spec["pixels_from"] is None, model
    assert (config["evaluate"]["min_pixels"], config["evaluate"]["max_pixels"]) == (None, None)


def test_the_counterparts_folder_is_an_input_of_inference_and_its_limits_are_read_there(repo_root):
    target = "results/predictions/SpatialReasoner-Zero/CV-Bench-3D.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", target, "-n", "-p", "--forceall", "--cores", "2", "--configfile",
         "config/config.yaml"],
        cwd=repo_root, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line.strip().removeprefix("Shell command:").strip() for line in proc.stdout.splitlines()]
    infer = [shlex.split(c) for c in lines if c.startswith("spatialreasoner ") and " infer " in c]
    assert len(infer) == 1
    args = infer[0]
    assert args[args.index("--pixels-from") + 1] == "resources/models/ccvl-SpatialReasoner-Zero"
    assert "--min-pixels" not in args and "--max-pixels" not in args
    assert "resources/models/ccvl-SpatialReasoner-Zero" in proc.stdout.split("rule infer:")[1].split("output:")[0]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"pixels_from": "SpatialReasoner-SFT"}, r"pixels_from: 'SpatialReasoner-SFT' is not a released model"),
        ({"pixels_from": "ccvl-SpatialReasoner", "max_pixels": 200704}, r"pixels_from and max_pixels both set"),
    ],
)
def test_pixels_from_names_a_released_model_and_excludes_explicit_limits(repo_root, spec, message):
    config = yaml.safe_load((repo_root / "config/config.yaml").read_text())
    config["evaluate"]["models"]["SpatialReasoner"] = {"system_prompt": True, **spec}
    with pytest.raises(ConfigError, match=rf"evaluate.models.SpatialReasoner.*{message}"):
        validate_config(config, load_schema(repo_root / "workflow/schemas/config.schema.yaml"))


def test_raw_logit_logprobs_with_the_vllm_correction_stop_the_workflow(repo_root):
    config = yaml.safe_load((repo_root / "config/config.yaml").read_text())
    config["runs"]["SpatialReasoner-Zero"]["vllm"]["importance_sampling_correction"] = True
    with pytest.raises(ConfigError, match=r"runs.SpatialReasoner-Zero.logprob_temperature"):
        validate_config(config, load_schema(repo_root / "workflow/schemas/config.schema.yaml"))


def test_circular_groups_follow_the_official_qid_rule():
    qids = pd.Series(["7", "7-1", "7-2", "7-3", "7-flip", "7-flip-1", "12", "12-1", "120-1"])
    assert circular_group(qids).tolist() == ["7", "7", "7", "7", "7-flip", "7-flip", "12", "12", "120"]
    # A group counts only when all of its rows are right: group 7 has one wrong rotation.
    df = pd.DataFrame({"index": range(6), "qid": ["7", "7-1", "7-2", "7-flip", "7-flip-1", "12"]})
    df = df.assign(category="height_higher", A="up", B="down", answer="A")
    df["prediction"] = ["<answer>A</answer>", "<answer>A</answer>", "<answer>B</answer>", "A", "A", "B"]
    hits, tables = score_frame(df, "3DSRBench")
    assert hits["hit"].tolist() == [True, True, False, True, True, False]
    assert tables["n_groups"] == 3 and tables["main"]["overall"] == pytest.approx(100 / 3, abs=0.05)
    assert tables["per_row"]["overall"] == pytest.approx(400 / 6, abs=0.05)


def test_protocols_side_by_side_and_the_judge_in_the_dag(repo_root, tmp_path):
    config = yaml.safe_load((repo_root / "config/demo.yaml").read_text())
    config["evaluate"]["protocol"] = ["answer_tag", "vlmevalkit"]
    config["evaluate"]["judge"] = {"model": "local-judge", "base_url": "http://127.0.0.1:1/v1", "api_key_env": "JK"}
    config["evaluate"]["models"]["SpatialReasoner"] |= {"min_pixels": 3136, "max_pixels": 50176}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--forceall", "--cores", "2", "--configfile", str(path)],
        cwd=repo_root, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line.strip().removeprefix("Shell command:").strip() for line in proc.stdout.splitlines()]
    commands = [line for line in lines if line.startswith("spatialreasoner ")]
    judge = [c for c in commands if " judge " in c]
    # every model x benchmark
    assert len(judge) == len(config["evaluate"]["benchmarks"]) * len(config["evaluate"]["models"])
    model = "SpatialReasoner"
    judge_cmd = next(c for c in judge if f"results/predictions/{model}/3DSRBench.parquet" in c)
    args = shlex.split(judge_cmd)
    assert args[args.index("--base-url") + 1] == "http://127.0.0.1:1/v1"
    assert args[args.index("--judge-model") + 1] == "local-judge" and args[args.index("--api-key-env") + 1] == "JK"
    assert args[args.index("--cache") + 1] == f"results/judge/.cache/{model}/3DSRBench.jsonl"
    scores = [shlex.split(c) for c in commands if " score " in c and f"--model {model} " in c and "3DSRBench" in c]
    by_protocol = {a[a.index("--protocol") + 1]: a for a in scores}
    assert set(by_protocol) == {"answer_tag", "vlmevalkit"}
    assert "--judged" not in by_protocol["answer_tag"]
    vlm = by_protocol["vlmevalkit"]
    assert vlm[vlm.index("--judged") + 1] == f"results/judge/{model}/3DSRBench.parquet"
    assert vlm[vlm.index("--out") + 1] == f"results/scores/{model}/3DSRBench/vlmevalkit"
    tables = shlex.split(next(c for c in commands if " tables " in c))
    rows = [tables[i + 1] for i, a in enumerate(tables) if a == "--score"]
    at = rows.index(f"3DSRBench:{model}=results/scores/{model}/3DSRBench")
    assert rows[at + 1] == f"3DSRBench:{model} [vlmevalkit]=results/scores/{model}/3DSRBench/vlmevalkit"
    infer = [shlex.split(c) for c in commands if " infer " in c and "3DSRBench" in c]
    pixel_args = {a[a.index("--model") + 1]: "--max-pixels" in a and a[a.index("--max-pixels") + 1] for a in infer}
    assert pixel_args[f"results/models/{model}"] == "50176"
    assert pixel_args["results/models/SpatialReasoner-SFT"] is False  # the folder's own limits


#: The first characters of this repository's paths in docs/fidelity.md; the official side's are prefixed with
#: ``official:``, ``fork:``, ``trl:`` or ``transformers:`` and are not checked here.
HERE = ("src/spatialreasoner/", "config/", "workflow/", "tests/", "scripts/")
CODE_SPAN = re.compile(r"`([^`]+)`")
#: ``path:line anchor`` or ``path:first-last anchor``; the anchor is a name or a "quoted fragment" of the first line.
REFERENCE = re.compile(r"(?P<path>[^\s:]+):(?P<first>\d+)(?:-(?P<last>\d+))?(?: (?P<anchor>\S.*))?")
TEST_NAME = re.compile(r"(?P<path>(?:tests/[\w/]*)?(?:test_\w+\.py)?)::(?P<name>\w+)")
NAME = re.compile(r"[A-Za-z_]\w*")


def definition_lines(lines: list[str], name: str, snakemake: bool) -> list[int]:
    """The lines (1-based) where ``def``/``class`` (and a Snakemake ``rule``) ``name`` is defined."""
    keywords = r"def|async\s+def|class" + (r"|rule" if snakemake else "")
    pattern = re.compile(rf"\s*(?:{keywords})\s+{re.escape(name)}\b")
    return [i for i, line in enumerate(lines, 1) if pattern.match(line)]


def anchor_problem(lines: list[str], path: str, first: int, last: int, anchor: str | None) -> str | None:
    """Why ``path:first[-last] anchor`` does not point at what it names, or None.

    The anchor describes the reference's (first) line: a name defined there by ``def``/``class``/``rule`` when the
    file defines it so, else a name occurring there as a word; or a double-quoted fragment of that line."""
    if anchor is None:
        return 'names no anchor: write `path:line name` or `path:line "fragment of the line"`'
    if not 1 <= first <= last <= len(lines):
        return f"lines {first}-{last} are not within the file's {len(lines)} lines"
    line = lines[first - 1]
    if len(anchor) > 1 and anchor[0] == anchor[-1] == '"':
        fragment = anchor[1:-1]
        return None if fragment in line else f"line {first} does not hold {fragment!r}: {line.strip()!r}"
    if not NAME.fullmatch(anchor):
        return f'anchor {anchor!r} is neither a name nor a "quoted fragment"'
    defined = definition_lines(lines, anchor, path.endswith(".smk"))
    if defined:
        return None if first in defined else f"{anchor} is defined at line(s) {defined}, not {first}"
    if re.search(rf"(?<!\w){re.escape(anchor)}(?!\w)", line):
        return None
    return f"line {first} does not hold the name {anchor}: {line.strip()!r}"


def ledger_problems(text: str, repo_root, files: dict | None = None) -> tuple[list[str], int]:
    """Every reference of docs/fidelity.md to this repository that does not point at what it names, and the number
    of references checked: files that do not exist, lines whose anchor is not there, test names not defined in
    their file, and a bare ``:line`` continuing a reference of this repository (write the path and anchor again).
    ``files``: what was read so far (shared between calls)."""
    problems, checked = [], 0
    files = {} if files is None else files

    def read(path):
        if path not in files:
            file = repo_root / path
            files[path] = file.read_text().splitlines() if file.is_file() else None
        return files[path]

    for number, line in enumerate(text.splitlines(), 1):
        where = f"docs/fidelity.md:{number}"
        bare = re.search(r"(?:src/spatialreasoner|config|workflow|tests|scripts)/[\w./-]+:\d", CODE_SPAN.sub("", line))
        if bare:
            problems.append(f"{where}: {bare.group(0)!r} outside a code span")
        last_path, last_test_file = None, None
        for span in CODE_SPAN.findall(line):
            if re.fullmatch(r":\d[\d,-]*", span):
                if last_path is not None and last_path.startswith(HERE):
                    problems.append(f"{where}: `{span}` continues {last_path}: write the path and an anchor")
                continue
            test = TEST_NAME.fullmatch(span)
            if test:
                path = test["path"]
                if not path:
                    path = last_test_file
                elif not path.startswith(HERE):  # a test file named without its folder
                    key = ("tests named", path)
                    if key not in files:
                        files[key] = [str(p.relative_to(repo_root)) for p in (repo_root / "tests").rglob(path)]
                    path = files[key][0] if len(files[key]) == 1 else None
                checked += 1
                lines = read(path) if path else None
                if lines is None or not definition_lines(lines, test["name"], False):
                    problems.append(f"{where}: `{span}`: no test {test['name']} in {path or 'a unique test file'}")
                last_test_file = path
                continue
            if not span.startswith(HERE):
                last_path = span
                continue
            ref = REFERENCE.fullmatch(span)
            path = ref["path"] if ref else span.split()[0]
            last_path = path
            lines = read(path)
            checked += 1
            if lines is None:
                problems.append(f"{where}: `{span}`: {path} does not exist")
            elif ref:
                first = int(ref["first"])
                problem = anchor_problem(lines, path, first, int(ref["last"] or first), ref["anchor"])
                if problem:
                    problems.append(f"{where}: `{span}`: {problem}")
            elif path != span or ":" in span:
                problems.append(f"{where}: `{span}` is neither a file nor `path:line anchor`")
            if path.startswith("tests/") and path.endswith(".py"):
                last_test_file = path
    return problems, checked


def test_every_ledger_entry_names_files_and_lines_that_exist_here(repo_root):
    """Each table row of docs/fidelity.md names a file and line on both sides; each reference to this repository
    names what its line holds (a definition, a name or a quoted fragment), which must be there."""
    text = (repo_root / "docs/fidelity.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| what ")]
    rows = [r for r in rows if not r.startswith("| ---")]
    assert len(rows) >= 25
    for row in rows:
        assert re.search(r"(official|fork|trl|transformers):", row), f"no official side: {row[:80]}"
        here = [s for s in CODE_SPAN.findall(row) if s.startswith(HERE) and REFERENCE.fullmatch(s)]
        assert here, f"no file and line of this repository: {row[:80]}"
    problems, checked = ledger_problems(text, repo_root)
    assert checked >= 60
    assert not problems, "\n".join(problems)


def test_a_reference_left_behind_by_moved_code_fails_the_ledger_check(repo_root):
    """Every line reference to this repository, moved one to three lines down or up, is reported: lines inserted or
    removed above the code a reference names are caught (an anchor that its neighbouring lines also hold is not)."""
    text = (repo_root / "docs/fidelity.md").read_text()
    references = []
    for span in sorted(set(CODE_SPAN.findall(text))):
        ref = REFERENCE.fullmatch(span)
        if span.startswith(HERE) and ref and ref["anchor"]:
            references.append((span, ref))
    assert len(references) >= 40
    files = {}
    for shift in (1, -1, 2, -2, 3, -3):
        for span, ref in references:
            first = int(ref["first"]) + shift
            lines = f"{first}-{int(ref['last']) + shift}" if ref["last"] else f"{first}"
            moved = f"{ref['path']}:{lines} {ref['anchor']}"
            problems, _ = ledger_problems(text.replace(f"`{span}`", f"`{moved}`"), repo_root, files)
            assert any(f"`{moved}`" in p for p in problems), f"{span} moved by {shift} lines passes: {moved}"
