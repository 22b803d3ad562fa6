"""The predictions table (benchmark columns without the image, plus the generated ones) and its VLMEvalKit-style
``.xlsx`` export, in which text never becomes a formula and cells over Excel's limit are reported."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from spatialreasoner.utils import atomic_path

log = logging.getLogger(__name__)

#: Columns generation adds to the benchmark's own: the reply, the batch's wall time divided by its rows, the number
#: of generated tokens (up to the end-of-turn token), and why a row was skipped (bad image) if it was.
PREDICTION_COLUMNS = ("prediction", "gen_seconds", "gen_tokens", "error")
#: Excel's limit on the characters of one cell.
XLSX_CELL_LIMIT = 32767


def merge_predictions(df: pd.DataFrame, done: dict[str, dict], failed: Sequence[dict]) -> pd.DataFrame:
    """Benchmark columns without the image, in benchmark order, plus the generated columns."""
    by_index = dict(done)
    for rec in failed:
        by_index.setdefault(str(rec["index"]), rec)
    keys = df["index"].astype(str)
    out = df.drop(columns=["image"]).reset_index(drop=True)
    for col in PREDICTION_COLUMNS:
        out[col] = [by_index.get(k, {}).get(col) for k in keys]
    out["gen_seconds"] = pd.to_numeric(out["gen_seconds"], errors="coerce").astype("float64")
    out["gen_tokens"] = pd.to_numeric(out["gen_tokens"], errors="coerce").astype("Int64")
    out["prediction"] = out["prediction"].astype("string")
    out["error"] = out["error"].astype("string")
    return out


def export_xlsx(preds: pd.DataFrame, path: str | Path) -> list[dict]:
    """Write the VLMEvalKit-style .xlsx: text stays text (never a formula, URL or number).

    Excel cells hold at most 32,767 characters: longer ones are cut to fit with a visible marker, and each is
    logged and returned (index, column, length); the parquet keeps the full text.
    """
    path = Path(path)
    frame = preds.copy()
    long_cells = []
    for col in frame.columns:
        if frame[col].dtype == object or pd.api.types.is_string_dtype(frame[col]):
            for pos, value in enumerate(frame[col]):
                if isinstance(value, str) and len(value) > XLSX_CELL_LIMIT:
                    marker = f" [cut: {len(value)} characters in total; see the parquet]"
                    frame.iat[pos, frame.columns.get_loc(col)] = value[: XLSX_CELL_LIMIT - len(marker)] + marker
                    long_cells.append({"index": str(frame["index"].iat[pos]), "column": col, "length": len(value)})
    for cell in long_cells:
        log.warning(
            "%s: index %s column %s has %d characters, over Excel's %d; cut with a marker in the xlsx",
            path.name,
            cell["index"],
            cell["column"],
            cell["length"],
            XLSX_CELL_LIMIT,
        )
    options = {"strings_to_formulas": False, "strings_to_urls": False, "strings_to_numbers": False}
    with atomic_path(path) as tmp:
        tmp_xlsx = tmp.with_suffix(".xlsx")  # pandas picks the engine by suffix
        with pd.ExcelWriter(tmp_xlsx, engine="xlsxwriter", engine_kwargs={"options": options}) as writer:
            frame.to_excel(writer, index=False)
        os.replace(tmp_xlsx, tmp)
    return long_cells
