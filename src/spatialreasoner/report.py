"""``spatialreasoner report``: one self-contained HTML page of a finished workflow, written under ``results/``.

It shows the tables (with intervals and counts) and the summary, every figure, example predictions per benchmark and
model (thumbnail, question, options, reasoning, extracted answer, right or wrong; a few questions per category chosen
by seed, the same ones for every model), the statistics of the training tables and benchmarks, the software versions
and the resolved configuration. Images are embedded, so the file opens anywhere.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from spatialreasoner.errors import ConfigError, DataError
from spatialreasoner.evaluate.rows import decode_image, read_benchmark
from spatialreasoner.evaluate.tables import CANARY_NOTE, read_benchmark_rows, read_hits
from spatialreasoner.prompts import OPTION_LETTERS, is_present
from spatialreasoner.utils import atomic_path, json_object_arg, package_versions, redact, redact_url

log = logging.getLogger(__name__)

THUMBNAIL = 112
REASONING_CHARS = 700
VERSION_PACKAGES = (
    "spatialreasoner", "torch", "torchvision", "transformers", "trl", "accelerate", "datasets", "tokenizers",
    "vllm", "deepspeed", "pandas", "numpy", "matplotlib", "snakemake",
)  # fmt: skip

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 24px; } h2 { font-size: 20px; border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 32px; }
h3 { font-size: 16px; margin-top: 20px; }
table { border-collapse: collapse; font-size: 12px; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
img.figure { max-width: 100%; border: 1px solid #ddd; margin: 6px 0; }
img.thumb { width: 112px; height: 112px; }
.right { color: #0a7a2a; font-weight: bold; } .wrong { color: #b3261e; font-weight: bold; }
pre { white-space: pre-wrap; font-size: 11px; margin: 0; max-width: 640px; }
.config { max-height: 480px; overflow: auto; background: #f8f8f8; padding: 8px; border: 1px solid #ddd; }
nav a { margin-right: 12px; }
"""


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


def _e(text) -> str:
    return html.escape("" if text is None else str(text))


