"""Accuracy along training: every evaluated step of a run with its bootstrap interval, in one table
(``results/tables/checkpoints.csv``); the initial model is step 0 and the final model its stop step where evaluated.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from spatialreasoner.errors import ConfigError, DataError
from spatialreasoner.evaluate import intervals
from spatialreasoner.evaluate.score import HITS_FILE
from spatialreasoner.evaluate.tables import (
    CVB_POOLED,
    DEFAULT_RESAMPLES,
    TABLE_COLUMNS,
    Units,
    column_samples,
    read_benchmark_rows,
    read_csv_or_explain,
    read_hits,
    score_provenance,
)
from spatialreasoner.taxonomy import BENCHMARKS, CANARY, SRB
from spatialreasoner.utils import atomic_path

log = logging.getLogger(__name__)

#: Columns of ``checkpoints.csv``.
COLUMNS = ("run", "step", "benchmark", "metric", "rows", "accuracy", "ci_low", "ci_high", "protocol", "judged rows")
#: The accuracy each benchmark reports along training (the tables' main overall).
METRIC = {SRB: "overall (circular)", "CV-Bench-3D": CVB_POOLED, CANARY: "overall"}


def _parse_point(value: str) -> tuple[str, int, str, str]:
    head, sep, folder = value.partition("=")
    parts = head.rsplit(":", 2)
    if not sep or len(parts) != 3 or not parts[1].isdigit():
        raise argparse.ArgumentTypeError(f"expected RUN:STEP:BENCH=SCORE_DIR, got {value!r}")
    return parts[0], int(parts[1]), parts[2], folder


def checkpoint_table(
    points: Sequence[tuple[str, int, str, str | Path]],
    benchmarks: Mapping[str, str | Path],
    out: str | Path,
    seed: int = 42,
    resamples: int = DEFAULT_RESAMPLES,
) -> pd.DataFrame:
    """``checkpoints.csv`` from ``points`` (run, step, benchmark, score folder): one row per point, sorted by run,
    benchmark and step, with the benchmark's main accuracy and its 95% bootstrap interval."""
    seen = set()
    for run, step, bench, _ in points:
        if bench not in BENCHMARKS:
            raise ConfigError(f"unknown benchmark {bench!r}; expected one of {', '.join(BENCHMARKS)}")
        if bench not in benchmarks:
            raise ConfigError(f"no benchmark file given for {bench} (--benchmark {bench}=TSV)")
        if (run, step, bench) in seen:
            raise ConfigError(f"step {step} of {run} on {bench} given twice")
        seen.add((run, step, bench))
    # every input is read and checked before anything is written
    prepared = {}
    for bench in sorted({p[2] for p in points}):
        rows = read_benchmark_rows(benchmarks[bench], bench)
        units = Units.of(rows, bench)
        prepared[bench] = (rows, units, intervals.resample_counts(units.n, resamples, seed))
    records = []
    for run, step, bench, folder in points:
        rows, units, counts = prepared[bench]
        hits = read_hits(Path(folder) / HITS_FILE, bench, rows)
        num, den = units.numerators(hits["hit"].to_numpy(dtype=float), circular=bench == SRB)
        main = METRIC[bench]
        value, samples = column_samples(units, num, den, counts)[TABLE_COLUMNS[bench][0]]
        est = intervals.estimate(value, samples, units=intervals.unit_count(den))
        records.append(
            {"run": run, "step": step, "benchmark": bench, "metric": main, "rows": len(rows),
             "accuracy": round(est.value, 1), "ci_low": round(est.low, 1), "ci_high": round(est.high, 1),
             **dict(zip(("protocol", "judged rows"), score_provenance(folder), strict=True))}
        )  # fmt: skip
    table = pd.DataFrame(records, columns=list(COLUMNS))
    table = table.sort_values(["run", "benchmark", "step"], kind="stable", ignore_index=True)
    out = Path(out)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.1f")
    for (run, bench), part in table.groupby(["run", "benchmark"], sort=False):
        points_text = ", ".join(f"step {s}: {a:.1f}" for s, a in zip(part.step, part.accuracy, strict=True))
        log.info("%s on %s: %s", run, bench, points_text)
    return table


def read_checkpoint_table(path: str | Path) -> pd.DataFrame:
    """``checkpoints.csv`` checked: its columns, integer steps, accuracies and intervals in [0, 100]."""
    path = Path(path)
    df = read_csv_or_explain(path, "collect the checkpoint scores first (spatialreasoner checkpoint-table)")
    if list(df.columns) != list(COLUMNS):
        raise DataError(f"{path}: expected columns {', '.join(COLUMNS)}; got {', '.join(map(str, df.columns))}")
    if df.empty:
        raise DataError(f"{path}: no rows")
    numbers = df[["step", "accuracy", "ci_low", "ci_high"]].apply(pd.to_numeric, errors="coerce")
    bad = numbers.isna().any(axis=1) | (numbers[["accuracy", "ci_low", "ci_high"]] < 0).any(axis=1)
    bad |= (numbers[["accuracy", "ci_low", "ci_high"]] > 100).any(axis=1) | (numbers["step"] < 0)
    bad |= (numbers["ci_low"] > numbers["accuracy"]) | (numbers["accuracy"] > numbers["ci_high"])
    if bad.any():
        lines = [str(i + 2) for i in df.index[bad][:5]]
        raise DataError(f"{path}: line(s) {', '.join(lines)} hold a step or accuracy that is not a number in range")
    return df


# ------------------------------------------------------------------------------------------------------ CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--point",
        action="append",
        type=_parse_point,
        required=True,
        metavar="RUN:STEP:BENCH=DIR",
        help="a score folder (with hits.csv) of one step of a run on one benchmark; repeat for every point",
    )
    parser.add_argument(
        "--benchmark",
        action="append",
        required=True,
        metavar="BENCH=TSV",
        help="the validated benchmark TSV the hits are checked against; one per benchmark",
    )
    parser.add_argument("--out", required=True, help="CSV file to write (checkpoints.csv)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the bootstrap resamples (default: 42)")
    parser.add_argument(
        "--resamples", type=int, default=DEFAULT_RESAMPLES, help=f"bootstrap resamples (default: {DEFAULT_RESAMPLES})"
    )


def run(args: argparse.Namespace) -> int:
    benchmarks = {}
    for value in args.benchmark:
        bench, sep, path = value.partition("=")
        if not sep or bench in benchmarks:
            raise ConfigError(f"--benchmark: expected BENCH=TSV once per benchmark, got {value!r}")
        benchmarks[bench] = path
    table = checkpoint_table(args.point, benchmarks, args.out, seed=args.seed, resamples=args.resamples)
    print(f"{len(table)} points -> {args.out}")
    return 0
