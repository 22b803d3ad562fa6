# Evaluation: predictions of every evaluated model on every benchmark, VLMEvalKit-exact scores, a random baseline,
# and the paper's tables. Every rule calls one `spatialreasoner` subcommand.

import shlex

EVAL = config["evaluate"]
EVAL_RES = EVAL.get("resources", {})
EVAL_GPUS = int(EVAL_RES.get("gpus", 1))
RANDOM = "random"
if RANDOM in EVAL_MODELS:
    raise workflow_error(f"evaluate.models must not contain {RANDOM!r}: the name is reserved for the random baseline")
# Rows of the tables, in order: every evaluated model, then the random baseline.
TABLE_MODELS = EVAL_MODELS + ([RANDOM] if EVAL.get("random_baseline", True) else [])
RANDOM_SEED = EVAL.get("random_seed") if EVAL.get("random_seed") is not None else config.get("seed", 42)
# Scoring protocols: the first fills each model's table row; every further one adds a row "<model> [<protocol>]"
# next to it, scored into results/scores/<model>/<bench>/<protocol>/.
PROTOCOLS = (
    [EVAL.get("protocol", "answer_tag")] if isinstance(EVAL.get("protocol", "answer_tag"), str) else EVAL["protocol"]
)
MAIN_PROTOCOL, EXTRA_PROTOCOLS = PROTOCOLS[0], PROTOCOLS[1:]
PROTOCOL_ROWS = {f"{model} [{p}]": (model, p) for model in EVAL_MODELS for p in EXTRA_PROTOCOLS}
JUDGE = EVAL.get("judge") or {}
# No judge endpoint (`evaluate.judge: null`, or the OpenAI API without a key in the environment): protocol vlmevalkit
# decides as the VLMEvalKit fork does without a judge, every row its exact matcher cannot decide counted a miss.
# Only the key's presence is read here; a key set later makes the judge rule run again (its arguments change).
JUDGE_KEY_SET = bool(os.environ.get(JUDGE.get("api_key_env", "OPENAI_API_KEY")))
NO_JUDGE = EVAL.get("judge") is None or (not JUDGE.get("base_url") and not JUDGE_KEY_SET)
SCORE_DIRS = {}
for _model in TABLE_MODELS:
    for _bench in BENCHMARKS:
        SCORE_DIRS[(_model, _bench)] = f"results/scores/{_model}/{_bench}"
        if _model != RANDOM:
            for _p in EXTRA_PROTOCOLS:
                SCORE_DIRS[(f"{_model} [{_p}]", _bench)] = f"results/scores/{_model}/{_bench}/{_p}"
# Pixel limits at inference, per model: evaluate.models.<name>.min/max_pixels, else evaluate.min/max_pixels, else the
# model folder's own processor settings (the official evaluation loads each checkpoint's processor as saved, and the
# official training scripts saved Qwen's into every checkpoint; `vision` is the training setting).
PIXEL_LIMITS = {
    model: {
        key: (spec.get(key) if spec.get(key) is not None else EVAL.get(key)) for key in ("min_pixels", "max_pixels")
    }
    for model, spec in EVAL["models"].items()
}
VISION_ARGS = {
    model: " ".join(f"--{key.replace('_', '-')} {value}" for key, value in limits.items() if value is not None)
    for model, limits in PIXEL_LIMITS.items()
}
# A trained model evaluated at the pixel limits its released counterpart's folder ships with
# (evaluate.models.<name>.pixels_from), read by inference when it starts; that folder is an input of its jobs.
PIXELS_FROM = {model: spec.get("pixels_from") for model, spec in EVAL["models"].items()}
# The evaluate.models entry each predictions job belongs to (a checkpoint's: its run's).
SPEC_NAMES = {model: model for model in EVAL["models"]} | {c: run for c, (run, _) in CHECKPOINT_MODELS.items()}


