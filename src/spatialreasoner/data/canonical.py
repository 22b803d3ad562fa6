"""``spatialreasoner canonicalize``: SFT / RL annotations -> one canonical parquet table the trainers read.

Canonical schema (one row per training example; parquet metadata ``spatialreasoner.canonical`` = ``"1"``):

=================  ===========================  ================================================================
column             type                         meaning
=================  ===========================  ================================================================
``kind``           string                       ``qa`` (3D spatial multiple choice) or ``conversation`` (LLaVA)
``image``          string, nullable             absolute path of the row's image, checked to exist and decode;
                                                null only for a conversation without ``<image>``
``question``       string, nullable             qa rows: the question text
``A`` ``B`` ``C``  string, nullable             qa rows: option texts (null when the row has fewer options)
``D``
``answer``         string, nullable             qa rows: the correct option letter (checked to name an option;
                                                SFT rows without options keep their answer text as is); SFT:
                                                the chain-of-thought's ``<answer>``, checked against an
                                                ``answer`` column when the source has one
``category``       string, nullable             qa rows: the question subtype (e.g. ``location_above``); RL rows:
                                                one of the 12 3DSRBench subtypes (the 3D reward's table); SFT:
                                                optional
``answer_cot``     string, nullable (SFT only)  qa rows: the target reasoning ``<think>…</think><answer>…</answer>``
                                                (both tags required)
``conversations``  list<struct<from, value>>    conversation rows (SFT only): LLaVA turns; ``<image>`` marks
                   nullable (SFT only)          where the image goes
``question_index`` int64 (RL only)              the source's question id
``source_row``     int64                        row number in the source annotation files (in file order)
=================  ===========================  ================================================================

Source columns are read by name, and only those the official readers read are required: SFT 3D QA rows
``question, A, B, image_filename, answer_cot`` (``C``, ``D``, ``answer``, ``category`` optional), LLaVA rows
``conversations, image_path``, RL rows ``question_index, question, A, B, answer, category, image_filename``. Missing
ones are an error naming them; any other columns (``answer_name``, ``bounding_box``, …) are kept unchanged after
the canonical ones. A split found in several formats or folders of a snapshot is refused (rows would be read twice). Images are resolved through
``--images COLUMN=ROOT`` (e.g. ``image_filename=resources/images/openimages/openimages``); rows whose image is missing
or does not decode are an error listing how many and the first few, or dropped with ``--on-bad-image drop``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import numbers
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from spatialreasoner.errors import DataError
from spatialreasoner.matcher import NO_MATCH, match_option
from spatialreasoner.prompts import is_present
from spatialreasoner.taxonomy import SRB_SUBTYPES
from spatialreasoner.utils import atomic_path

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
OPTION_COLUMNS = ("A", "B", "C", "D")
# What the official readers use: SFT 3D QA rows need no answer or category (the answer is the chain-of-thought's).
QA_REQUIRED = {
    "sft": ("question", "A", "B", "image_filename", "answer_cot"),
    "rl": ("question", "A", "B", "answer", "category", "question_index", "image_filename"),
}
#: Categories an RL row may have: the 3DSRBench subtypes, which the 3D-aware process reward knows.
RL_CATEGORIES = SRB_SUBTYPES
#: A chain-of-thought target: reasoning in <think>, then the answer in <answer>, nothing else around them.
COT_RE = re.compile(r"\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL)
CONVERSATION_REQUIRED = ("conversations", "image_path")
QA_IMAGE_COLUMN = "image_filename"
CONVERSATION_IMAGE_COLUMN = "image_path"
ANNOTATION_SUFFIXES = (".parquet", ".jsonl", ".json")
MAX_LISTED = 5


def canonical_columns(kind: str) -> list[str]:
    base = ["kind", "image", "question", *OPTION_COLUMNS, "answer", "category"]
    if kind == "sft":
        return [*base, "answer_cot", "conversations", "source_row"]
    return [*base, "question_index", "source_row"]


def annotation_files(path: Path, split: str) -> list[Path]:
    """The split's annotation files: ``path`` itself, or files under it named ``<split>.*`` / ``<split>-*``."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"annotations {path} do not exist")
    pattern = re.compile(rf"^{re.escape(split)}([-_.].*)?$")
    found = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and p.suffix in ANNOTATION_SUFFIXES and pattern.match(p.stem) and ".cache" not in p.parts
    )
    if not found:
        present = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.suffix in ANNOTATION_SUFFIXES)
        raise DataError(
            f"annotations {path}: no files for split {split!r} (expected {split}-*.parquet, {split}.jsonl or "
            f"{split}.json); found: {', '.join(present[:10]) or 'no annotation files'}"
        )
    layouts = sorted({(str(p.parent.relative_to(path)), p.suffix) for p in found})
    if len(layouts) > 1:
        shown = ", ".join(str(p.relative_to(path)) for p in found[:10])
        raise DataError(
            f"annotations {path}: split {split!r} is held {len(layouts)} times (in different formats or folders: "
            f"{shown}); every row would be read more than once. Keep one copy (e.g. the source's allow_patterns) "
            "or name a file"
        )
    return found


