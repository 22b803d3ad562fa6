"""``spatialreasoner snapshot``: a Hugging Face Hub repository downloaded at a pinned revision.

A branch or tag is resolved to its commit once and recorded in ``<out>.lock.json``; later runs download that
commit, so reruns are reproducible until the lock is deleted. For a model repository the marker and the lock also
record the sha256 of every weight file, which :mod:`spatialreasoner.modeling` checks whenever the folder is used. The token comes from ``HF_TOKEN`` only and is never
logged; ``HF_HUB_OFFLINE=1`` is honoured (an unrecorded branch then cannot be resolved and is an error).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import re
from pathlib import Path

from spatialreasoner.errors import DataError
from spatialreasoner.utils import atomic_path, redact, write_json_atomic

log = logging.getLogger(__name__)

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
MARKER = ".snapshot.json"


def lock_path(out_dir: str | os.PathLike) -> Path:
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".lock.json")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _token() -> str | bool:
    # False stops huggingface_hub from falling back to a token stored on disk: the environment is the only source.
    return os.environ.get("HF_TOKEN") or False


def resolve_commit(repo: str, revision: str, repo_type: str, out_dir: Path) -> tuple[str, str]:
    """(commit, how) for ``revision``: itself if a commit, else the lock file's record, else asked of the Hub."""
    if COMMIT_RE.match(revision):
        return revision, "pinned commit"
    lock = lock_path(out_dir)
    if lock.is_file():
        try:
            rec = json.loads(lock.read_text())
        except ValueError as exc:
            raise DataError(f"lock file {lock} is not valid JSON ({exc}); delete it to resolve again") from exc
        if (rec.get("repo"), rec.get("repo_type"), rec.get("revision")) == (repo, repo_type, revision):
            commit = str(rec.get("commit", ""))
            if not COMMIT_RE.match(commit):
                raise DataError(f"lock file {lock} records no valid commit; delete it to resolve again")
            return commit, f"lock file {lock}"
        raise DataError(
            f"lock file {lock} records {rec.get('repo')}@{rec.get('revision')} ({rec.get('repo_type')}) but the "
            f"config asks for {repo}@{revision} ({repo_type}); delete the lock file to resolve the new revision"
        )
    if offline():
        raise DataError(
            f"cannot resolve revision {revision!r} of {repo} offline (HF_HUB_OFFLINE is set) and no lock file "
            f"{lock} records it; pin a 40-character commit or run once online"
        )
    from huggingface_hub import HfApi

    try:
        info = HfApi().repo_info(repo, revision=revision, repo_type=repo_type, token=_token())
    except Exception as exc:  # network and Hub errors alike end the run with one line
        raise DataError(f"cannot resolve {repo}@{revision} ({repo_type}): {redact(str(exc))}") from exc
    return str(info.sha), "resolved on the Hub"


def _read_lock(out_dir: Path) -> dict | None:
    lock = lock_path(out_dir)
    if not lock.is_file():
        return None
    try:
        data = json.loads(lock.read_text())
    except ValueError as exc:
        raise DataError(f"lock file {lock} is not valid JSON ({exc}); delete it to resolve again") from exc
    if not isinstance(data, dict):
        raise DataError(f"lock file {lock} is not a JSON object; delete it to resolve again")
    return data


def cached_snapshot(repo: str, repo_type: str, commit: str, allow_patterns: list[str] | None) -> Path | None:
    """The Hugging Face cache's folder of ``repo`` at ``commit`` when the cache (``HF_HOME`` / ``HF_HUB_CACHE``) already
    holds that revision, else None; nothing is downloaded."""
    from huggingface_hub import snapshot_download

    try:
        found = snapshot_download(
            repo, repo_type=repo_type, revision=commit, allow_patterns=allow_patterns, local_files_only=True
        )
    except Exception:  # not cached (or only partly): download as usual
        return None
    found = Path(found)
    return found if found.is_dir() and any(found.iterdir()) else None


def copy_from_cache(cached: Path, dest: Path) -> int:
    """Hard-link (or copy, across file systems) every file of a cache snapshot into ``dest``; returns the count."""
    import shutil

    count = 0
    for src in sorted(cached.rglob("*")):
        if src.is_dir():
            continue
        target = dest / src.relative_to(cached)
        target.parent.mkdir(parents=True, exist_ok=True)
        blob = src.resolve()
        try:
            os.link(blob, target)
        except OSError:
            shutil.copy2(blob, target)
        count += 1
    return count


