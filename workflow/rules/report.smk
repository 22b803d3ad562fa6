# Figures for `snakemake --report`: a bar plot of every benchmark table (with the paper's numbers where the
# configuration gives them) and the training curves of a run. Every rule calls `spatialreasoner plots`.


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
        runtime=10,
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
        runtime=10,
    params:
        stage=lambda w: config["runs"][w.run]["stage"],
    shell:
        "spatialreasoner --log {log} plots training --trainer-state {input.model}/trainer_state.json"
        " --run {wildcards.run} --stage {params.stage} --out {output}"
