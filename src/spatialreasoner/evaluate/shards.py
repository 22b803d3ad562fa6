"""Append-only shard files of finished inference rows, so that a killed job resumes with only the missing rows.

A folder's ``meta.json`` records what its rows depend on; shards made with other settings are dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

from spatialreasoner.utils import write_json_atomic

log = logging.getLogger(__name__)

SHARD_META = "meta.json"


def fingerprint(settings: dict, model: Path, benchmark: Path) -> dict:
    """What the shards' rows depend on; shards made with anything else are stale."""
    weights = sorted(p for p in model.glob("*.safetensors*"))
    stamp = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in weights]
    bstat = benchmark.stat()
    return {
        **settings,
        "model": str(model.resolve()),
        "weights": hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16],
        "benchmark": str(benchmark.resolve()),
        "benchmark_stat": [bstat.st_size, int(bstat.st_mtime)],
    }


def prepare_shard_dir(shard_dir: Path, fingerprint: dict) -> None:
    """Create ``shard_dir``; drop its shards if they were made with other settings (named in the log)."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    meta_path = shard_dir / SHARD_META
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            old = None
        if old != fingerprint:
            changed = sorted(k for k in set(fingerprint) | set(old or {}) if (old or {}).get(k) != fingerprint.get(k))
            log.warning("shards in %s were made with other settings (%s); starting afresh", shard_dir, changed)
            for p in shard_dir.glob("*.jsonl"):
                p.unlink()
    write_json_atomic(meta_path, fingerprint)


def read_shards(shard_dir: Path) -> dict[str, dict]:
    """Finished rows by index (as text). A line cut short by a kill is ignored: that row is generated again."""
    done: dict[str, dict] = {}
    for path in sorted(shard_dir.glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    continue  # a partial last line from a killed writer
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                done[str(rec["index"])] = rec
    return done


class ShardWriter:
    """Appends finished rows as JSON lines to a file of its own, flushed and synced per batch."""

    def __init__(self, shard_dir: Path, rank: int):
        self.path = shard_dir / f"rows-{rank}-{uuid.uuid4().hex[:8]}.jsonl"
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, records: Sequence[dict]) -> None:
        self._f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()
