"""The paper's tables from the per-row hits of every model: 3DSRBench (circular + per row), CV-Bench-3D, a summary.

Every accuracy comes with a seeded 95% bootstrap interval (resampling questions; 3DSRBench's circular groups), every
table row with the rows / groups it rests on and the share of replies without a matched answer, and a ``chance``
row gives the expected accuracy of a uniform guess (per row 1/k; a circular group: the product over its rows). The
hits files are checked against the benchmark (every row once, its category, qid and answer) before anything is
computed; a damaged file stops the step with its name.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from spatialreasoner.errors import ConfigError, DataError
from spatialreasoner.evaluate import intervals
from spatialreasoner.evaluate.score import CATEGORIES, HITS_FILE, circular_group, read_table
from spatialreasoner.matcher import choices_of
from spatialreasoner.prompts import OPTION_LETTERS
from spatialreasoner.taxonomy import BENCHMARKS, CANARY, CVB, CVB_CATEGORIES, SRB, SRB_SUBTYPES, SRB_TYPES
from spatialreasoner.utils import atomic_path, json_object_arg

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.md"
#: What the canary's figures mean, wherever they are shown.
CANARY_NOTE = (
    f"{CANARY}: SynthSpatial's paired pictures whose question text alone gives chance (the picture decides the "
    "answer); its rows are also SFT rows, so it is a memorisation check of the chain (image, training, saving, "
    "loading, inference, scoring), not a generalisation claim."
)
#: CV-Bench-3D's overall over all questions, and the original CV-Bench's definition (mean of the two categories).
CVB_POOLED = "overall (pooled)"
CVB_MEAN = "overall (mean of Depth and Distance)"
#: Accuracy columns of each benchmark's table, after ``model`` and the counts.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    SRB: ("overall", *SRB_TYPES, *SRB_SUBTYPES),
    CVB: (CVB_POOLED, CVB_MEAN, *CVB_CATEGORIES),
    # one category: its column would repeat the overall
    CANARY: ("overall",),
}
#: The columns the summary shows for each benchmark when the paper gives none of them.
HEADLINE: dict[str, tuple[str, ...]] = {SRB: ("overall", *SRB_TYPES), CVB: (CVB_POOLED, CVB_MEAN), CANARY: ("overall",)}
#: Names in ``paper`` that stand for a table column (the published CV-Bench-3D "overall" is the pooled one).
PAPER_ALIASES: dict[str, dict[str, str]] = {CVB: {"overall": CVB_POOLED}}
COUNT_COLUMNS = ("rows", "groups", "unmatched (%)")
#: The last columns of every table: the protocol that made the row (from its score's summary.json) and the rows an
#: LLM judge decided in it (0 where no judge ran; empty for the chance row).
PROVENANCE_COLUMNS = ("protocol", "judged rows")
#: The row of expected chance accuracy, added to every table.
CHANCE = "chance (expected)"
LOW, HIGH = "ci_low", "ci_high"
DEFAULT_RESAMPLES = 2000
_MAX_NAMED = 5
_TRUE, _FALSE = {"True", "true", "1"}, {"False", "false", "0"}


def table_path(out_dir: str | Path, benchmark: str, per_row: bool = False) -> Path:
    """``<out>/<bench>.csv``; the 3DSRBench per-row (non-circular) table is ``<out>/3DSRBench_per_row.csv``."""
    return Path(out_dir) / (f"{benchmark}_per_row.csv" if per_row else f"{benchmark}.csv")


def interval_columns(column: str) -> tuple[str, str, str]:
    return column, f"{column} {LOW}", f"{column} {HIGH}"


def csv_columns(benchmark: str) -> list[str]:
    """The columns of a written table: model, counts, then every accuracy with its interval bounds."""
    counts = [c for c in COUNT_COLUMNS if benchmark == SRB or c != "groups"]
    accuracies = (c for col in TABLE_COLUMNS[benchmark] for c in interval_columns(col))
    return ["model", *counts, *accuracies, *PROVENANCE_COLUMNS]


def _name_rows(indices: Sequence, what: str) -> str:
    shown = ", ".join(str(i) for i in list(indices)[:_MAX_NAMED])
    more = f" and {len(indices) - _MAX_NAMED} more" if len(indices) > _MAX_NAMED else ""
    return f"{len(indices)} row(s) {what}: index {shown}{more}"


# ----------------------------------------------------------------------------------------------------- inputs


def read_benchmark_rows(path: str | Path, benchmark: str) -> pd.DataFrame:
    """The benchmark's ``index`` (as text), ``category``, ``answer``, ``qid`` (3DSRBench) and option count ``k``."""
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {benchmark!r}; expected one of {', '.join(BENCHMARKS)}")
    wanted = ["index", "category", "answer", *OPTION_LETTERS] + (["qid"] if benchmark == SRB else [])
    df = read_table(path, columns=wanted)
    missing = [
        c for c in ("index", "category", "answer", "A", "B", *(["qid"] if benchmark == SRB else [])) if c not in df
    ]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} of a {benchmark} benchmark")
    letters = [c for c in OPTION_LETTERS if c in df.columns]
    out = pd.DataFrame({"index": df["index"].astype(str), "category": df["category"].astype(str)})
    out["answer"] = df["answer"].astype(str)
    out["k"] = [len(choices_of(opts)) for opts in df[letters].to_dict("records")]
    if benchmark == SRB:
        out["qid"] = df["qid"].astype(str)
    if out["index"].duplicated().any():
        raise DataError(f"{path}: " + _name_rows(out.loc[out["index"].duplicated(), "index"].tolist(), "repeated"))
    return out


