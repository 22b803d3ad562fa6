"""The ``spatialreasoner`` command: one subcommand per workflow stage.

Subcommand modules are imported lazily so that ``--help`` and light stages do not pay for torch imports.
Each module defines ``configure_parser(parser)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from spatialreasoner.errors import SpatialReasonerError
from spatialreasoner.utils import redact, redact_standard_streams, setup_logging

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "validate-config": ("spatialreasoner.config", "validate a config file against the schema and print it resolved"),
    "build-tiny-model": ("spatialreasoner.tiny_model", "build the tiny randomly initialised Qwen2.5-VL"),
    "synthesize": ("spatialreasoner.synth.generate", "generate the SynthSpatial dataset in the real file formats"),
    "fetch": ("spatialreasoner.data.fetch", "download one file by URL, verified by sha256"),
    "snapshot": ("spatialreasoner.data.snapshot", "download a Hugging Face Hub repository at a pinned revision"),
    "link-model": ("spatialreasoner.data.local_model", "use a local model folder (one's own checkpoint) as a model"),
    "extract": ("spatialreasoner.data.extract", "extract an image tar safely"),
    "canonicalize": ("spatialreasoner.data.canonical", "convert annotations into a canonical training table"),
    "prepare-benchmark": ("spatialreasoner.data.benchmarks", "validate a VLMEvalKit benchmark TSV"),
    "train": ("spatialreasoner.train.main", "run one SFT or GRPO training run"),
    "infer": ("spatialreasoner.evaluate.infer", "generate predictions of a model on a benchmark"),
    "judge": ("spatialreasoner.evaluate.judge", "decide the replies the option matcher cannot, with an LLM judge"),
    "score": ("spatialreasoner.evaluate.score", "score predictions with VLMEvalKit's option matcher"),
    "tables": ("spatialreasoner.evaluate.tables", "write the paper's tables from scores"),
    "checkpoint-model": (
        "spatialreasoner.evaluate.checkpoint_model",
        "copy a finished run's intermediate checkpoint into a model folder for evaluation",
    ),
    "checkpoint-table": (
        "spatialreasoner.evaluate.checkpoints",
        "collect the accuracy of every evaluated training step with its interval",
    ),
    "report": ("spatialreasoner.report", "write the workflow's results as one self-contained HTML page"),
    "plots": ("spatialreasoner.evaluate.plots", "draw the report's figures: benchmark tables and training curves"),
    "gpu-check": ("spatialreasoner.gpucheck.main", "time SFT, GRPO and inference at the paper's shapes on one GPU"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spatialreasoner", description=__doc__.splitlines()[0])
    parser.add_argument("--log", default=None, help="also append log lines to this file")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:
            importlib.import_module(module_name).configure_parser(p)
    return parser


def log_file_argument(argv: list[str]) -> str | None:
    """The ``--log FILE`` given before the subcommand, read before any subcommand module is imported, so that an
    error while importing one (a missing CUDA library, a broken install) reaches the log file too."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--log", default=None)
    known, _ = pre.parse_known_args(argv[: next((i for i, a in enumerate(argv) if a in SUBCOMMANDS), len(argv))])
    return known.log


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in SUBCOMMANDS), None)
    # Secrets never leave the process: not in its messages, nor in servers' replies or libraries' tracebacks.
    redact_standard_streams()
    setup_logging(log_file_argument(argv))
    try:
        args = build_parser(only=command).parse_args(argv)  # imports the subcommand's module
        result = importlib.import_module(SUBCOMMANDS[args.command][0]).run(args)
    except SpatialReasonerError as exc:
        logging.getLogger("spatialreasoner").error("%s: %s", command, redact(str(exc)))
        return 2
    except Exception:
        # An unexpected error (CUDA OOM, an import error, NCCL): its traceback goes to the rule's --log file too,
        # which on a cluster is where a person looks; the exit status stays that of an uncaught exception.
        logging.getLogger("spatialreasoner").error("%s failed:\n%s", command, redact(traceback.format_exc()))
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