# The system prompt text when a model is evaluated with it (the SFT model is not), else "none".
SYSTEM_PROMPTS = {
    model: (config.get("prompts", {}).get("system", "none") if spec.get("system_prompt", True) else "none")
    for model, spec in EVAL["models"].items()
}
# The row of `paper` each table row is compared with (None: no published counterpart).
PAPER_NAMES = {
    **{model: spec.get("paper") for model, spec in EVAL["models"].items()},
    RANDOM: None,
}
PAPER_NAMES |= {row: PAPER_NAMES[model] for row, (model, _) in PROTOCOL_ROWS.items()}
TABLE_CAPTIONS = {
    "3DSRBench": "../report/table_3dsrbench.rst",
    "CV-Bench-3D": "../report/table_cv_bench_3d.rst",
    "Canary": "../report/table_canary.rst",
}


# The generation backend of `infer` and its own settings; with vLLM, `evaluate.vllm.batch_size` rows per call.
VLLM_EVAL = {
    "tensor_parallel_size": 1,
    "gpu_memory_utilization": 0.9,
    "max_model_len": None,
    "batch_size": 256,
}
VLLM_EVAL |= EVAL.get("vllm") or {}
INFER_BACKEND_ARGS = "--backend hf"
if EVAL.get("backend", "hf") == "vllm":
    INFER_BACKEND_ARGS = (
        f"--backend vllm --tensor-parallel-size {VLLM_EVAL['tensor_parallel_size']}"
        f" --gpu-memory-utilization {VLLM_EVAL['gpu_memory_utilization']}"
        + (f" --max-model-len {VLLM_EVAL['max_model_len']}" if VLLM_EVAL["max_model_len"] else "")
    )
INFER_BATCH_SIZE = VLLM_EVAL["batch_size"] if EVAL.get("backend", "hf") == "vllm" else EVAL.get("batch_size", 8)


rule infer:
    input:
        model=lambda w: model_dir(w.model),
        benchmark="results/benchmarks/{bench}.tsv",
        pixels_from=lambda w: (
            [model_dir(PIXELS_FROM[SPEC_NAMES[w.model]])] if PIXELS_FROM.get(SPEC_NAMES[w.model]) else []
        ),
    output:
        parquet="results/predictions/{model}/{bench}.parquet",
        xlsx="results/predictions/{model}/{bench}.xlsx",
    log:
        "logs/infer/{model}/{bench}.log",
    benchmark:
        "benchmarks/infer/{model}/{bench}.tsv"
    wildcard_constraints:
        model=alternatives(EVAL_MODELS + list(CHECKPOINT_MODELS)),
    conda:
        "../../envs/eval.yaml"
    threads: max(1, EVAL_GPUS) * int(EVAL_RES.get("cpus_per_gpu", 8))
    resources:
        gpu=EVAL_GPUS,
        gpu_model=EVAL_RES.get("gpu_model") or "",
        cpus_per_gpu=int(EVAL_RES.get("cpus_per_gpu", 8)) if EVAL_GPUS else 0,
        mem_mb=int(EVAL_RES.get("mem_mb", 64000)),
        runtime=capped_runtime(EVAL_RES.get("runtime", 1440)),
    params:
        system_prompt=lambda w: SYSTEM_PROMPTS[w.model],
        vision=lambda w, input: (
            f"--pixels-from {input.pixels_from[0]}" if input.pixels_from else VISION_ARGS[SPEC_NAMES[w.model]]
        ),
        max_new_tokens=EVAL.get("max_new_tokens", 512),
        batch_size=INFER_BATCH_SIZE,
        on_bad_image=EVAL.get("on_bad_image", "error"),
        dtype=EVAL.get("dtype", "auto"),
        attn=EVAL.get("attn_implementation", "auto"),
        backend=INFER_BACKEND_ARGS,
    shell:
        "spatialreasoner --log {log} infer --model {input.model} --benchmark {input.benchmark}"
        " --out {output.parquet} --xlsx {output.xlsx} --system-prompt {params.system_prompt:q}"
        " --max-new-tokens {params.max_new_tokens} --batch-size {params.batch_size}"
        " --on-bad-image {params.on_bad_image} --dtype {params.dtype} --attn-implementation {params.attn}"
        " {params.backend} {params.vision}"