def read_jsonl_rows(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file, one per non-blank line; DataError naming the file and line of one that
    is cut or is not an object."""
    rows = []
    with open(path, encoding="utf-8-sig") as f:  # a byte-order mark some editors write is not part of line 1
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"annotation file {path}, line {n}: not valid JSON ({exc.msg} at column {exc.colno}; a line cut "
                    "by an interrupted download or copy?); expected one JSON object per line"
                ) from exc
            if not isinstance(row, dict):
                raise DataError(
                    f"annotation file {path}, line {n}: a JSON {type(row).__name__}; expected one JSON object per line"
                )
            rows.append(row)
    return rows


def read_annotations(files: list[Path]):
    import pandas as pd

    frames = []
    for f in files:
        try:
            if f.suffix == ".parquet":
                frames.append(pd.read_parquet(f))
            elif f.suffix == ".jsonl":
                frames.append(pd.DataFrame(read_jsonl_rows(f)))
            else:
                frames.append(pd.DataFrame(json.loads(f.read_text())))
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"annotation file {f} cannot be read: {exc}") from exc
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return df


def _cell(value):
    """None for missing cells (None, NaN, pandas NA), else the value."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        import pandas as pd

        if value is pd.NA:
            return None
    except ImportError:  # pragma: no cover
        pass
    return value


def _turns(value, row: int, where: str) -> list[dict]:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise DataError(f"{where} row {row}: conversations is not a list of turns ({exc})") from exc
    if not isinstance(value, list) or not value:
        raise DataError(f"{where} row {row}: conversations must be a non-empty list of {{from, value}} turns")
    turns = []
    for i, turn in enumerate(value):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("from"), str)
            or not isinstance(turn.get("value"), str)
        ):
            raise DataError(f"{where} row {row}: conversations turn {i} must have string 'from' and 'value'")
        turns.append({"from": turn["from"], "value": turn["value"]})
    return turns


def image_status(path: Path) -> str | None:
    """None when ``path`` exists and decodes, else the reason."""
    from PIL import Image

    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as im:
            im.draft("RGB", (64, 64))  # JPEG: decode at reduced scale; still reads every block
            im.load()
    except Exception as exc:
        return f"does not decode ({type(exc).__name__}: {exc})"
    return None