def read_hits(path: str | Path, benchmark: str, reference: pd.DataFrame) -> pd.DataFrame:
    """A score folder's ``hits.csv`` checked against the benchmark rows ``reference``; rows in benchmark order.

    Every benchmark row must appear once with its own category (and qid), ``hit`` must be True or False, and the hit
    must agree with the extracted letter and the benchmark's answer: a cut, edited or stale file is a DataError
    naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing; score the model first (spatialreasoner score)")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path}: cannot read as a hits CSV ({exc}); score the model again") from exc
    required = ["index", "category", "extracted", "hit"] + (["qid"] if benchmark == SRB else [])
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; a hits file has {', '.join(required)}; "
            "score the model again"
        )
    if df.empty:
        raise DataError(f"{path}: no rows; expected {len(reference)} (one per benchmark row)")
    dup = df.loc[df["index"].duplicated(), "index"].tolist()
    if dup:
        raise DataError(f"{path}: " + _name_rows(dup, "repeated"))
    have, want = set(df["index"]), set(reference["index"])
    absent = [i for i in reference["index"] if i not in have]
    if absent:
        raise DataError(f"{path}: {len(df)} rows, expected {len(reference)}; " + _name_rows(absent, "absent"))
    extra = [i for i in df["index"] if i not in want]
    if extra:
        raise DataError(f"{path}: " + _name_rows(extra, "not in the benchmark"))
    df = df.set_index("index").loc[reference["index"]].reset_index()
    bad_hit = df.loc[~df["hit"].isin(_TRUE | _FALSE), "index"].tolist()
    if bad_hit:
        raise DataError(f"{path}: column hit must be True or False; " + _name_rows(bad_hit, "with another value"))
    letters = set(OPTION_LETTERS) | {"Z"}
    bad_letter = df.loc[~df["extracted"].isin(letters), "index"].tolist()
    if bad_letter:
        raise DataError(
            f"{path}: column extracted must be one of {', '.join(sorted(letters))}; "
            + _name_rows(bad_letter, "with another value")
        )
    checks = [("category", "category")] + ([("qid", "qid")] if benchmark == SRB else [])
    for column, ref_column in checks:
        wrong = df.loc[df[column].to_numpy() != reference[ref_column].to_numpy(), "index"].tolist()
        if wrong:
            raise DataError(f"{path}: {column} differs from the benchmark's; " + _name_rows(wrong, "affected"))
    hit = df["hit"].isin(_TRUE).to_numpy()
    inconsistent = df.loc[hit != (df["extracted"].to_numpy() == reference["answer"].to_numpy()), "index"].tolist()
    if inconsistent:
        raise DataError(
            f"{path}: hit disagrees with the extracted letter and the benchmark's answer; "
            + _name_rows(inconsistent, "affected")
        )
    return pd.DataFrame({"index": df["index"], "extracted": df["extracted"], "hit": hit})


# ------------------------------------------------------------------------------------------------------ units


@dataclass
class Units:
    """The resampled units of a benchmark (3DSRBench: circular groups; CV-Bench-3D: questions) and its rows."""

    benchmark: str
    rows: pd.DataFrame  # benchmark rows, with ``unit`` (the unit each row belongs to)
    category: np.ndarray  # category of each unit
    size: np.ndarray  # rows per unit

    @classmethod
    def of(cls, rows: pd.DataFrame, benchmark: str) -> Units:
        rows = rows.copy()
        if benchmark == SRB:
            codes, _ = pd.factorize(circular_group(rows["qid"]))
        else:
            codes = np.arange(len(rows))
        rows["unit"] = codes
        grouped = rows.groupby("unit", sort=True)
        mixed = grouped["category"].nunique()
        if (mixed > 1).any():
            raise DataError(f"{benchmark}: a circular group mixes categories; every row of a group must share one")
        return cls(benchmark, rows, grouped["category"].first().to_numpy(), grouped.size().to_numpy())

    @property
    def n(self) -> int:
        return len(self.size)

    def numerators(self, per_row_values: np.ndarray, circular: bool) -> tuple[np.ndarray, np.ndarray]:
        """Per-unit numerator and denominator: circular, the product over the group's rows (all hit, or the
        chance of all hit) over 1; per row, the sum over the group's rows over its size."""
        values = pd.Series(np.asarray(per_row_values, dtype=float)).groupby(self.rows["unit"].to_numpy())
        if circular:
            return values.prod().to_numpy(), np.ones(self.n)
        return values.sum().to_numpy(), self.size.astype(float)

    def masks(self) -> dict[str, np.ndarray | None]:
        """The units each column of the benchmark's table averages over (None: all)."""
        masks: dict[str, np.ndarray | None] = {}
        cats = self.category
        if self.benchmark == SRB:
            masks["overall"] = None
            for type_name, subs in SRB_TYPES.items():
                masks[type_name] = np.isin(cats, subs)
            for sub in SRB_SUBTYPES:
                masks[sub] = cats == sub
        else:
            masks[TABLE_COLUMNS[self.benchmark][0]] = None
            for cat in CATEGORIES[self.benchmark]:
                masks[cat] = cats == cat
        return masks


