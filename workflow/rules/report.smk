# Figures for `snakemake --report`: a bar plot of every benchmark table (with the paper's numbers where the
# configuration gives them) and the training curves of a run, each from `spatialreasoner plots`; and
# results/report/report.html, one self-contained page of the results (`spatialreasoner report`).

from spatialreasoner.report import redacted_config


rule plot_tables:
    input:
        table="results/tables/{bench}.csv",
    output:
        report(
            "results/plots/{bench}.png",
            caption="../report/plot_table.rst",
            category="Results",
            subcategory="Plots",
        ),
    log:
        "logs/plot_tables/{bench}.log",
    benchmark:
        "benchmarks/plot_tables/{bench}.tsv"
    conda:
        "../../envs/eval.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=capped_runtime(10),
    params:
        paper=json.dumps(config.get("paper", {})),
        names=json.dumps(PAPER_NAMES),
    shell:
        "spatialreasoner --log {log} plots table --table {input.table} --benchmark {wildcards.bench}"
        " --out {output} --paper {params.paper:q} --paper-names {params.names:q}"


rule plot_training:
    input:
        model="results/models/{run}",
    output:
        report(
            "results/plots/training/{run}.png",
            caption="../report/plot_training.rst",
            category="Training",
            subcategory="Curves",
        ),
    log:
        "logs/plot_training/{run}.log",
    benchmark:
        "benchmarks/plot_training/{run}.tsv"
    conda:
        "../../envs/eval.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=capped_runtime(10),
    params:
        stage=lambda w: config["runs"][w.run]["stage"],
    shell:
        "spatialreasoner --log {log} plots training --trainer-state {input.model}/trainer_state.json"
        " --run {wildcards.run} --stage {params.stage} --out {output}"


REPORT_TABLES = [f"results/tables/{bench}.csv" for bench in BENCHMARKS]
REPORT_TABLES += ["results/tables/3DSRBench_per_row.csv"] if "3DSRBench" in BENCHMARKS else []
REPORT_TABLES += ["results/tables/checkpoints.csv"] if CHECKPOINT_STEPS else []
REPORT_FIGURES = final_plots() + [p for p in checkpoint_outputs() if p.endswith(".png")]
REPORT_EXAMPLES = {
    (bench, model): (
        f"results/predictions/{model}/{bench}.parquet",
        f"results/scores/{model}/{bench}/hits.csv",
    )
    for bench in BENCHMARKS
    for model in EVAL_MODELS
}


rule report_html:
    input:
        tables=REPORT_TABLES,
        summary="results/tables/summary.md",
        figures=REPORT_FIGURES,
        benchmarks=[f"results/benchmarks/{bench}.tsv" for bench in BENCHMARKS],
        examples=[path for pair in REPORT_EXAMPLES.values() for path in pair],
        datasets=list(report_datasets().values()),
    output:
        "results/report/report.html",
    log:
        "logs/report_html/report_html.log",
    benchmark:
        "benchmarks/report_html/report_html.tsv"
    conda:
        "../../envs/eval.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=capped_runtime(10),
    params:
        tables=" ".join(f"--table {t}" for t in REPORT_TABLES),
        figures=" ".join(f"--figure {f}" for f in REPORT_FIGURES),
        benchmarks=" ".join(f"--benchmark {b}=results/benchmarks/{b}.tsv" for b in BENCHMARKS),
        examples=" ".join(f"--example {shlex.quote(f'{b}:{m}={p},{h}')}" for (b, m), (p, h) in REPORT_EXAMPLES.items()),
        datasets=" ".join(f"--dataset {n}={p}" for n, p in report_datasets().items()),
        # the resolved configuration, credentials in URLs redacted before it reaches the command line
        config=json.dumps(redacted_config(config)),
        per_category=config["evaluate"].get("report_examples", 2),
        seed=config.get("seed", 42),
        paper=json.dumps(config.get("paper", {})),
        names=json.dumps(PAPER_NAMES),
    shell:
        "spatialreasoner --log {log} report --out {output} --summary {input.summary} {params.tables}"
        " {params.figures} {params.benchmarks} {params.examples} {params.datasets} --config {params.config:q}"
        " --per-category {params.per_category} --seed {params.seed}"
        " --paper {params.paper:q} --paper-names {params.names:q}"
