# Models used without training: the tiny Qwen2.5-VL built locally, Hub snapshots at a pinned revision, or local
# folders (one's own checkpoint) linked in place.

import spatialreasoner.data.local_model as local_model


rule build_tiny_model:
    output:
        directory("resources/models/{model}"),
    log:
        "logs/build_tiny_model/{model}.log",
    benchmark:
        "benchmarks/build_tiny_model/{model}.tsv"
    wildcard_constraints:
        model=alternatives(TINY_MODELS),
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=capped_runtime(10),
    params:
        seed=lambda w: config["released"][w.model]["tiny"].get("seed", 0),
        pixels=lambda w: " ".join(
            f"--{key.replace('_', '-')} {value}"
            for key, value in config["released"][w.model]["tiny"].items()
            if key in ("min_pixels", "max_pixels")
        ),
    shell:
        "spatialreasoner --log {log} build-tiny-model --out {output} --seed {params.seed} {params.pixels}"


rule snapshot_model:
    output:
        directory("resources/models/{model}"),
    log:
        "logs/snapshot_model/{model}.log",
    benchmark:
        "benchmarks/snapshot_model/{model}.tsv"
    wildcard_constraints:
        model=alternatives(HUB_MODELS),
    conda:
        "../../envs/data.yaml"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=capped_runtime(240),
    params:
        repo=lambda w: config["released"][w.model]["repo"],
        revision=lambda w: config["released"][w.model].get("revision", "main"),
    shell:
        "spatialreasoner --log {log} snapshot --repo {params.repo:q} --revision {params.revision:q}"
        " --repo-type model --out {output}"


rule link_model:
    input:
        # the folder's files (checked when the configuration is read): a changed file makes the link, and every
        # prediction from it, out of date
        lambda w: [str(f) for f in local_model.source_files(config["released"][w.model]["path"])],
    output:
        directory("resources/models/{model}"),
    log:
        "logs/link_model/{model}.log",
    benchmark:
        "benchmarks/link_model/{model}.tsv"
    wildcard_constraints:
        model=alternatives(LOCAL_MODELS),
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=capped_runtime(30),
    params:
        source=lambda w: config["released"][w.model]["path"],
    shell:
        "spatialreasoner --log {log} link-model --source {params.source:q} --out {output}"