rule judge:
    input:
        predictions="results/predictions/{model}/{bench}.parquet",
        benchmark="results/benchmarks/{bench}.tsv",
    output:
        "results/judge/{model}/{bench}.parquet",
    log:
        "logs/judge/{model}/{bench}.log",
    benchmark:
        "benchmarks/judge/{model}/{bench}.tsv"
    wildcard_constraints:
        model=alternatives(EVAL_MODELS + list(CHECKPOINT_MODELS)),
    conda:
        "../../envs/eval.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=capped_runtime(JUDGE.get("runtime", 240)),
    params:
        # Replies are cached outside the declared output, so a rerun asks the judge only for what is missing.
        cache=lambda w: f"results/judge/.cache/{w.model}/{w.bench}.jsonl",
        model=JUDGE.get("model", "gpt-3.5-turbo-0125"),
        base_url=(f"--base-url {shlex.quote(JUDGE['base_url'])}" if JUDGE.get("base_url") else ""),
        key_env=JUDGE.get("api_key_env", "OPENAI_API_KEY"),
        max_tokens=JUDGE.get("max_tokens", 2048),
        attempts=JUDGE.get("attempts", 3),
        workers=JUDGE.get("workers", 4),
        seed=config.get("seed", 42),
        no_judge="--no-judge" if NO_JUDGE else "",
    shell:
        "spatialreasoner --log {log} judge --predictions {input.predictions} --reference {input.benchmark}"
        " --out {output} --cache {params.cache:q} --judge-model {params.model:q} {params.base_url} {params.no_judge}"
        " --api-key-env {params.key_env} --max-tokens {params.max_tokens} --attempts {params.attempts}"
        " --workers {params.workers} --seed {params.seed}"


rule score_protocol:
    input:
        predictions="results/predictions/{model}/{bench}.parquet",
        benchmark="results/benchmarks/{bench}.tsv",
        judged=lambda w: ([f"results/judge/{w.model}/{w.bench}.parquet"] if w.protocol == "vlmevalkit" else []),
    output:
        hits="results/scores/{model}/{bench}/{protocol}/hits.csv",
        table="results/scores/{model}/{bench}/{protocol}/table.csv",
        per_row="results/scores/{model}/{bench}/{protocol}/table_per_row.csv",
        summary="results/scores/{model}/{bench}/{protocol}/summary.json",
    log:
        "logs/score/{model}/{bench}.{protocol}.log",
    benchmark:
        "benchmarks/score/{model}/{bench}.{protocol}.tsv"
    wildcard_constraints:
        model=alternatives(EVAL_MODELS),
        protocol=alternatives(EXTRA_PROTOCOLS),
    conda:
        "../../envs/eval.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=capped_runtime(15),
    params:
        judged=lambda w, input: f"--judged {input.judged[0]}" if input.judged else "",
        out=subpath(output.hits, parent=True),
    shell:
        "spatialreasoner --log {log} score --benchmark {wildcards.bench} --predictions {input.predictions}"
        " --reference {input.benchmark} --protocol {wildcards.protocol} {params.judged} --model {wildcards.model}"
        " --out {params.out}"


rule score:
    input:
        predictions="results/predictions/{model}/{bench}.parquet",
        benchmark="results/benchmarks/{bench}.tsv",
        judged=lambda w: ([f"results/judge/{w.model}/{w.bench}.parquet"] if MAIN_PROTOCOL == "vlmevalkit" else []),
    output:
        hits="results/scores/{model}/{bench}/hits.csv",
        table="results/scores/{model}/{bench}/table.csv",
        per_row="results/scores/{model}/{bench}/table_per_row.csv",
        summary="results/scores/{model}/{bench}/summary.json",
    log:
        "logs/score/{model}/{bench}.log",
    benchmark:
        "benchmarks/score/{model}/{bench}.tsv"
    wildcard_constraints:
        model=alternatives(EVAL_MODELS + list(CHECKPOINT_MODELS)),
    conda:
        "../../envs/eval.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=capped_runtime(15),
    params:
        protocol=MAIN_PROTOCOL,
        judged=lambda w, input: f"--judged {input.judged[0]}" if input.judged else "",
        out=subpath(output.hits, parent=True),
    shell:
        "spatialreasoner --log {log} score --benchmark {wildcards.bench} --predictions {input.predictions}"
        " --reference {input.benchmark} --protocol {params.protocol} {params.judged} --model {wildcards.model}"
        " --out {params.out}"