def column_samples(
    units: Units, num: np.ndarray, den: np.ndarray, counts: np.ndarray
) -> dict[str, tuple[float, np.ndarray]]:
    """Every accuracy column of the benchmark's table: the value and its resampled values."""
    out = {col: intervals.ratio_samples(num, den, counts, mask) for col, mask in units.masks().items()}
    if units.benchmark == CVB:
        parts = [out[c] for c in CVB_CATEGORIES]
        out[CVB_MEAN] = (float(np.mean([p[0] for p in parts])), np.mean([p[1] for p in parts], axis=0))
    return {col: out[col] for col in TABLE_COLUMNS[units.benchmark]}


def column_units(units: Units, den: np.ndarray) -> dict[str, int]:
    """The units each accuracy column averages over (for the exact interval at 0% and 100%)."""
    return {col: intervals.unit_count(den, mask) for col, mask in units.masks().items()}


@dataclass
class ModelScores:
    """One model (or the chance row) on one benchmark: per-row hit values and the replies without an answer."""

    name: str
    values: np.ndarray  # per benchmark row: 1.0/0.0 hits, or the chance of a hit
    unmatched: float | None  # share of replies with no matched answer, %; None for the chance row
    protocol: str | None = None  # how the replies became letters (PROVENANCE_COLUMNS)
    judged: int | None = None  # rows an LLM judge decided