def _png_data(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _thumbnail(cell, index) -> str:
    img = decode_image(cell, index)
    img.thumbnail((THUMBNAIL, THUMBNAIL))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def markdown_html(text: str) -> str:
    """The summary's markdown (headings, paragraphs, pipe tables) as HTML."""
    out, table, para = [], [], []

    def inline(line: str) -> str:
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(line))

    def flush():
        if para:
            out.append(f"<p>{' '.join(inline(line) for line in para)}</p>")
            para.clear()
        if table:
            rows = [r for r in table if not re.fullmatch(r"\|?(\s*-+\s*\|)+\s*-*\s*", r)]
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{_e(c)}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
            out.append(f"<table><tr>{head}</tr>{body}</table>")
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        if table or not line.strip() or line.startswith("#"):
            flush()
        if line.startswith("#"):
            level = min(6, len(line) - len(line.lstrip("#")) + 1)
            out.append(f"<h{level}>{_e(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            para.append(line.strip())
    flush()
    return "\n".join(out)


def _csv_html(path: Path) -> str:
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot read as a CSV table: {exc}") from exc
    return df.to_html(index=False, na_rep="–", float_format=lambda v: f"{v:.1f}", border=0)


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


def examples_html(
    bench: str,
    tsv: Path,
    models: Mapping[str, tuple[Path, Path]],
    per_category: int,
    seed: int,
) -> str:
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
    chosen = pick_examples(rows, per_category, seed)
    parts = [f"<h3>{_e(bench)}</h3>"]
    parts.append(
        f"<p>{len(chosen)} questions: {per_category} per category drawn with seed {seed}, the same for every model.</p>"
    )
    parts.append("<table><tr><th>image</th><th>question</th><th>model</th><th>reasoning</th><th>extracted</th>"
                 "<th>result</th></tr>")  # fmt: skip
    cats = rows.set_index("index")["category"]
    for index in chosen:
        row = full.loc[index]
        options = "".join(
            f"<br>{letter}. {_e(row[letter])}"
            for letter in OPTION_LETTERS
            if letter in row.index and is_present(row[letter])
        )
        question = (
            f"<b>{_e(cats[index])}</b> (index {_e(index)})<br>{_e(row['question'])}{options}"
            f"<br>answer: <b>{_e(row['answer'])}</b>"
        )
        n = len(replies)
        first = True
        for name, (preds, hits) in replies.items():
            hit = bool(hits.loc[index, "hit"])
            cells = ""
            if first:
                thumb = _thumbnail(row["image"], index)
                cells += f'<td rowspan="{n}"><img class="thumb" src="{thumb}" alt="image {_e(index)}"></td>'
                cells += f'<td rowspan="{n}">{question}</td>'
                first = False
            verdict = '<span class="right">right</span>' if hit else '<span class="wrong">wrong</span>'
            cells += (
                f"<td>{_e(name)}</td><td><pre>{_e(reasoning_of(preds.get(index)))}</pre></td>"
                f"<td>{_e(hits.loc[index, 'extracted'])}</td><td>{verdict}</td>"
            )
            parts.append(f"<tr>{cells}</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def dataset_stats_html(datasets: Mapping[str, Path], benchmarks: Mapping[str, Path]) -> str:
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
        parts.append(f"<h3>training table {_e(name)} ({_e(path.name)}): {len(df)} rows, {images} images</h3>")
        parts.append(counts.to_html(index=False, border=0))
    for bench, path in benchmarks.items():
        rows = read_benchmark_rows(path, bench)
        counts = rows.groupby("category", sort=False).agg(rows=("index", "size"), options=("k", "mean"))
        summary = f"{len(rows)} rows"
        if "qid" in rows.columns:
            from spatialreasoner.evaluate.score import circular_group

            counts["groups"] = rows.assign(g=circular_group(rows["qid"])).groupby("category", sort=False)["g"].nunique()
            summary += f", {circular_group(rows['qid']).nunique()} circular groups"
        parts.append(f"<h3>benchmark {_e(bench)}: {summary}</h3>")
        parts.append(counts.reset_index().to_html(index=False, border=0, float_format=lambda v: f"{v:.2f}"))
    return "\n".join(parts)


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
) -> Path:
    """Build the page from the workflow's outputs (every input read and checked first) and write it atomically."""
    for path in [*tables, *figures, *([summary] if summary else [])]:
        if not Path(path).is_file():
            raise DataError(f"{path}: missing; run the workflow's tables and plots first")
    sections = [("tables", "Tables"), ("figures", "Figures"), ("examples", "Example predictions"),
                ("data", "Data"), ("software", "Software"), ("config", "Configuration")]  # fmt: skip
    body = [f"<h1>{_e(title)}</h1>", "<nav>" + "".join(f'<a href="#{k}">{v}</a>' for k, v in sections) + "</nav>"]
    body.append('<h2 id="tables">Tables</h2>')
    if summary:
        body.append(markdown_html(Path(summary).read_text()))
    for path in tables:
        body += [f"<h3>{_e(Path(path).name)}</h3>", _csv_html(Path(path))]
        if Path(path).name == "Canary.csv":  # the memorisation check is no generalisation claim: say so where shown
            body.append(f"<p>{_e(CANARY_NOTE)}</p>")
    body.append('<h2 id="figures">Figures</h2>')
    for path in figures:
        body.append(
            f'<h3>{_e(Path(path).name)}</h3><img class="figure" src="{_png_data(Path(path))}" alt="{_e(path)}">'
        )
    body.append('<h2 id="examples">Example predictions</h2>')
    for bench, models in examples.items():
        if bench not in benchmarks:
            raise ConfigError(f"examples of {bench} need its benchmark file (--benchmark {bench}=TSV)")
        body.append(examples_html(bench, Path(benchmarks[bench]), models, per_category, seed))
    body.append('<h2 id="data">Data</h2>')
    body.append(dataset_stats_html(datasets, benchmarks))
    body.append('<h2 id="software">Software</h2>')
    versions = package_versions(VERSION_PACKAGES)
    body.append(
        "<table><tr><th>package</th><th>version</th></tr>"
        + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in versions.items())
        + "</table>"
    )
    body.append('<h2 id="config">Configuration (resolved, defaults filled in)</h2>')
    body.append(f'<pre class="config">{_e(json.dumps(redacted_config(config), indent=2))}</pre>')
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    log.info("report with %d tables, %d figures and examples of %d benchmark(s) -> %s (%.1f MB)", len(tables),
             len(figures), len(examples), out, out.stat().st_size / 1e6)  # fmt: skip
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
    )
    print(args.out)
    return 0