def check_images(paths: list[Path], workers: int = 4) -> dict[Path, str]:
    """Reasons for every path that is missing or does not decode (each distinct path checked once)."""
    unique = sorted(set(paths))
    bad: dict[Path, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        statuses = pool.map(image_status, unique)
        for path, status in tqdm(
            zip(unique, statuses, strict=True), total=len(unique), desc="check images", unit="img"
        ):
            if status is not None:
                bad[path] = status
    return bad


def canonicalize(
    kind: str,
    annotations: str | os.PathLike,
    image_roots: dict[str, str | os.PathLike],
    out: str | os.PathLike,
    split: str = "train",
    on_bad_image: str = "error",
    workers: int = 4,
) -> dict:
    """Write the canonical table for ``kind`` (sft | rl); returns counts."""
    import pyarrow.parquet as pq

    if kind not in QA_REQUIRED:
        raise DataError(f"kind must be sft or rl, got {kind!r}")
    if on_bad_image not in ("error", "drop"):
        raise DataError(f"on_bad_image must be error or drop, got {on_bad_image!r}")
    started = time.perf_counter()
    annotations = Path(annotations)
    files = annotation_files(annotations, split)
    df = read_annotations(files)
    where = f"annotations {annotations} ({split})"
    if df.empty:
        raise DataError(f"{where}: no rows")
    columns = set(df.columns)

    # Which kinds of rows the table can hold is decided by its columns; each kind's columns must all be there.
    has_qa = "question" in columns
    has_conv = kind == "sft" and "conversations" in columns
    if not has_qa and not has_conv:
        needed = "question (3D QA rows) or conversations (LLaVA rows)" if kind == "sft" else "question"
        raise DataError(f"{where}: missing required columns: {needed}")
    if has_qa:
        missing = [c for c in QA_REQUIRED[kind] if c not in columns]
        if missing:
            raise DataError(f"{where}: missing required columns for {kind} 3D QA rows: {', '.join(missing)}")
    if has_conv:
        missing = [c for c in CONVERSATION_REQUIRED if c not in columns]
        if missing:
            raise DataError(f"{where}: missing required columns for conversation rows: {', '.join(missing)}")
    image_columns = ([QA_IMAGE_COLUMN] if has_qa else []) + ([CONVERSATION_IMAGE_COLUMN] if has_conv else [])
    roots = {}
    for col in image_columns:
        if col not in image_roots:
            raise DataError(f"{where}: no image root given for column {col!r} (pass --images {col}=FOLDER)")
        roots[col] = Path(image_roots[col]).resolve()
        if not roots[col].is_dir():
            raise DataError(f"image root {roots[col]} for column {col!r} does not exist (images not extracted?)")

    records = []
    unknown_categories: dict[str, list[int]] = {}
    for i, row in enumerate(df.to_dict("records")):
        question = _cell(row.get("question")) if has_qa else None
        conv = _cell(row.get("conversations")) if has_conv else None
        if conv is not None and not isinstance(conv, str | list | dict) and not hasattr(conv, "tolist"):
            conv = None
        rec = {c: None for c in canonical_columns(kind)}
        rec["source_row"] = i
        if is_present(question):
            rec |= {"kind": "qa", "question": str(question), "category": _str_or_none(row.get("category"))}
            options = {c: _str_or_none(row.get(c)) for c in OPTION_COLUMNS}
            options = {c: (v if is_present(v) else None) for c, v in options.items()}
            rec |= options
            present = [c for c, v in options.items() if v is not None]
            answer = _str_or_none(row.get("answer"))
            answer = answer.strip() if answer else answer
            if kind == "sft":
                cot = _str_or_none(row.get("answer_cot"))
                if not is_present(cot):
                    raise DataError(f"{where} row {i}: empty answer_cot")
                answer = _sft_answer(cot, answer, options, where, i)
                rec["answer_cot"] = cot
            else:
                rec["question_index"] = _question_index(row.get("question_index"), where, i)
                if rec["category"] not in RL_CATEGORIES:
                    unknown_categories.setdefault(str(rec["category"]), []).append(i)
            # SFT may hold open questions without options (trained on the bare question); RL needs a letter to score
            if (present or kind == "rl") and answer not in present:
                raise DataError(f"{where} row {i}: answer {answer!r} is not one of its options {present}")
            rec["answer"] = answer
            rec["image"] = _image_path(roots[QA_IMAGE_COLUMN], row.get(QA_IMAGE_COLUMN), QA_IMAGE_COLUMN, where, i)
        elif conv is not None:
            turns = _turns(conv, i, where)
            rec |= {"kind": "conversation", "conversations": turns}
            n_images = sum(t["value"].count("<image>") for t in turns)
            if n_images > 1:
                raise DataError(f"{where} row {i}: {n_images} <image> placeholders; one image per row is supported")
            if n_images == 1:
                rec["image"] = _image_path(
                    roots[CONVERSATION_IMAGE_COLUMN],
                    row.get(CONVERSATION_IMAGE_COLUMN),
                    CONVERSATION_IMAGE_COLUMN,
                    where,
                    i,
                )
        else:
            raise DataError(f"{where} row {i}: neither a question nor conversations")
        for extra in df.columns:
            if extra not in rec:
                rec[extra] = row[extra]
        records.append(rec)

    if unknown_categories:
        listed = "; ".join(
            f"{cat!r} (rows {', '.join(map(str, rows[:MAX_LISTED]))}{' ...' if len(rows) > MAX_LISTED else ''})"
            for cat, rows in sorted(unknown_categories.items())
        )
        raise DataError(
            f"{where}: {sum(map(len, unknown_categories.values()))} row(s) have a category the 3D reward does not know: "
            f"{listed}; expected one of {', '.join(RL_CATEGORIES)}"
        )
    paths = [Path(r["image"]) for r in records if r["image"] is not None]
    bad = check_images(paths, workers=workers)
    dropped = 0
    if bad:
        bad_rows = [r for r in records if r["image"] is not None and Path(r["image"]) in bad]
        listed = "; ".join(
            f"row {r['source_row']}: {r['image']} {bad[Path(r['image'])]}" for r in bad_rows[:MAX_LISTED]
        )
        if on_bad_image == "error":
            raise DataError(
                f"{where}: {len(bad_rows)} of {len(records)} rows have a missing or undecodable image "
                f"({len(bad)} distinct files); first: {listed} (set on_bad_image: drop to skip them)"
            )
        records = [r for r in records if r["image"] is None or Path(r["image"]) not in bad]
        dropped = len(bad_rows)
        log.warning("%s: dropped %d rows with a missing or undecodable image; first: %s", where, dropped, listed)
    if not records:
        raise DataError(f"{where}: no rows left after dropping rows with bad images")

    table = _to_arrow(records, kind, list(df.columns))
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), b"spatialreasoner.canonical": SCHEMA_VERSION.encode(), b"kind": kind.encode()}
    )
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    counts = {
        "rows": len(records),
        "qa": sum(r["kind"] == "qa" for r in records),
        "conversation": sum(r["kind"] == "conversation" for r in records),
        "dropped_bad_image": dropped,
        "images_checked": len(set(paths)),
    }
    log.info(
        "canonical %s table %s: %s from %d file(s) in %.1f s",
        kind,
        out,
        counts,
        len(files),
        time.perf_counter() - started,
    )
    return counts


