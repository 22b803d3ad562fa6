"""Benchmark rows for inference: the VLMEvalKit TSV read and checked, its images decoded, the official prompt."""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

import pandas as pd

from spatialreasoner.errors import DataError
from spatialreasoner.prompts import format_question, present_options

#: VLMEvalKit stores an image once and lets other rows refer to it by index: an ``image`` cell this short is a
#: reference, not base64 data.
IMAGE_REF_MAX_LEN = 64


def read_benchmark(path: str | Path) -> pd.DataFrame:
    """The benchmark TSV as VLMEvalKit reads it (pandas' default NA strings: an option cell "NA", "None" or "n/a" is a
    missing option, as in the official evaluation's prompt), image references resolved; checks the columns."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"benchmark {path} does not exist")
    try:
        df = pd.read_csv(path, sep="\t", dtype={"image": str})
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"benchmark {path}: cannot read as TSV: {exc}") from exc
    missing = [c for c in ("index", "question", "A", "B", "image") if c not in df.columns]
    if missing:
        raise DataError(f"benchmark {path}: missing column(s) {', '.join(missing)}")
    dup = df["index"][df["index"].duplicated()].tolist()
    if dup:
        raise DataError(f"benchmark {path}: duplicate index {', '.join(map(str, dup[:5]))}")
    df["image"] = resolve_image_refs(df["index"], df["image"])
    return df


def resolve_image_refs(index: pd.Series, image: pd.Series) -> list:
    """Replace VLMEvalKit's short image cells (the index of another row holding the image) by that row's data."""
    by_index = dict(zip(index.astype(str), image, strict=True))
    out = []
    for cell in image:
        if isinstance(cell, str) and len(cell) <= IMAGE_REF_MAX_LEN and cell in by_index:
            target = by_index[cell]
            if isinstance(target, str) and len(target) > IMAGE_REF_MAX_LEN:
                cell = target
        out.append(cell)
    return out


def decode_image(cell, index):
    """A base64 image cell as an RGB PIL image; a DataError naming the row's ``index`` if it does not decode."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(cell, str) or not cell:
        raise DataError(f"benchmark row index {index}: empty image cell")
    try:
        raw = base64.b64decode(cell, validate=False)
        with Image.open(io.BytesIO(raw)) as img:
            return img.convert("RGB")
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"benchmark row index {index}: image does not decode ({type(exc).__name__}: {exc})") from exc


def build_messages(row, system_prompt: str | None) -> list[dict]:
    """The official evaluation prompt: optional system prompt, then the image and the question with its options."""
    text = format_question(str(row["question"]), present_options(row))
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]})
    return messages
