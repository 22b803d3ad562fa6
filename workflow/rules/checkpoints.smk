# Accuracy along training: the intermediate checkpoints named in `evaluate.checkpoints` become model folders
# (results/checkpoint_models/<run>/step-<step>) once their run has finished, go through the same infer and score rules
# as every model (as "<run>@<step>"), and are collected with the initial and final models into
# results/tables/checkpoints.csv and one figure per run. The run's working folder is not a declared output (so that
# reruns resume); requiring the final model makes each checkpoint job wait until the run that wrote it has finished.

for _name, (_run, _step) in CHECKPOINT_MODELS.items():
    SYSTEM_PROMPTS[_name] = SYSTEM_PROMPTS[_run]
    VISION_ARGS[_name] = VISION_ARGS[_run]


rule checkpoint_model:
    input:
        final="results/models/{run}",
    output:
        directory("results/checkpoint_models/{run}/step-{step}"),
    log:
        "logs/checkpoint_model/{run}/{step}.log",
    benchmark:
        "benchmarks/checkpoint_model/{run}/{step}.tsv"
    wildcard_constraints:
        step=r"\d+",
    conda:
        "../../envs/eval.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=capped_runtime(30),
    shell:
        "spatialreasoner --log {log} checkpoint-model"
        " --checkpoint results/checkpoints/{wildcards.run}/checkpoint-{wildcards.step}"
        " --final-model {input.final} --step {wildcards.step} --out {output}"


rule checkpoint_table:
    input:
        hits=[f"{d}/hits.csv" for _, _, _, d in checkpoint_points()],
        benchmarks=[f"results/benchmarks/{bench}.tsv" for bench in BENCHMARKS],
    output:
        report(
            "results/tables/checkpoints.csv",
            caption="../report/checkpoints_table.rst",
            category="Training",
        ),
    log:
        "logs/checkpoint_table/checkpoint_table.log",
    benchmark:
        "benchmarks/checkpoint_table/checkpoint_table.tsv"
    conda:
        "../../envs/eval.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=capped_runtime(10),
    params:
        points=" ".join(
            f"--point {shlex.quote(f'{run}:{step}:{bench}={d}')}" for run, step, bench, d in checkpoint_points()
        ),
        benchmarks=" ".join(f"--benchmark {b}=results/benchmarks/{b}.tsv" for b in BENCHMARKS),
        seed=config.get("seed", 42),
        resamples=EVAL.get("bootstrap_resamples", 2000),
    shell:
        "spatialreasoner --log {log} checkpoint-table --out {output} --seed {params.seed}"
        " --resamples {params.resamples} {params.benchmarks} {params.points}"


rule plot_checkpoints:
    input:
        table="results/tables/checkpoints.csv",
    output:
        report(
            "results/plots/checkpoints/{run}.png",
            caption="../report/plot_checkpoints.rst",
            category="Training",
            subcategory="Accuracy along training",
        ),
    log:
        "logs/plot_checkpoints/{run}.log",
    benchmark:
        "benchmarks/plot_checkpoints/{run}.tsv"
    conda:
        "../../envs/eval.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=capped_runtime(10),
    shell:
        "spatialreasoner --log {log} plots checkpoints --table {input.table} --run {wildcards.run} --out {output}"
