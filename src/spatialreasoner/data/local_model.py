"""``spatialreasoner link-model``: one's own model folder (``released: {NAME: {path: DIR}}``) as a workflow model.

The folder is checked like a downloaded one (config, readable weights, tokenizer and processor files; recorded
checksums verified when it has any), then ``resources/models/<name>/`` is made of links to its top-level files, so
every later rule reads it like any other model folder and nothing is copied. When the folder records no weight
checksums, the link folder records them (``.local_model.json``): a later change of the weights is refused by name.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from pathlib import Path

from spatialreasoner.errors import DataError
from spatialreasoner.modeling import LOCAL_RECORD, check_model_dir, recorded_weight_hashes, weight_hashes
from spatialreasoner.utils import atomic_path

log = logging.getLogger(__name__)


def source_files(source: str | Path) -> list[Path]:
    """The top-level files of a model folder (what the link folder links; subfolders such as checkpoints are not)."""
    return sorted(p for p in Path(source).iterdir() if p.is_file() and p.name != LOCAL_RECORD)


def link_model(source: str | Path, out: str | Path) -> Path:
    source, out = Path(source).expanduser().resolve(), Path(out)
    check_model_dir(source, verify=True)
    files = source_files(source)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for file in files:
            (tmp / file.name).symlink_to(file)
        record = {"source": str(source), "linked_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        if recorded_weight_hashes(source) is None:
            record["weights_sha256"] = weight_hashes(source)
        (tmp / LOCAL_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        check_model_dir(tmp, verify=True)
    log.info("model folder %s: %d file(s) linked into %s", source, len(files), out)
    return out


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help="the model folder to use (e.g. one's own checkpoint)")
    parser.add_argument("--out", required=True, help="the workflow's model folder, resources/models/<name>")


def run(args: argparse.Namespace) -> None:
    if not Path(args.source).expanduser().is_dir():
        raise DataError(f"model folder {args.source} does not exist or is not a folder")
    link_model(args.source, args.out)
