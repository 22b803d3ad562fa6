"""Score benchmark predictions with VLMEvalKit's deterministic matcher: per-row hits and the benchmark's table rows.

3DSRBench is scored with circular accuracy over question groups (and per row); CV-Bench-3D and the canary per
question, pooled.
With ``--reference`` (the workflow always gives the benchmark) every benchmark column is taken from the benchmark and
the predictions file contributes only its ``prediction`` column: a row whose question, options, answer, category or
qid disagrees with the benchmark is an error naming the rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from spatialreasoner.errors import DataError
from spatialreasoner.matcher import PROTOCOLS, answer_content, choices_of, match_option
from spatialreasoner.prompts import OPTION_LETTERS, is_present
from spatialreasoner.taxonomy import (
    BENCHMARKS,
    CANARY,
    CANARY_CATEGORIES,
    CVB,
    CVB_CATEGORIES,
    SRB,
    SRB_SUBTYPES,
    SRB_TYPES,
)
from spatialreasoner.utils import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

#: Columns of each benchmark's table, after ``model``.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    SRB: ("overall", *SRB_TYPES, *SRB_SUBTYPES),
    CVB: ("overall", *CVB_CATEGORIES),
    CANARY: ("overall", *CANARY_CATEGORIES),
}
CATEGORIES: dict[str, tuple[str, ...]] = {SRB: SRB_SUBTYPES, CVB: CVB_CATEGORIES, CANARY: CANARY_CATEGORIES}

#: Files written into a score folder.
HITS_FILE = "hits.csv"
TABLE_FILE = "table.csv"  # the benchmark's main table row (3DSRBench: circular accuracy)
PER_ROW_FILE = "table_per_row.csv"  # per-row accuracy (3DSRBench: non-circular, VLMEvalKit's own "Overall")
SUMMARY_FILE = "summary.json"

_MAX_NAMED = 5
#: The protocol whose letters come from the LLM judge's file (spatialreasoner.evaluate.judge), not the matcher.
JUDGE_PROTOCOL = "vlmevalkit"
SCORE_PROTOCOLS = (*PROTOCOLS, JUDGE_PROTOCOL)
#: Prediction columns recording the image processor's pixel limits at inference.
PIXEL_KEYS = ("min_pixels", "max_pixels")
#: Columns of the benchmark itself; with a reference they come from it, never from the predictions file.
BENCHMARK_COLUMNS = ("question", *OPTION_LETTERS[:8], "answer", "category", "qid")
#: Excel's limit on one cell; an .xlsx prediction this long (or ending in the export's marker) was cut.
XLSX_CELL_LIMIT = 32767
_CUT_MARKER = re.compile(r" \[cut: \d+ characters in total; see the parquet\]\Z")


def _name_rows(indices: Sequence, what: str) -> str:
    shown = ", ".join(str(i) for i in list(indices)[:_MAX_NAMED])
    more = f" and {len(indices) - _MAX_NAMED} more" if len(indices) > _MAX_NAMED else ""
    return f"{len(indices)} row(s) {what}: index {shown}{more}"


def read_table(path: str | Path, columns: Sequence[str] | None = None, skip_image: bool = True) -> pd.DataFrame:
    """Read a predictions or benchmark file (.parquet, .tsv, .xlsx).

    A .tsv is read as VLMEvalKit reads a benchmark (pandas' defaults): "NA", "None", "n/a", "null" and empty cells
    are missing, so such an option is no choice of the matcher. In an .xlsx (predictions exported for VLMEvalKit)
    only empty cells are missing. A benchmark's base64 ``image`` column is not needed for scoring and is not loaded
    (``skip_image``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path, columns=list(columns) if columns else None)
        elif suffix in (".tsv", ".txt"):
            wanted = set(columns) if columns else None

            def usecols(c):
                return (wanted is None or c in wanted) and not (skip_image and c == "image")

            df = pd.read_csv(path, sep="\t", usecols=usecols)
        elif suffix in (".xlsx", ".xls"):
            df = pd.read_excel(path, keep_default_na=False, na_values=[""])
            if columns:
                df = df[[c for c in df.columns if c in set(columns)]]
        else:
            raise DataError(f"{path}: unsupported file type {suffix!r}; expected .parquet, .tsv or .xlsx")
    except DataError:
        raise
    except (ValueError, OSError, KeyError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read as {suffix[1:]} table: {exc}") from exc
    return df


def option_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in OPTION_LETTERS if c in df.columns]


def validate_predictions(
    df: pd.DataFrame,
    benchmark: str,
    source: str,
    reference_index: Sequence | None = None,
    need_prediction: bool = True,
) -> None:
    """Raise a DataError naming the rows unless ``df`` is a complete, consistent predictions table."""
    if benchmark not in BENCHMARKS:
        raise DataError(f"unknown benchmark {benchmark!r}; expected one of {', '.join(BENCHMARKS)}")
    required = ["index", "question", "A", "B", "answer", "category"]
    if need_prediction:
        required.append("prediction")
    if benchmark == SRB:
        required.append("qid")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)}; have {', '.join(map(str, df.columns))}")
    if df.empty:
        raise DataError(f"{source}: no rows")
    if df["index"].isna().any():
        raise DataError(
            f"{source}: " + _name_rows(list(np.flatnonzero(df["index"].isna())), "without an index (row position)")
        )
    dup = df["index"][df["index"].duplicated(keep=False)]
    if len(dup):
        raise DataError(f"{source}: duplicate indices; " + _name_rows(sorted(set(dup.tolist()), key=str), "repeated"))
    if reference_index is not None:
        have = set(df["index"].astype(str))
        ref = [str(i) for i in reference_index]
        absent = [i for i in ref if i not in have]
        if absent:
            raise DataError(f"{source}: predictions missing benchmark rows; " + _name_rows(absent, "absent"))
        extra = sorted(have - set(ref))
        if extra:
            raise DataError(f"{source}: " + _name_rows(extra, "not in the benchmark"))
    known = set(CATEGORIES[benchmark])
    bad_cat = df.loc[~df["category"].isin(known), "index"].tolist()
    if bad_cat:
        seen = sorted(set(df.loc[~df["category"].isin(known), "category"].astype(str)))
        raise DataError(
            f"{source}: unknown categor(ies) {', '.join(seen[:_MAX_NAMED])} for {benchmark}; "
            + _name_rows(bad_cat, "affected")
            + f"; expected one of {', '.join(CATEGORIES[benchmark])}"
        )
    letters = option_columns(df)
    options = df[letters].to_dict("records")
    bad_answer = [
        idx
        for idx, answer, opts in zip(df["index"], df["answer"], options, strict=True)
        if not (isinstance(answer, str) and answer in choices_of(opts))
    ]
    if bad_answer:
        raise DataError(f"{source}: answer is not one of the row's options; " + _name_rows(bad_answer, "affected"))
    if benchmark == SRB:
        no_qid = df.loc[~df["qid"].map(is_present), "index"].tolist()
        if no_qid:
            raise DataError(f"{source}: " + _name_rows(no_qid, "without a qid"))