rule random_baseline:
    input:
        benchmark="results/benchmarks/{bench}.tsv",
    output:
        hits=f"results/scores/{RANDOM}/{{bench}}/hits.csv",
        table=f"results/scores/{RANDOM}/{{bench}}/table.csv",
        per_row=f"results/scores/{RANDOM}/{{bench}}/table_per_row.csv",
        summary=f"results/scores/{RANDOM}/{{bench}}/summary.json",
    log:
        "logs/random_baseline/{bench}.log",
    benchmark:
        "benchmarks/random_baseline/{bench}.tsv"
    conda:
        "../../envs/eval.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=capped_runtime(15),
    params:
        seed=RANDOM_SEED,
        out=subpath(output.hits, parent=True),
    shell:
        "spatialreasoner --log {log} score --benchmark {wildcards.bench} --predictions {input.benchmark}"
        " --random-seed {params.seed} --model random --out {params.out}"


# The random baseline's row names what it is: one seeded draw (the tables add the expected chance accuracy).
TABLE_LABELS = {model: model for model in EVAL_MODELS} | {RANDOM: f"random draw (seed {RANDOM_SEED})"}
TABLE_LABELS |= {row: row for row in PROTOCOL_ROWS}
# Paired differences in the summary: every evaluated run minus the model it starts from, and minus the released
# checkpoint that reproduces the same paper row.
COMPARE = [
    [run, config["runs"][run]["init"]]
    for run in EVAL_MODELS
    if run in config["runs"] and config["runs"][run]["init"] in EVAL_MODELS
] + [
    [run, released]
    for run in EVAL_MODELS
    if run in config["runs"] and PAPER_NAMES.get(run)
    for released in EVAL_MODELS
    if released in config["released"] and PAPER_NAMES.get(released) == PAPER_NAMES[run]
]


rule tables:
    input:
        hits=[f"{d}/hits.csv" for d in SCORE_DIRS.values()],
        benchmarks=[f"results/benchmarks/{bench}.tsv" for bench in BENCHMARKS],
    output:
        *[
            report(
                f"results/tables/{bench}.csv",
                caption=TABLE_CAPTIONS[bench],
                category="Results",
            )
            for bench in BENCHMARKS
        ],
        *(
            [
                report(
                    "results/tables/3DSRBench_per_row.csv",
                    caption="../report/table_3dsrbench_per_row.rst",
                    category="Results",
                )
            ]
            if "3DSRBench" in BENCHMARKS
            else []
        ),
        summary=report(
            "results/tables/summary.md",
            caption="../report/summary.rst",
            category="Results",
        ),
    log:
        "logs/tables/tables.log",
    benchmark:
        "benchmarks/tables/tables.tsv"
    conda:
        "../../envs/eval.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=capped_runtime(10),
    params:
        scores=" ".join(f"--score {shlex.quote(f'{b}:{TABLE_LABELS[m]}={d}')}" for (m, b), d in SCORE_DIRS.items()),
        benchmarks=" ".join(f"--benchmark {b}=results/benchmarks/{b}.tsv" for b in BENCHMARKS),
        paper=json.dumps(config.get("paper", {})),
        names=json.dumps(PAPER_NAMES),
        compare=json.dumps(COMPARE),
        seed=config.get("seed", 42),
        resamples=EVAL.get("bootstrap_resamples", 2000),
        out=subpath(output.summary, parent=True),
    shell:
        "spatialreasoner --log {log} tables --out {params.out} --paper {params.paper:q}"
        " --paper-names {params.names:q} --compare {params.compare:q} --seed {params.seed}"
        " --resamples {params.resamples} {params.benchmarks} {params.scores}"
