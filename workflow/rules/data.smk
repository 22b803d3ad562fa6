# Data: synthetic generation (demo), verified downloads and Hub snapshots, safe extraction of the image tars,
# canonical training tables and validated benchmarks. Every rule calls one `spatialreasoner` subcommand; the
# config -> file name functions live in spatialreasoner.data.rules.

import os

import spatialreasoner.data.rules as data_rules
from spatialreasoner.utils import redact_url


rule synthesize:
    output:
        [f"{data_rules.SYNTHETIC_DIR}/{name}" for name in data_rules.SYNTHETIC_FILES],
        [directory(f"{data_rules.SYNTHETIC_DIR}/{name}") for name in data_rules.SYNTHETIC_DIRS],
    log:
        "logs/synthesize/synthesize.log",
    benchmark:
        "benchmarks/synthesize/synthesize.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=capped_runtime(30),
    params:
        out=lambda w, output: os.path.dirname(output[0]),
        cfg=lambda w: json.dumps(config.get("synthetic") or {}),
    shell:
        "spatialreasoner --log {log} synthesize --out {params.out} --config {params.cfg:q}"


rule fetch:
    input:
        lambda w: data_rules.fetch_inputs(config, w.source),
    output:
        "resources/downloads/{source}",
    log:
        "logs/fetch/{source}.log",
    benchmark:
        "benchmarks/fetch/{source}.tsv"
    wildcard_constraints:
        source=alternatives(data_rules.url_sources(config)),
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=capped_runtime(240),
    params:
        # The URL may hold credentials: the command reads it from the config files, so it is never on a command
        # line (nor in Snakemake's log and metadata); the redacted form makes a changed URL rerun the download.
        shown_url=lambda w: redact_url(config["sources"][w.source]["url"]),
        configfiles=lambda w: data_rules.configfile_args(workflow.configfiles),
    shell:
        "spatialreasoner --log {log} fetch --source {wildcards.source} --configfile {params.configfiles}"
        " --out {output}"


rule snapshot_dataset:
    output:
        directory("resources/snapshots/{source}"),
    log:
        "logs/snapshot_dataset/{source}.log",
    benchmark:
        "benchmarks/snapshot_dataset/{source}.tsv"
    wildcard_constraints:
        source=alternatives(data_rules.repo_sources(config)),
    conda:
        "../../envs/data.yaml"
    threads: 4
    resources:
        mem_mb=2000,
        runtime=capped_runtime(120),
    params:
        repo=lambda w: config["sources"][w.source]["repo"],
        revision=lambda w: config["sources"][w.source].get("revision", "main"),
        repo_type=lambda w: config["sources"][w.source].get("repo_type", "dataset"),
        patterns=lambda w: data_rules.pattern_args(config, w.source),
    shell:
        "spatialreasoner --log {log} snapshot --repo {params.repo:q} --revision {params.revision:q}"
        " --repo-type {params.repo_type} --out {output} {params.patterns:q}"


rule extract_images:
    input:
        tar=lambda w: data_rules.source_path(config, config["images"][w.imageset]["source"]),
    output:
        directory("resources/images/{imageset}"),
    log:
        "logs/extract_images/{imageset}.log",
    benchmark:
        "benchmarks/extract_images/{imageset}.tsv"
    wildcard_constraints:
        imageset=alternatives(config["images"]),
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=capped_runtime(120),
    shell:
        "spatialreasoner --log {log} extract --tar {input.tar} --out {output}"


rule canonicalize:
    input:
        annotations=lambda w: data_rules.source_path(config, config["datasets"][w.dataset]["annotations"]),
        images=lambda w: data_rules.image_set_dirs(config, w.dataset),
    output:
        "results/data/{dataset}.parquet",
    log:
        "logs/canonicalize/{dataset}.log",
    benchmark:
        "benchmarks/canonicalize/{dataset}.tsv"
    wildcard_constraints:
        dataset=alternatives(config["datasets"]),
    # the training tables lead to training, the workflow's longest path
    priority: 10
    conda:
        "../../envs/data.yaml"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=capped_runtime(120),
    params:
        kind=lambda w: config["datasets"][w.dataset]["kind"],
        split=lambda w: config["datasets"][w.dataset].get("split", "train"),
        on_bad_image=lambda w: config["datasets"][w.dataset].get("on_bad_image", "error"),
        roots=lambda w: data_rules.image_root_args(config, w.dataset),
    shell:
        "spatialreasoner --log {log} canonicalize --kind {params.kind} --annotations {input.annotations:q}"
        " --split {params.split:q} --images {params.roots:q} --on-bad-image {params.on_bad_image}"
        " --workers {threads} --out {output}"


rule prepare_benchmark:
    input:
        tsv=lambda w: data_rules.source_path(config, config["benchmarks"][w.bench]["source"]),
    output:
        "results/benchmarks/{bench}.tsv",
    log:
        "logs/prepare_benchmark/{bench}.log",
    benchmark:
        "benchmarks/prepare_benchmark/{bench}.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=capped_runtime(30),
    shell:
        "spatialreasoner --log {log} prepare-benchmark --benchmark {wildcards.bench} --tsv {input.tsv}"
        " --out {output}"