def _sft_answer(cot: str, given: str | None, options: dict, where: str, row: int) -> str:
    """The answer of an SFT row: its chain-of-thought's ``<answer>`` (a letter when the row has options), which an
    ``answer`` column, where the source has one, must agree with."""
    m = COT_RE.fullmatch(cot)
    if m is None:
        shown = cot if len(cot) <= 80 else cot[:40] + " … " + cot[-40:]
        raise DataError(
            f"{where} row {row}: answer_cot {shown!r} is not <think>…</think><answer>…</answer> (the reasoning in "
            "<think> tags, then the answer in <answer> tags)"
        )
    content = m.group("answer").strip()
    present = {c: v for c, v in options.items() if v is not None}
    if present:
        letter = content if content in present else match_option(content, present)
        if letter == NO_MATCH:
            raise DataError(
                f"{where} row {row}: answer_cot's <answer>{content}</answer> names none of the options {list(present)}"
            )
    else:
        letter = content
    if given is not None and given != letter:
        raise DataError(
            f"{where} row {row}: answer {given!r} contradicts the chain-of-thought, whose <answer> is {content!r}"
            f" ({letter!r})"
        )
    return letter


def _question_index(value, where: str, row: int) -> int:
    """An integer question id; a fractional or non-numeric one is an error (int() would silently truncate 3.7)."""
    value = _cell(value)
    if value is None:
        raise DataError(f"{where} row {row}: empty question_index")
    if isinstance(value, bool):
        raise DataError(f"{where} row {row}: question_index {value!r} is not an integer")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    if isinstance(value, numbers.Integral):  # int and numpy integers
        return int(value)
    raise DataError(f"{where} row {row}: question_index {value!r} is not an integer")


def _str_or_none(value) -> str | None:
    value = _cell(value)
    return None if value is None else str(value)


def _image_path(root: Path, value, column: str, where: str, row: int) -> str:
    value = _cell(value)
    if not is_present(value):
        raise DataError(f"{where} row {row}: empty {column}")
    path = (root / str(value)).resolve()
    # a relative name must not climb out of its image folder
    if root not in path.parents:
        raise DataError(f"{where} row {row}: {column} {value!r} points outside its image folder {root}")
    return str(path)


def _to_arrow(records: list[dict], kind: str, source_columns: list[str]):
    import pandas as pd
    import pyarrow as pa

    turn = pa.struct([("from", pa.string()), ("value", pa.string())])
    fields = [(c, pa.string()) for c in ("kind", "image", "question", *OPTION_COLUMNS, "answer", "category")]
    if kind == "sft":
        fields += [("answer_cot", pa.string()), ("conversations", pa.list_(turn))]
    else:
        fields += [("question_index", pa.int64())]
    fields += [("source_row", pa.int64())]
    schema = pa.schema(fields)
    table = pa.Table.from_pylist([{f.name: r[f.name] for f in schema} for r in records], schema=schema)
    extras = [c for c in source_columns if c not in schema.names]
    if extras:
        # extra columns keep whatever type pandas/arrow infers for them
        extra_df = pd.DataFrame([{c: r[c] for c in extras} for r in records], columns=extras)
        extra_table = pa.Table.from_pandas(extra_df, preserve_index=False)
        for name in extras:
            table = table.append_column(name, extra_table.column(name))
    return table


def parse_image_roots(items: list[str]) -> dict[str, str]:
    roots = {}
    for item in items or []:
        col, sep, root = item.partition("=")
        if not sep or not col or not root:
            raise DataError(f"--images expects COLUMN=FOLDER, got {item!r}")
        roots[col] = root
    return roots


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", required=True, choices=("sft", "rl"))
    parser.add_argument("--annotations", required=True, help="annotation folder (Hub snapshot) or file")
    parser.add_argument("--split", default="train")
    parser.add_argument(
        "--images", nargs="+", default=[], metavar="COLUMN=FOLDER", help="image folder for each image column"
    )
    parser.add_argument("--on-bad-image", default="error", choices=("error", "drop"))
    parser.add_argument("--workers", type=int, default=4, help="threads checking images")
    parser.add_argument("--out", required=True, help="output parquet")


def run(args) -> int:
    canonicalize(
        args.kind,
        args.annotations,
        parse_image_roots(args.images),
        args.out,
        args.split,
        args.on_bad_image,
        args.workers,
    )
    return 0
