# Models used without training: the tiny Qwen2.5-VL built locally, or Hub snapshots at a pinned revision.


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
        runtime=10,
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
        runtime=240,
    params:
        repo=lambda w: config["released"][w.model]["repo"],
        revision=lambda w: config["released"][w.model].get("revision", "main"),
    shell:
        "spatialreasoner --log {log} snapshot --repo {params.repo:q} --revision {params.revision:q}"
        " --repo-type model --out {output}"
