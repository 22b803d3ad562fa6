# Evaluation: predictions of every evaluated model on every benchmark, VLMEvalKit-exact scores, a random baseline,
# and the paper's tables. Every rule calls one `spatialreasoner` subcommand.

import shlex

EVAL = config["evaluate"]
EVAL_RES = EVAL.get("resources", {})
EVAL_GPUS = int(EVAL_RES.get("gpus", 1))
RANDOM = "random"
if RANDOM in EVAL_MODELS:
    raise WorkflowError(f"evaluate.models must not contain {RANDOM!r}: the name is reserved for the random baseline")
# Rows of the tables, in order: every evaluated model, then the random baseline.
TABLE_MODELS = EVAL_MODELS + ([RANDOM] if EVAL.get("random_baseline", True) else [])
SCORE_DIRS = {(model, bench): f"results/scores/{model}/{bench}" for model in TABLE_MODELS for bench in BENCHMARKS}
# Pixel limits at inference: the model folder's own processor settings unless evaluate.min/max_pixels are set (the
# official evaluation loads each checkpoint's processor as saved; `vision` is the training setting).
VISION_ARGS = " ".join(
    f"--{key.replace('_', '-')} {EVAL[key]}" for key in ("min_pixels", "max_pixels") if EVAL.get(key) is not None
)
# The system prompt text when a model is evaluated with it (the SFT model is not), else "none".
SYSTEM_PROMPTS = {
    model: config.get("prompts", {}).get("system", "none") if spec.get("system_prompt", True) else "none"
    for model, spec in EVAL["models"].items()
}
# The row of `paper` each table row is compared with (None: no published counterpart).
PAPER_NAMES = {**{model: spec.get("paper") for model, spec in EVAL["models"].items()}, RANDOM: None}
TABLE_CAPTIONS = {
    "3DSRBench": "../report/table_3dsrbench.rst",
    "CV-Bench-3D": "../report/table_cv_bench_3d.rst",
}


rule infer:
    input:
        model=lambda w: model_dir(w.model),
        benchmark="results/benchmarks/{bench}.tsv",
    output:
        parquet="results/predictions/{model}/{bench}.parquet",
        xlsx="results/predictions/{model}/{bench}.xlsx",
    log:
        "logs/infer/{model}/{bench}.log",
    benchmark:
        "benchmarks/infer/{model}/{bench}.tsv"
    wildcard_constraints:
        model=alternatives(EVAL_MODELS),
    conda:
        "../../envs/eval.yaml"
    threads: max(1, EVAL_GPUS) * int(EVAL_RES.get("cpus_per_gpu", 8))
    resources:
        gpu=EVAL_GPUS,
        gpu_model=EVAL_RES.get("gpu_model") or "",
        cpus_per_gpu=int(EVAL_RES.get("cpus_per_gpu", 8)) if EVAL_GPUS else 0,
        mem_mb=int(EVAL_RES.get("mem_mb", 64000)),
        runtime=int(EVAL_RES.get("runtime", 1440)),
    params:
        system_prompt=lambda w: SYSTEM_PROMPTS[w.model],
        vision=VISION_ARGS,
        max_new_tokens=EVAL.get("max_new_tokens", 512),
        batch_size=EVAL.get("batch_size", 8),
        on_bad_image=EVAL.get("on_bad_image", "error"),
        dtype=EVAL.get("dtype", "auto"),
        attn=EVAL.get("attn_implementation", "auto"),
    shell:
        "spatialreasoner --log {log} infer --model {input.model} --benchmark {input.benchmark}"
        " --out {output.parquet} --xlsx {output.xlsx} --system-prompt {params.system_prompt:q}"
        " --max-new-tokens {params.max_new_tokens} --batch-size {params.batch_size}"
        " --on-bad-image {params.on_bad_image} --dtype {params.dtype} --attn-implementation {params.attn}"
        " {params.vision}"


rule score:
    input:
        predictions="results/predictions/{model}/{bench}.parquet",
        benchmark="results/benchmarks/{bench}.tsv",
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
        model=alternatives(EVAL_MODELS),
    conda:
        "../../envs/eval.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        protocol=EVAL.get("protocol", "answer_tag"),
        out=subpath(output.hits, parent=True),
    shell:
        "spatialreasoner --log {log} score --benchmark {wildcards.bench} --predictions {input.predictions}"
        " --reference {input.benchmark} --protocol {params.protocol} --model {wildcards.model} --out {params.out}"


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
        runtime=15,
    params:
        seed=EVAL.get("random_seed") if EVAL.get("random_seed") is not None else config.get("seed", 42),
        out=subpath(output.hits, parent=True),
    shell:
        "spatialreasoner --log {log} score --benchmark {wildcards.bench} --predictions {input.benchmark}"
        " --random-seed {params.seed} --model random --out {params.out}"


rule tables:
    input:
        tables=[f"{d}/table.csv" for d in SCORE_DIRS.values()],
        per_row=[f"{d}/table_per_row.csv" for d in SCORE_DIRS.values()],
    output:
        *[
            report(f"results/tables/{bench}.csv", caption=TABLE_CAPTIONS[bench], category="Results")
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
        summary=report("results/tables/summary.md", caption="../report/summary.rst", category="Results"),
    log:
        "logs/tables/tables.log",
    benchmark:
        "benchmarks/tables/tables.tsv"
    conda:
        "../../envs/eval.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        scores=" ".join(f"--score {shlex.quote(f'{b}:{m}={d}')}" for (m, b), d in SCORE_DIRS.items()),
        paper=json.dumps(config.get("paper", {})),
        names=json.dumps(PAPER_NAMES),
        out=subpath(output.summary, parent=True),
    shell:
        "spatialreasoner --log {log} tables --out {params.out} --paper {params.paper:q}"
        " --paper-names {params.names:q} {params.scores}"