def snapshot(
    repo: str,
    revision: str,
    repo_type: str,
    out_dir: str | os.PathLike,
    allow_patterns: list[str] | None = None,
) -> Path:
    """Download ``repo`` at ``revision`` into ``out_dir`` (atomically); returns ``out_dir``."""
    from huggingface_hub import snapshot_download

    if repo_type not in ("model", "dataset", "space"):
        raise DataError(f"repo_type must be model, dataset or space, got {repo_type!r}")
    out_dir = Path(out_dir)
    commit, how = resolve_commit(repo, revision, repo_type, out_dir)
    log.info("snapshot %s (%s) revision %s -> commit %s (%s)", repo, repo_type, revision, commit, how)
    cached = cached_snapshot(repo, repo_type, commit, allow_patterns)
    with atomic_path(out_dir) as tmp:
        try:
            if cached is not None:
                # a cluster's shared Hugging Face cache already holds this commit: no download
                files = copy_from_cache(cached, tmp)
                log.info("snapshot %s@%s: %d file(s) taken from the Hugging Face cache %s", repo, commit, files, cached)
            else:
                snapshot_download(
                    repo,
                    repo_type=repo_type,
                    revision=commit,
                    local_dir=tmp,
                    allow_patterns=allow_patterns,
                    token=_token(),
                )
        except Exception as exc:
            where = " (offline: HF_HUB_OFFLINE is set)" if offline() else ""
            raise DataError(f"snapshot of {repo}@{commit} ({repo_type}) failed{where}: {redact(str(exc))}") from exc
        # huggingface_hub's own bookkeeping folder is not part of the repository
        cache = tmp / ".cache"
        if cache.is_dir():
            import shutil

            shutil.rmtree(cache)
        record = {"repo": repo, "repo_type": repo_type, "revision": revision, "commit": commit}
        locked = _read_lock(out_dir)
        if repo_type == "model":
            from spatialreasoner.modeling import WEIGHTS_KEY, weight_hashes

            record[WEIGHTS_KEY] = weight_hashes(tmp)
            before = (locked or {}).get(WEIGHTS_KEY) if (locked or {}).get("commit") == commit else None
            if before is not None and before != record[WEIGHTS_KEY]:
                differ = sorted(
                    k for k in set(before) | set(record[WEIGHTS_KEY]) if before.get(k) != record[WEIGHTS_KEY].get(k)
                )
                raise DataError(
                    f"snapshot of {repo}@{commit}: weight file(s) {', '.join(differ)} differ from the sha256 recorded "
                    f"in {lock_path(out_dir)} for the same commit; the download is corrupt"
                )
        write_json_atomic(tmp / MARKER, record)
    stamp = {"recorded": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    if locked is None and (not COMMIT_RE.match(revision) or repo_type == "model"):
        # branches: the commit they resolved to; models: also the sha256 of every weight file, checked at each use
        write_json_atomic(lock_path(out_dir), record | stamp)
        log.info("recorded commit %s of %s@%s in %s", commit, repo, revision, lock_path(out_dir))
    elif repo_type == "model" and locked.get("commit") == commit and "weights_sha256" not in locked:
        write_json_atomic(lock_path(out_dir), locked | {"weights_sha256": record["weights_sha256"]} | stamp)
        log.info("recorded the weights' sha256 of %s@%s in %s", repo, commit, lock_path(out_dir))
    files = sum(1 for p in out_dir.rglob("*") if p.is_file())
    log.info("snapshot of %s at %s written to %s (%d files)", repo, commit, out_dir, files)
    return out_dir


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", required=True, help="Hub repository id, e.g. Qwen/Qwen2.5-VL-7B-Instruct")
    parser.add_argument("--revision", default="main", help="commit, branch or tag (branches are locked on first use)")
    parser.add_argument("--repo-type", default="model", choices=("model", "dataset", "space"))
    parser.add_argument("--out", required=True, help="destination folder")
    parser.add_argument("--allow-patterns", nargs="*", default=None, help="only files matching these globs")


def run(args) -> int:
    snapshot(args.repo, args.revision, args.repo_type, args.out, args.allow_patterns)
    return 0
