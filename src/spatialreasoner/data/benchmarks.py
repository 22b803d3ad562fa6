"""``spatialreasoner prepare-benchmark``: validate a VLMEvalKit benchmark TSV and copy it into place.

The copy is the file unchanged, except that answers padded with whitespace (``' A '``) are written stripped: this is
the one place that decides it, and scoring then compares answers exactly. A row with fewer fields than the header
(a file cut short) is an error naming the row.

Checks required columns, unique integer indices, known categories, answers naming a present option, decodable
base64 images (or VLMEvalKit's short references to another row's image), and for 3DSRBench the circular ``qid``
variants (``X``, ``X-1``, …, ``X-flip``, ``X-flip-1``, …). Every error names the offending rows.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import logging
import re
import shutil
import time
from collections import defaultdict
from pathlib import Path

from spatialreasoner.errors import ConfigError, DataError
from spatialreasoner.prompts import is_present
from spatialreasoner.synth.questions import CATEGORIES_CVBENCH3D, SUBTYPES_3DSRBENCH
from spatialreasoner.taxonomy import CANARY, CANARY_CATEGORIES
from spatialreasoner.utils import atomic_path

log = logging.getLogger(__name__)

BENCHMARKS = {
    "3DSRBench": {"categories": SUBTYPES_3DSRBENCH, "extra_required": ("qid",)},
    "CV-Bench-3D": {"categories": CATEGORIES_CVBENCH3D, "extra_required": ()},
    CANARY: {"categories": CANARY_CATEGORIES, "extra_required": ()},
}
REQUIRED = ("index", "question", "A", "B", "answer", "category", "image")
OPTION_LETTERS = ("A", "B", "C", "D", "E", "F", "G", "H")
# VLMEvalKit stores an image once and lets other rows refer to it by index when the cell is this short.
IMAGE_REFERENCE_MAX = 64
MAX_LISTED = 8
ROTATION_RE = re.compile(r"^(?P<group>.+)-(?P<k>\d)$")


def _fail(path: Path, what: str, rows: list[str]) -> None:
    if rows:
        shown = "; ".join(rows[:MAX_LISTED])
        more = f" (and {len(rows) - MAX_LISTED} more)" if len(rows) > MAX_LISTED else ""
        raise DataError(f"benchmark {path}: {len(rows)} row(s) {what}: {shown}{more}")


def _decodes(cell: str) -> str | None:
    from PIL import Image

    try:
        data = base64.b64decode(cell, validate=True)
    except (binascii.Error, ValueError) as exc:
        return f"image is not base64 ({exc})"
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as exc:
        return f"image does not decode ({type(exc).__name__})"
    return None


def read_tsv(path: Path):
    """The TSV as VLMEvalKit reads it (``pd.read_csv(path, sep="\t")``, pandas' default NA strings): an option cell
    reading "NA", "None", "n/a", "null", ... or nothing is a missing option. Cells are text; a missing cell of
    another column reads as empty text, so that the checks below name it."""
    import pandas as pd

    try:
        df = pd.read_csv(path, sep="\t", dtype=str)
    except Exception as exc:
        raise DataError(f"benchmark {path} is not a readable TSV: {exc}") from exc
    others = [c for c in df.columns if c not in OPTION_LETTERS]
    df[others] = df[others].fillna("")
    return df


def short_records(path: Path, n_columns: int) -> list[tuple[int, int]]:
    """(row, fields) of every data record with fewer fields than the header, parsed as pandas does (tabs, quotes)."""
    import csv
    import sys

    limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)  # base64 image cells are long
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            records = csv.reader(f, delimiter="\t")
            next(records, None)
            return [(i, len(rec)) for i, rec in enumerate(r for r in records if r) if len(rec) < n_columns]
    finally:
        csv.field_size_limit(limit)


def padded_answers(df) -> list[int]:
    """Positions of rows whose answer has surrounding whitespace (``' A '``)."""
    return [i for i, a in enumerate(df["answer"]) if a != a.strip()]


def validate(path: str | Path, bench: str) -> dict:
    """Validate ``path`` as benchmark ``bench``; returns counts. Raises DataError naming the rows."""

    if bench not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {bench!r}; expected one of {', '.join(BENCHMARKS)}")
    spec = BENCHMARKS[bench]
    path = Path(path)
    if not path.is_file():
        raise DataError(f"benchmark file {path} does not exist")
    df = read_tsv(path)
    missing = [c for c in (*REQUIRED, *spec["extra_required"]) if c not in df.columns]
    if missing:
        raise DataError(f"benchmark {path} ({bench}): missing required columns: {', '.join(missing)}")
    if df.empty:
        raise DataError(f"benchmark {path}: no rows")
    # pandas fills the missing fields of a row cut short with empty text: count each record's fields instead.
    _fail(
        path,
        f"have fewer than the header's {len(df.columns)} fields (cut short?)",
        [
            f"row {i} (index {df.at[i, 'index']!s}): {n} field(s), missing {', '.join(df.columns[n:])}"
            for i, n in short_records(path, len(df.columns))
        ],
    )

    rows = df.to_dict("records")
    label = [f"row {i} (index {r['index']!s})" for i, r in enumerate(rows)]

    bad = [f"{label[i]}: {r['index']!r}" for i, r in enumerate(rows) if not re.fullmatch(r"-?\d+", r["index"].strip())]
    _fail(path, "have a non-integer index", bad)
    seen: dict[str, int] = {}
    dupes = []
    for i, r in enumerate(rows):
        key = str(int(r["index"]))
        if key in seen:
            dupes.append(f"{label[i]} repeats row {seen[key]}")
        seen.setdefault(key, i)
    _fail(path, "have a duplicate index", dupes)

    known = set(spec["categories"])
    _fail(
        path,
        f"have an unknown category (expected one of {', '.join(spec['categories'])})",
        [f"{label[i]}: {r['category']!r}" for i, r in enumerate(rows) if r["category"] not in known],
    )
    letters = [c for c in OPTION_LETTERS if c in df.columns]
    options = [{c: r[c] for c in letters if is_present(r[c])} for r in rows]
    _fail(
        path,
        "have an answer that is not one of their options",
        [
            f"{label[i]}: answer {r['answer']!r}, options {list(options[i])}"
            for i, r in enumerate(rows)
            if r["answer"].strip() not in options[i]
        ],
    )
    _fail(path, "have an empty question", [label[i] for i, r in enumerate(rows) if not is_present(r["question"])])

    # images: full base64 pictures, or a short reference to another row's index
    problems = []
    decoded = 0
    for i, r in enumerate(rows):
        cell = r["image"].strip()
        if not cell:
            problems.append(f"{label[i]}: empty image")
        elif len(cell) <= IMAGE_REFERENCE_MAX:
            ref = cell
            target = seen.get(str(int(ref))) if re.fullmatch(r"-?\d+", ref) else None
            if target is None or len(rows[target]["image"].strip()) <= IMAGE_REFERENCE_MAX:
                problems.append(f"{label[i]}: image {ref!r} is neither base64 nor the index of a row with an image")
        else:
            reason = _decodes(cell)
            decoded += 1
            if reason:
                problems.append(f"{label[i]}: {reason}")
    _fail(path, "have a bad image", problems)

    groups = 0
    if bench == "3DSRBench":
        groups = _check_circular(path, rows, label, options)
    counts = {"rows": len(rows), "images_decoded": decoded, "groups": groups or len(rows)}
    return counts


def _check_circular(path: Path, rows: list[dict], label: list[str], options: list[dict]) -> int:
    """qids unique; ``G-k`` variants need their ``G``; a group shares category, question and option set."""
    qids: dict[str, int] = {}
    dupes = []
    for i, r in enumerate(rows):
        q = r["qid"].strip()
        if not q or any(ch.isspace() for ch in q):
            dupes.append(f"{label[i]}: qid {q!r} is empty or contains whitespace")
        elif q in qids:
            dupes.append(f"{label[i]}: qid {q!r} repeats row {qids[q]}")
        qids.setdefault(q, i)
    _fail(path, "have an invalid or duplicate qid", dupes)

    members: dict[str, list[int]] = defaultdict(list)
    orphans = []
    for i, r in enumerate(rows):
        q = r["qid"].strip()
        m = ROTATION_RE.match(q)
        if m:
            group = m.group("group")
            if group not in qids:
                orphans.append(f"{label[i]}: qid {q!r} is a rotation of {group!r}, which is not in the file")
            members[group].append(i)
        else:
            members[q].append(i)
    _fail(path, "are circular variants without their original question", orphans)

    inconsistent = []
    for group, idx in members.items():
        first = idx[0]
        ref = (rows[first]["category"], rows[first]["question"], sorted(options[first].values()))
        for i in idx[1:]:
            here = (rows[i]["category"], rows[i]["question"], sorted(options[i].values()))
            if here != ref:
                what = [n for n, a, b in zip(("category", "question", "option set"), ref, here, strict=True) if a != b]
                inconsistent.append(f"{label[i]}: qid {rows[i]['qid']!r} differs from {group!r} in {', '.join(what)}")
    _fail(path, "differ from the other variants of their circular group", inconsistent)
    return len(members)


def prepare(src: str | Path, bench: str, out: str | Path) -> dict:
    """Validate ``src`` and write it to ``out``: unchanged, or with padded answers (``' A '``) stripped, so that
    scoring, which compares answers exactly, gets the letter."""
    started = time.perf_counter()
    counts = validate(src, bench)
    df = read_tsv(Path(src))
    padded = padded_answers(df)
    with atomic_path(out) as tmp:
        if padded:
            shown = ", ".join(
                f"row {i} (index {df.at[i, 'index']}) {df.at[i, 'answer']!r}" for i in padded[:MAX_LISTED]
            )
            log.warning("%s: %d answer(s) with surrounding whitespace stripped: %s", src, len(padded), shown)
            df["answer"] = df["answer"].str.strip()
            df.to_csv(tmp, sep="\t", index=False)
        else:
            shutil.copyfile(src, tmp)
    counts["answers_stripped"] = len(padded)
    log.info("validated %s as %s -> %s: %s in %.1f s", src, bench, out, counts, time.perf_counter() - started)
    return counts


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", required=True, help=", ".join(BENCHMARKS))
    parser.add_argument("--tsv", required=True, help="downloaded VLMEvalKit TSV")
    parser.add_argument("--out", required=True, help="validated copy")


def run(args) -> int:
    prepare(args.tsv, args.benchmark, args.out)
    return 0