def _text(value) -> str:
    """A cell compared as text: missing -> "", numbers as written (an .xlsx may give 3 for "3")."""
    if not is_present(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def join_reference(df: pd.DataFrame, ref: pd.DataFrame, source: str, reference: str) -> pd.DataFrame:
    """The benchmark's rows (every benchmark column from ``ref``) with the ``prediction`` of ``df`` for each index.

    ``df`` must cover exactly the benchmark's indices, and wherever it carries a benchmark column (question,
    options, answer, category, qid) its cells must equal the benchmark's; DataError naming the rows otherwise.
    """
    if "index" not in df.columns:
        raise DataError(f"{source}: missing column index; have {', '.join(map(str, df.columns))}")
    if "prediction" not in df.columns:
        raise DataError(f"{source}: missing column prediction; have {', '.join(map(str, df.columns))}")
    keys = df["index"].map(_text)
    if (keys == "").any():
        raise DataError(f"{source}: " + _name_rows(list(np.flatnonzero(keys == "")), "without an index (row position)"))
    dup = sorted(set(keys[keys.duplicated(keep=False)]), key=str)
    if dup:
        raise DataError(f"{source}: duplicate indices; " + _name_rows(dup, "repeated"))
    ref_keys = ref["index"].map(_text)
    have, want = set(keys), list(ref_keys)
    absent = [i for i in want if i not in have]
    if absent:
        raise DataError(f"{source}: predictions missing benchmark rows of {reference}; " + _name_rows(absent, "absent"))
    extra = sorted(have - set(want), key=str)
    if extra:
        raise DataError(f"{source}: " + _name_rows(extra, f"not in the benchmark {reference}"))
    pred = df.assign(_key=keys.to_numpy()).set_index("_key").loc[want]
    for col in BENCHMARK_COLUMNS:
        if col not in pred.columns:
            continue  # taken from the benchmark
        theirs = pred[col].map(_text).to_numpy()
        ours = ref[col].map(_text).to_numpy() if col in ref.columns else np.full(len(ref), "")
        differ = [want[i] for i in np.flatnonzero(theirs != ours)]
        if differ:
            first = want.index(differ[0])
            raise DataError(
                f"{source}: column {col} disagrees with the benchmark {reference}; "
                + _name_rows(differ, "differ")
                + f" (index {differ[0]}: {theirs[first]!r} in the predictions, {ours[first]!r} in the benchmark); "
                "the predictions were made on another version of the benchmark or edited: run inference again"
            )
    benchmark_cols = [c for c in ref.columns if c != "image"]
    own = [c for c in pred.columns if c not in set(benchmark_cols) and c not in BENCHMARK_COLUMNS]
    merged = ref[benchmark_cols].reset_index(drop=True)
    for col in own:
        merged[col] = pred[col].to_numpy()
    return merged


def cut_predictions(df: pd.DataFrame, path: Path) -> list:
    """Indices of an .xlsx's predictions that were cut at Excel's cell limit (the export's marker, or full length)."""
    if path.suffix.lower() not in (".xlsx", ".xls") or "prediction" not in df.columns:
        return []
    return [
        idx
        for idx, text in zip(df["index"], df["prediction"], strict=True)
        if isinstance(text, str) and (len(text) >= XLSX_CELL_LIMIT or _CUT_MARKER.search(text))
    ]


def circular_group(qid: pd.Series) -> pd.Series:
    """The circular group of each ``qid``: a trailing ``-<one character>`` removed (``X-1`` -> ``X``,
    ``X-flip-2`` -> ``X-flip``); a flipped question (``X-flip``) is its own group."""
    return qid.astype(str).str.replace(r"-.\Z", "", regex=True)


def extract_letters(df: pd.DataFrame, protocol: str = "answer_tag") -> list[str]:
    """The matcher's letter for every row's ``prediction`` under ``protocol``."""
    if protocol not in PROTOCOLS:
        raise DataError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    letters = option_columns(df)
    texts = ["" if not is_present(t) else str(t) for t in df["prediction"]]
    if protocol == "answer_tag":
        texts = [answer_content(t) for t in texts]
    return [match_option(t, opts) for t, opts in zip(texts, df[letters].to_dict("records"), strict=True)]


def random_predictions(df: pd.DataFrame, seed: int) -> list[str]:
    """A seeded uniformly random letter among each row's own non-empty options (rows in benchmark order)."""
    rng = np.random.default_rng(seed)
    letters = option_columns(df)
    return [str(rng.choice(list(choices_of(opts)))) for opts in df[letters].to_dict("records")]


def _pct(values: pd.Series) -> float:
    return round(float(values.mean()) * 100, 1) if len(values) else math.nan


def _accuracy_row(units: pd.DataFrame, benchmark: str) -> dict[str, float]:
    """Accuracy (x100, one decimal) of ``units`` (rows or circular groups with ``category`` and ``hit``)."""
    row = {"overall": _pct(units["hit"])}
    if benchmark == SRB:
        for type_name, subs in SRB_TYPES.items():
            row[type_name] = _pct(units.loc[units["category"].isin(subs), "hit"])
    for cat in CATEGORIES[benchmark]:
        row[cat] = _pct(units.loc[units["category"] == cat, "hit"])
    return row


def circular_groups(hits: pd.DataFrame) -> pd.DataFrame:
    """One row per 3DSRBench circular group: ``group``, ``category``, ``size`` and ``hit`` (all rows hit)."""
    hits = hits.assign(group=circular_group(hits["qid"]))
    grouped = hits.groupby("group", sort=False)
    groups = grouped.agg(category=("category", "first"), n_categories=("category", "nunique"), size=("hit", "size"))
    groups["hit"] = grouped["hit"].all()
    mixed = groups.index[groups["n_categories"] > 1].tolist()
    if mixed:
        raise DataError(
            f"3DSRBench circular group(s) {', '.join(map(str, mixed[:_MAX_NAMED]))} mix categories; "
            "every row of a group must have the same category"
        )
    return groups.drop(columns="n_categories").reset_index()


def score_frame(
    df: pd.DataFrame, benchmark: str, protocol: str = "answer_tag", letters: Sequence[str] | None = None
) -> tuple[pd.DataFrame, dict]:
    """Extract and score every row of a validated predictions table; return the hits and the table row(s).

    ``letters``, when given, are the rows' answers as already decided (the judge's, for ``vlmevalkit``)."""
    extracted = list(letters) if letters is not None else extract_letters(df, protocol)
    hits = pd.DataFrame({"index": df["index"].to_numpy()})
    if "qid" in df.columns:
        hits["qid"] = df["qid"].to_numpy()
    hits["category"] = df["category"].to_numpy()
    hits["extracted"] = extracted
    hits["hit"] = hits["extracted"].to_numpy() == df["answer"].astype(str).to_numpy()
    tables = {"per_row": _accuracy_row(hits, benchmark)}
    if benchmark == SRB:
        groups = circular_groups(hits)
        tables["main"] = _accuracy_row(groups, benchmark)
        tables["n_groups"] = len(groups)
    else:
        tables["main"] = tables["per_row"]
    return hits, tables


def judged_letters(path: str | Path, df: pd.DataFrame) -> tuple[list[str], dict]:
    """The judge's letter for every row of ``df`` from a judged file (``spatialreasoner judge``), and its counts;
    a row absent from it, or judged on another prediction, is a DataError naming the rows."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing; run the judge first (spatialreasoner judge)")
    judged = pd.read_parquet(path)
    missing = [c for c in ("index", "prediction", "letter", "judged", "fallback") if c not in judged.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} of a judged file; run the judge again")
    by_index = {_text(i): row for i, row in zip(judged["index"], judged.to_dict("records"), strict=True)}
    letters, stale = [], []
    for index, prediction in zip(df["index"], df["prediction"], strict=True):
        row = by_index.get(_text(index))
        if row is None or row["prediction"] != ("" if not is_present(prediction) else str(prediction)):
            stale.append(index)
        else:
            letters.append(str(row["letter"]))
    if stale:
        raise DataError(f"{path}: " + _name_rows(stale, "absent or judged on another prediction") + "; judge again")
    counts = {"judged": int(judged["judged"].sum()), "judge_fallback": int(judged["fallback"].sum())}
    return letters, counts | judge_provenance(judged)


def judge_provenance(judged: pd.DataFrame) -> dict:
    """Which judge decided a judged file's rows (None: no judge endpoint, VLMEvalKit's exact matching) and how many
    rows its exact matcher left undecided."""
    out = {"undecided": int(judged["exact"].isna().sum())} if "exact" in judged.columns else {}
    if "judge_model" in judged.columns:  # written by every judge run since the column was added
        models = judged["judge_model"].dropna().unique().tolist()
        out["judge_model"] = str(models[0]) if models else None
    return out


def score_file(
    predictions: str | Path,
    benchmark: str,
    out_dir: str | Path,
    protocol: str = "answer_tag",
    model: str | None = None,
    reference: str | Path | None = None,
    random_seed: int | None = None,
    judged: str | Path | None = None,
) -> dict:
    """Read, validate, score and write ``hits.csv``, ``table.csv`` (+ ``table_per_row.csv``) and a summary."""
    start = time.perf_counter()
    predictions = Path(predictions)
    out_dir = Path(out_dir)
    model = model or ("random" if random_seed is not None else predictions.parent.name)
    df = read_table(predictions)
    if random_seed is not None:
        df = df.drop(columns=[c for c in ("image", "prediction") if c in df.columns])
    if reference is not None:
        ref = read_table(reference)
        validate_predictions(ref, benchmark, str(reference), need_prediction=False)
        # the random baseline scores the benchmark's own rows
        df = join_reference(df, ref, str(predictions), str(reference)) if random_seed is None else ref
    validate_predictions(df, benchmark, str(predictions), need_prediction=random_seed is None)
    cut = cut_predictions(df, predictions)
    if cut:
        log.warning(
            "%s: %s; they are scored as they are (an answer after the cut is lost): score the parquet instead",
            predictions,
            _name_rows(cut, f"hold a prediction cut at Excel's {XLSX_CELL_LIMIT}-character cell limit"),
        )
    if random_seed is not None:
        df["prediction"] = random_predictions(df, random_seed)
    letters, judge_counts = None, {}
    if protocol == JUDGE_PROTOCOL:
        if judged is None:
            raise DataError(f"protocol {JUDGE_PROTOCOL} needs the judged file (--judged) of {predictions}")
        letters, judge_counts = judged_letters(judged, df)
    hits, tables = score_frame(df, benchmark, protocol, letters)

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / HITS_FILE) as tmp:
        hits.to_csv(tmp, index=False)
    columns = ["model", *TABLE_COLUMNS[benchmark]]
    with atomic_path(out_dir / TABLE_FILE) as tmp:
        pd.DataFrame([{"model": model, **tables["main"]}], columns=columns).to_csv(tmp, index=False)
    with atomic_path(out_dir / PER_ROW_FILE) as tmp:
        pd.DataFrame([{"model": model, **tables["per_row"]}], columns=columns).to_csv(tmp, index=False)
    n_missing = int(df["prediction"].isna().sum())
    summary = {
        "model": model,
        "benchmark": benchmark,
        "predictions": str(predictions),
        "protocol": protocol,
        "random_seed": random_seed,
        "rows": len(hits),
        "groups": tables.get("n_groups"),
        "hits": int(hits["hit"].sum()),
        "unmatched_Z": int((hits["extracted"] == "Z").sum()),
        "missing_predictions": n_missing,
        "cut_predictions": len(cut),
        "reference": str(reference) if reference is not None else None,
        **judge_counts,
        # The image processor's pixel limits inference used (recorded in the predictions), or None.
        **{k: (int(df[k].iloc[0]) if k in df.columns and is_present(df[k].iloc[0]) else None) for k in PIXEL_KEYS},
        # The model folder those limits were read from (a trained model's released counterpart), or None.
        "pixels_from": str(df["pixels_from"].iloc[0]) if "pixels_from" in df.columns else None,
        "main": tables["main"],
        "per_row": tables["per_row"],
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json_atomic(out_dir / SUMMARY_FILE, summary)
    log.info(
        "%s on %s (%s): %d rows%s, overall %.1f (per row %.1f), %d unmatched, %d without prediction -> %s",
        model,
        benchmark,
        protocol,
        len(hits),
        f" in {tables['n_groups']} circular groups" if benchmark == SRB else "",
        tables["main"]["overall"],
        tables["per_row"]["overall"],
        summary["unmatched_Z"],
        n_missing,
        out_dir,
    )
    return summary


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    parser.add_argument(
        "--predictions",
        required=True,
        help="predictions file (.parquet, .tsv or .xlsx) with index, question, options, answer, category, "
        "prediction (and qid for 3DSRBench); with --random-seed, the benchmark TSV itself",
    )
    parser.add_argument("--out", required=True, help="output folder for hits.csv, table.csv, summary.json")
    parser.add_argument("--protocol", default="answer_tag", choices=SCORE_PROTOCOLS)
    parser.add_argument("--judged", default=None, help="judged file of the predictions (protocol vlmevalkit)")
    parser.add_argument("--model", default=None, help="model name in the table row (default: the file's folder)")
    parser.add_argument(
        "--reference",
        default=None,
        help="benchmark TSV (required unless --random-seed): its indices must be covered exactly, and every "
        "benchmark column (question, options, answer, category, qid) is taken from it and must agree with the "
        "predictions file's",
    )
    parser.add_argument(
        "--random-seed",
        type=int,
        default=None,
        help="score a seeded random choice among each row's options instead of the prediction column",
    )


def run(args: argparse.Namespace) -> int:
    if args.reference is None and args.random_seed is None:
        from spatialreasoner.errors import ConfigError

        raise ConfigError(
            "--reference (the benchmark TSV) is required: without it the predictions file's own answers, options "
            "and categories would be trusted, so edited or misaligned predictions could score 100%"
        )
    summary = score_file(
        args.predictions,
        args.benchmark,
        args.out,
        protocol=args.protocol,
        model=args.model,
        reference=args.reference,
        random_seed=args.random_seed,
        judged=args.judged,
    )
    print(json.dumps({k: summary[k] for k in ("model", "benchmark", "rows", "hits", "main")}))
    return 0
