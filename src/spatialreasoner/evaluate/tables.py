"""The paper's tables from score folders: 3DSRBench (circular + per-row), CV-Bench-3D, and a summary vs. the paper.

Each score folder holds the table row(s) that ``spatialreasoner score`` wrote; this module only collects them.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from spatialreasoner.errors import ConfigError, DataError
from spatialreasoner.evaluate.score import BENCHMARKS, PER_ROW_FILE, SRB, TABLE_COLUMNS, TABLE_FILE
from spatialreasoner.utils import atomic_path, json_object_arg

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.md"


def table_path(out_dir: str | Path, benchmark: str, per_row: bool = False) -> Path:
    """``<out>/<bench>.csv``; the 3DSRBench per-row (non-circular) table is ``<out>/3DSRBench_per_row.csv``."""
    return Path(out_dir) / (f"{benchmark}_per_row.csv" if per_row else f"{benchmark}.csv")


def read_row(score_dir: str | Path, benchmark: str, model: str, per_row: bool = False) -> dict:
    """The one table row in a score folder, renamed to ``model``; a DataError if absent or malformed."""
    path = Path(score_dir) / (PER_ROW_FILE if per_row else TABLE_FILE)
    if not path.is_file():
        raise DataError(f"{path}: missing; score {model} on {benchmark} first (spatialreasoner score)")
    df = pd.read_csv(path)
    expected = ["model", *TABLE_COLUMNS[benchmark]]
    if list(df.columns) != expected or len(df) != 1:
        raise DataError(
            f"{path}: expected one row with columns {', '.join(expected)}; got {len(df)} row(s) "
            f"with {', '.join(map(str, df.columns))}"
        )
    row = df.iloc[0].to_dict()
    row["model"] = model
    return row


def build_table(entries: Sequence[tuple[str, str | Path]], benchmark: str, per_row: bool = False) -> pd.DataFrame:
    """One row per (model, score folder), in the given order, with the benchmark's columns."""
    names = [name for name, _ in entries]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"model(s) listed twice for {benchmark}: {', '.join(dup)}")
    rows = [read_row(d, benchmark, name, per_row) for name, d in entries]
    return pd.DataFrame(rows, columns=["model", *TABLE_COLUMNS[benchmark]])


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):.1f}"


def _fmt_diff(ours, paper) -> str:
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (ours, paper)):
        return "–"
    return f"{float(ours) - float(paper):+.1f}"


def summary_markdown(
    tables: Mapping[str, pd.DataFrame],
    paper: Mapping[str, Mapping[str, Mapping[str, float]]],
    paper_names: Mapping[str, str | None],
    per_row: pd.DataFrame | None = None,
) -> str:
    """Markdown: for each benchmark, every evaluated model next to the paper's numbers and the difference.

    ``paper[bench][paper_model][column]`` holds published numbers; ``paper_names[model]`` names the paper row a
    model reproduces (None: no published counterpart). Only the columns the paper reports are compared (all of the
    table's columns when it reports none); the full tables are the CSV files next to this one.
    """
    lines = ["# Results vs. the paper", ""]
    lines.append(
        "Accuracy in %. 3DSRBench: circular accuracy (a question group counts only if all its rotations are right); "
        "CV-Bench-3D: over all questions. `(paper)` is the published number, `(diff)` = ours - paper. "
        "Full tables: the CSV files next to this summary."
    )
    for bench, table in tables.items():
        published = paper.get(bench, {}) or {}
        columns = [c for c in TABLE_COLUMNS[bench] if c in table.columns]
        compared = [c for c in columns if any(c in (v or {}) for v in published.values())]
        shown = compared or columns
        lines += ["", f"## {bench}", ""]
        header = ["model", "paper model"]
        for c in shown:
            header += [c] + ([f"{c} (paper)", f"{c} (diff)"] if c in compared else [])
        rows_per_row = {}
        if bench == SRB and per_row is not None:
            header.append("overall per row")
            rows_per_row = dict(zip(per_row["model"], per_row["overall"], strict=True))
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for _, row in table.iterrows():
            ref_name = paper_names.get(row["model"])
            ref = (published.get(ref_name) or {}) if ref_name else {}
            cells = [str(row["model"]), ref_name or "–"]
            for c in shown:
                cells.append(_fmt(row[c]))
                if c in compared:
                    cells += [_fmt(ref.get(c)), _fmt_diff(row[c], ref.get(c))]
            if rows_per_row:
                cells.append(_fmt(rows_per_row.get(row["model"])))
            lines.append("| " + " | ".join(cells) + " |")
        if rows_per_row:
            lines += ["", "`overall per row`: every question on its own (not circular), what VLMEvalKit calls Overall."]
        missing = [p for p in published if p not in set(paper_names.values())]
        if missing:
            lines += ["", f"Published but not evaluated here: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def write_tables(
    scores: Mapping[str, Mapping[str, str | Path]],
    out_dir: str | Path,
    paper: Mapping | None = None,
    paper_names: Mapping[str, str | None] | None = None,
) -> dict[str, Path]:
    """Write ``<bench>.csv`` (+ ``3DSRBench_per_row.csv``) and ``summary.md`` from ``scores[bench][model] = dir``."""
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    tables: dict[str, pd.DataFrame] = {}
    per_row = None
    for bench, by_model in scores.items():
        if bench not in BENCHMARKS:
            raise ConfigError(f"unknown benchmark {bench!r}; expected one of {', '.join(BENCHMARKS)}")
        entries = list(by_model.items())
        tables[bench] = build_table(entries, bench)
        path = table_path(out_dir, bench)
        with atomic_path(path) as tmp:
            tables[bench].to_csv(tmp, index=False, float_format="%.1f")
        written[bench] = path
        if bench == SRB:
            per_row = build_table(entries, bench, per_row=True)
            path = table_path(out_dir, bench, per_row=True)
            with atomic_path(path) as tmp:
                per_row.to_csv(tmp, index=False, float_format="%.1f")
            written[f"{bench}_per_row"] = path
        log.info("%s: %d model(s) -> %s", bench, len(entries), written[bench])
    summary = summary_markdown(tables, paper or {}, paper_names or {}, per_row)
    path = out_dir / SUMMARY_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(summary)
    written["summary"] = path
    return written


def _parse_score_arg(value: str) -> tuple[str, str, str]:
    parts = value.split("=", 1)
    if len(parts) != 2 or ":" not in parts[0]:
        raise argparse.ArgumentTypeError(f"expected BENCH:MODEL=SCORE_DIR, got {value!r}")
    bench, model = parts[0].split(":", 1)
    return bench, model, parts[1]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--score",
        action="append",
        type=_parse_score_arg,
        required=True,
        metavar="BENCH:MODEL=DIR",
        help="a score folder written by `spatialreasoner score`; repeat for every model and benchmark "
        "(table rows follow this order)",
    )
    parser.add_argument("--out", required=True, help="tables folder")
    parser.add_argument("--paper", default="{}", help="JSON: published numbers paper[bench][paper_model][column]")
    parser.add_argument("--paper-names", default="{}", help="JSON: model -> paper model it reproduces (null for none)")


def run(args: argparse.Namespace) -> int:
    scores: dict[str, dict[str, str]] = {}
    for bench, model, path in args.score:
        scores.setdefault(bench, {})
        if model in scores[bench]:
            raise ConfigError(f"--score {bench}:{model} given twice")
        scores[bench][model] = path
    paper = json_object_arg(args.paper, "--paper")
    names = json_object_arg(args.paper_names, "--paper-names")
    written = write_tables(scores, args.out, paper, names)
    for key, path in written.items():
        print(f"{key}: {path}")
    return 0