def table_frame(units: Units, models: Sequence[ModelScores], counts: np.ndarray, circular: bool):
    """The table (one row per model) and every model's resampled columns, for paired differences."""
    records, samples = [], {}
    for model in models:
        num, den = units.numerators(model.values, circular)
        cols = column_samples(units, num, den, counts)
        samples[model.name] = cols
        record: dict = {"model": model.name, "rows": len(units.rows)}
        if units.benchmark == SRB:
            record["groups"] = units.n
        record["unmatched (%)"] = round(model.unmatched, 1) if model.unmatched is not None else math.nan
        n_units = column_units(units, den)
        for col, (value, resampled) in cols.items():
            est = intervals.estimate(value, resampled, units=n_units.get(col, units.n))
            for name, v in zip(interval_columns(col), (est.value, est.low, est.high), strict=True):
                record[name] = round(v, 1) if not math.isnan(v) else math.nan
        record |= dict(zip(PROVENANCE_COLUMNS, (model.protocol, model.judged), strict=True))
        records.append(record)
    return pd.DataFrame(records, columns=csv_columns(units.benchmark)), samples


# ------------------------------------------------------------------------------------------------------ summary


def _published(paper: Mapping, bench: str, name: str | None) -> dict[str, float]:
    ref = dict((paper.get(bench) or {}).get(name) or {}) if name else {}
    aliases = PAPER_ALIASES.get(bench, {})
    return {aliases.get(k, k): v for k, v in ref.items()}


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):.1f}"


def _provenance_text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return str(int(value)) if isinstance(value, (int, float, np.integer)) else f"`{value}`"


