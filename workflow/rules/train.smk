# Training: one rule over {run} (config `runs`); SFT or GRPO by the run's `stage`. The working folder
# results/checkpoints/{run}/ is deliberately not an output, so a rerun after a crash, a time limit or a requeue
# resumes from its last checkpoint; the final model folder is written last, atomically. The shell command (one CPU
# process, accelerate on a node's GPUs, or srun + accelerate per node) is composed by spatialreasoner.train.launch.

from spatialreasoner.train.launch import job_resources, train_command


rule train:
    input:
        unpack(
            lambda w: {
                "init": model_dir(config["runs"][w.run]["init"]),
                "data": f"results/data/{config['runs'][w.run]['data']}.parquet",
            }
        ),
    output:
        directory("results/models/{run}"),
    log:
        "logs/train/{run}.log",
    benchmark:
        "benchmarks/train/{run}.tsv"
    # training is the workflow's longest path: start it before evaluation jobs that could wait
    priority: 10
    # a chain of attempts under a partition limit (max_runtime); otherwise the profile's retries
    retries: TRAIN_RETRIES
    conda:
        "../../envs/train.yaml"
    threads: lambda w: job_resources(config["runs"][w.run])["threads"]
    resources:
        gpu=lambda w: job_resources(config["runs"][w.run])["gpu"],
        gpu_model=lambda w: job_resources(config["runs"][w.run])["gpu_model"],
        gres=lambda w: job_resources(config["runs"][w.run])["gres"],
        mpi=lambda w: job_resources(config["runs"][w.run])["mpi"],
        tasks=lambda w: job_resources(config["runs"][w.run])["tasks"],
        tasks_per_gpu=lambda w: job_resources(config["runs"][w.run])["tasks_per_gpu"],
        cpus_per_gpu=lambda w: job_resources(config["runs"][w.run])["cpus_per_gpu"],
        nodes=lambda w: job_resources(config["runs"][w.run])["nodes"],
        mem_mb=lambda w: job_resources(config["runs"][w.run])["mem_mb"],
        runtime=lambda w: attempt_chain(config["runs"][w.run], config.get("max_runtime"))[0],
        slurm_extra=lambda w: job_resources(config["runs"][w.run])["slurm_extra"],
    params:
        cmd=lambda w, input, output: train_command(
            w.run,
            config["runs"][w.run],
            init=input.init,
            data=input.data,
            checkpoint_dir=f"results/checkpoints/{w.run}",
            out=output[0],
            log=f"logs/train/{w.run}.log",
            prompts=config.get("prompts", {}),
            seed=config.get("seed", 42),
            min_pixels=config.get("vision", {}).get("min_pixels"),
            max_pixels=config.get("vision", {}).get("max_pixels"),
        ),
    shell:
        "{params.cmd}"