def summary_markdown(
    results: Mapping[str, dict],
    paper: Mapping[str, Mapping[str, Mapping[str, float]]],
    paper_names: Mapping[str, str | None],
    compare: Sequence[tuple[str, str]],
    resamples: int,
    seed: int,
) -> str:
    """Markdown: every model next to the paper's numbers, with intervals, then the paired differences."""
    lines = ["# Results vs. the paper", ""]
    lines.append(
        f"Accuracy in %, with 95% bootstrap intervals in brackets ({resamples} resamples of the questions, 3DSRBench "
        f"by circular group; seed {seed}; at 0% or 100% the exact binomial interval). 3DSRBench: circular accuracy (a question group counts only if all its "
        "rotations are right); CV-Bench-3D: over all questions (pooled) and the mean of its two categories. "
        f"`{CHANCE}` is the expected accuracy of a uniform guess among each row's options. `(paper)` is the "
        "published number, `(diff)` = ours - paper. Full tables: the CSV files next to this summary."
    )
    if CANARY in results:
        lines += ["", CANARY_NOTE]
    for bench, result in results.items():
        table, samples = result["table"], result["samples"]
        published_all = paper.get(bench, {}) or {}
        compared = [
            c for c in TABLE_COLUMNS[bench] if any(c in _published(paper, bench, name) for name in published_all)
        ]
        shown = [c for c in TABLE_COLUMNS[bench] if c in compared or c in HEADLINE[bench]]
        lines += ["", f"## {bench}", ""]
        header = ["model", "paper model", "rows", *(["groups"] if bench == SRB else []), "unmatched (%)"]
        for c in shown:
            header += [c] + ([f"{c} (paper)", f"{c} (diff)"] if c in compared else [])
        if bench == SRB:
            header.append("overall per row")
        header += ["protocol", "judged rows"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        per_row = result.get("per_row")
        for i, row in table.iterrows():
            ref_name = paper_names.get(row["model"])
            ref = _published(paper, bench, ref_name)
            cells = [str(row["model"]), ref_name or "–", str(int(row["rows"]))]
            if bench == SRB:
                cells.append(str(int(row["groups"])))
            cells.append(_fmt(row["unmatched (%)"]))
            for c in shown:
                est = intervals.Estimate(row[c], row[f"{c} {LOW}"], row[f"{c} {HIGH}"])
                cells.append(est.as_text())
                if c in compared:
                    theirs = ref.get(c)
                    cells += [_fmt(theirs), "–" if theirs is None else f"{float(row[c]) - float(theirs):+.1f}"]
            if per_row is not None:
                r = per_row.iloc[i]
                cells.append(intervals.Estimate(r["overall"], r[f"overall {LOW}"], r[f"overall {HIGH}"]).as_text())
            cells += [_provenance_text(row["protocol"]), _provenance_text(row["judged rows"])]
            lines.append("| " + " | ".join(cells) + " |")
        if bench == SRB:
            lines += ["", "`overall per row`: every question on its own (not circular), what VLMEvalKit calls Overall."]
        missing = [p for p in published_all if p not in set(paper_names.values())]
        if missing:
            lines += ["", f"Published but not evaluated here: {', '.join(missing)}."]
        pairs = [(a, b) for a, b in compare if a in samples and b in samples]
        if pairs:
            cols = list(HEADLINE[bench])
            lines += ["", f"Paired differences on the same questions ({bench}, percentage points):", ""]
            lines += ["| difference | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
            for a, b in pairs:
                cells = [f"{a} - {b}"]
                for c in cols:
                    (va, sa), (vb, sb) = samples[a][c], samples[b][c]
                    cells.append(intervals.estimate(va - vb, sa - sb).as_text(signed=True))
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------ tables


def scoring_markdown(scores: Mapping[str, Mapping[str, str | Path]]) -> str:
    """How every row was scored, from its score folder's ``summary.json`` (when there): the protocol, the rows an
    LLM judge decided (and those its random fallback decided), and the image processor's pixel limits at inference."""
    import json

    lines = []
    for bench, by_model in scores.items():
        for name, folder in by_model.items():
            path = Path(folder) / "summary.json"
            if not path.is_file():
                continue
            try:
                info = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(f"{path}: not a readable score summary ({exc}); score the model again") from exc
            judged = info.get("judged")
            judged_text = "–" if judged is None else f"{judged} ({info.get('judge_fallback', 0)} by fallback)"
            if "judge_model" in info:
                judge = info["judge_model"] or "no judge"
                judged_text += f"; {info.get('undecided', '?')} undecided by the matcher, judge: {judge}"
            low, high = info.get("min_pixels"), info.get("max_pixels")
            pixels = "–" if low is None and high is None else f"{low if low is not None else '?'}–{high}"
            if info.get("pixels_from"):
                pixels += f" ({info['pixels_from']}'s)"
            lines.append(f"| {bench} | {name} | {info.get('protocol', '–')} | {judged_text} | {pixels} |")
    if not lines:
        return ""
    head = ["", "## Scoring", "", "How each row was scored: the answer-extraction protocol, the rows an LLM judge decided",
            "(protocol vlmevalkit), and the image processor's pixel limits (min–max) at inference.", "",
            "| benchmark | model | protocol | judged rows | pixels |", "|---|---|---|---|---|"]  # fmt: skip
    return "\n".join(head + lines) + "\n"


def score_provenance(folder: str | Path) -> tuple[str | None, int | None]:
    """The protocol label and the judged-row count of a score folder, from its ``summary.json`` (None, None without
    one). ``vlmevalkit`` without a judge endpoint reads ``vlmevalkit (no judge)``; the random draw reads ``random``."""
    import json

    path = Path(folder) / "summary.json"
    if not path.is_file():
        return None, None
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable score summary ({exc}); score the model again") from exc
    if info.get("random_seed") is not None:
        return "random", 0
    protocol = str(info.get("protocol", "answer_tag"))
    if "judge_model" in info and info["judge_model"] is None:
        protocol += " (no judge)"
    return protocol, int(info.get("judged") or 0)


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.1f")


def write_tables(
    scores: Mapping[str, Mapping[str, str | Path]],
    benchmarks: Mapping[str, str | Path],
    out_dir: str | Path,
    paper: Mapping | None = None,
    paper_names: Mapping[str, str | None] | None = None,
    compare: Sequence[tuple[str, str]] = (),
    seed: int = 42,
    resamples: int = DEFAULT_RESAMPLES,
) -> dict[str, Path]:
    """Write ``<bench>.csv`` (+ ``3DSRBench_per_row.csv``) and ``summary.md``.

    ``scores[bench][model]`` is a score folder holding ``hits.csv``; ``benchmarks[bench]`` the benchmark TSV the
    hits are checked against. Every input is read and checked before anything is written. ``compare`` lists pairs
    (a, b) whose paired difference a - b the summary shows; every model minus chance is added.
    """
    out_dir = Path(out_dir)
    paper, paper_names = paper or {}, paper_names or {}
    if resamples < 1:
        raise ConfigError(f"bootstrap resamples must be at least 1, got {resamples}")
    results: dict[str, dict] = {}
    for bench, by_model in scores.items():
        if bench not in BENCHMARKS:
            raise ConfigError(f"unknown benchmark {bench!r}; expected one of {', '.join(BENCHMARKS)}")
        if bench not in benchmarks:
            raise ConfigError(f"no benchmark file given for {bench} (--benchmark {bench}=TSV)")
        if CHANCE in by_model:
            raise ConfigError(f"model name {CHANCE!r} is reserved for the chance row")
        rows = read_benchmark_rows(benchmarks[bench], bench)
        models = []
        for name, folder in by_model.items():
            hits = read_hits(Path(folder) / HITS_FILE, bench, rows)
            unmatched = 100.0 * float((hits["extracted"] == "Z").mean())
            models.append(ModelScores(name, hits["hit"].to_numpy(dtype=float), unmatched, *score_provenance(folder)))
        models.append(ModelScores(CHANCE, 1.0 / rows["k"].to_numpy(dtype=float), None))
        units = Units.of(rows, bench)
        # One set of draws per benchmark, shared by every model: differences are paired.
        counts = intervals.resample_counts(units.n, resamples, seed)
        table, samples = table_frame(units, models, counts, circular=bench == SRB)
        results[bench] = {"table": table, "samples": samples}
        if bench == SRB:
            results[bench]["per_row"], _ = table_frame(units, models, counts, circular=False)
    pairs = list(dict.fromkeys([*map(tuple, compare), *((m, CHANCE) for b in scores.values() for m in b)]))
    summary = summary_markdown(results, paper, paper_names, pairs, resamples, seed) + scoring_markdown(scores)

    written: dict[str, Path] = {}
    for bench, result in results.items():
        written[bench] = table_path(out_dir, bench)
        _write_csv(result["table"], written[bench])
        if "per_row" in result:
            written[f"{bench}_per_row"] = table_path(out_dir, bench, per_row=True)
            _write_csv(result["per_row"], written[f"{bench}_per_row"])
        overall = TABLE_COLUMNS[bench][0]
        log.info(
            "%s: %d model(s), %d rows%s -> %s; %s",
            bench,
            len(result["table"]) - 1,
            int(result["table"]["rows"].iloc[0]),
            f" in {int(result['table']['groups'].iloc[0])} groups" if bench == SRB else "",
            written[bench],
            ", ".join(f"{r['model']} {r[overall]:.1f}" for _, r in result["table"].iterrows()),
        )
    path = out_dir / SUMMARY_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(summary)
    written["summary"] = path
    return written


def read_csv_or_explain(path: Path, make_it: str) -> pd.DataFrame:
    """``path`` read as CSV; a missing file says how to ``make_it``, an unreadable one names the file."""
    if not path.is_file():
        raise DataError(f"{path}: missing; {make_it}")
    try:
        return pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot read as a CSV table: {exc}") from exc


def read_table_csv(path: str | Path, benchmark: str) -> pd.DataFrame:
    """A table written by :func:`write_tables`, checked: its columns, numbers in [0, 100], one row per model."""
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {benchmark!r}; expected one of {', '.join(BENCHMARKS)}")
    path = Path(path)
    df = read_csv_or_explain(path, "write the tables first (spatialreasoner tables)")
    expected = csv_columns(benchmark)
    if list(df.columns) != expected:
        missing = [c for c in expected if c not in df.columns]
        raise DataError(
            f"{path}: columns differ from a {benchmark} table's"
            + (f" (missing {', '.join(missing)})" if missing else "")
            + "; write the tables again"
        )
    if df.empty:
        raise DataError(f"{path}: no rows; expected one row per model")
    import csv

    with path.open(newline="") as fh:
        short = [n for n, fields in enumerate(csv.reader(fh)) if n and len(fields) != len(expected)]
    if short:
        raise DataError(
            f"{path}: line(s) {', '.join(map(str, short[:_MAX_NAMED]))} do not have {len(expected)} fields (a cut file?)"
        )
    numeric = [c for c in expected if c not in ("model", "unmatched (%)", "protocol")]
    values = df[numeric].apply(pd.to_numeric, errors="coerce")
    bad = (
        (values.isna() & df[numeric].notna())
        | (values < 0)
        | (values[[c for c in numeric if c not in (*COUNT_COLUMNS, *PROVENANCE_COLUMNS)]] > 100)
    )
    if bad.any().any():
        column = bad.any()[bad.any()].index[0]
        raise DataError(f"{path}: column {column} holds values that are not accuracies in % (0-100)")
    for col in TABLE_COLUMNS[benchmark]:
        outside = (values[col] < values[f"{col} {LOW}"]) | (values[col] > values[f"{col} {HIGH}"])
        if outside.any():
            models = ", ".join(df.loc[outside, "model"].astype(str))
            raise DataError(f"{path}: column {col} lies outside its own interval for {models} (an edited number?)")
    df[numeric] = values
    return df


# ------------------------------------------------------------------------------------------------------ CLI


def _parse_score_arg(value: str) -> tuple[str, str, str]:
    parts = value.split("=", 1)
    if len(parts) != 2 or ":" not in parts[0]:
        raise argparse.ArgumentTypeError(f"expected BENCH:MODEL=SCORE_DIR, got {value!r}")
    bench, model = parts[0].split(":", 1)
    return bench, model, parts[1]


def _parse_benchmark_arg(value: str) -> tuple[str, str]:
    bench, sep, path = value.partition("=")
    if not sep or not bench or not path:
        raise argparse.ArgumentTypeError(f"expected BENCH=TSV, got {value!r}")
    return bench, path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--score",
        action="append",
        type=_parse_score_arg,
        required=True,
        metavar="BENCH:MODEL=DIR",
        help="a score folder (with hits.csv) written by `spatialreasoner score`; repeat for every model and "
        "benchmark (table rows follow this order)",
    )
    parser.add_argument(
        "--benchmark",
        action="append",
        type=_parse_benchmark_arg,
        required=True,
        metavar="BENCH=TSV",
        help="the validated benchmark TSV the hits are checked against; one per benchmark",
    )
    parser.add_argument("--out", required=True, help="tables folder")
    parser.add_argument("--paper", default="{}", help="JSON: published numbers paper[bench][paper_model][column]")
    parser.add_argument("--paper-names", default="{}", help="JSON: model -> paper model it reproduces (null for none)")
    parser.add_argument(
        "--compare", default="[]", help="JSON list of [A, B] model pairs whose paired difference A - B is summarised"
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of the bootstrap resamples (default: 42)")
    parser.add_argument(
        "--resamples", type=int, default=DEFAULT_RESAMPLES, help=f"bootstrap resamples (default: {DEFAULT_RESAMPLES})"
    )


def _compare_arg(text: str) -> list[tuple[str, str]]:
    import json

    try:
        pairs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--compare: not valid JSON ({exc})") from exc
    if not isinstance(pairs, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in pairs
    ):
        raise ConfigError(f"--compare: expected a JSON list of [A, B] name pairs, got {text!r}")
    return [(a, b) for a, b in pairs]


def run(args: argparse.Namespace) -> int:
    scores: dict[str, dict[str, str]] = {}
    for bench, model, path in args.score:
        scores.setdefault(bench, {})
        if model in scores[bench]:
            raise ConfigError(f"--score {bench}:{model} given twice")
        scores[bench][model] = path
    benchmarks: dict[str, str] = {}
    for bench, path in args.benchmark:
        if bench in benchmarks:
            raise ConfigError(f"--benchmark {bench} given twice")
        benchmarks[bench] = path
    written = write_tables(
        scores,
        benchmarks,
        args.out,
        json_object_arg(args.paper, "--paper"),
        json_object_arg(args.paper_names, "--paper-names"),
        _compare_arg(args.compare),
        seed=args.seed,
        resamples=args.resamples,
    )
    for key, path in written.items():
        print(f"{key}: {path}")
    return 0
