"""Loading any model folder (tiny, released or trained) through the same Auto classes as the 7B model.

Before a folder is used its files are checked: JSON files parse, every safetensors file is as long as its header
says, and the sha256 of every weight file matches the one recorded when the folder was made (``run.json`` of a
trained model, ``.snapshot.json`` / the ``<folder>.lock.json`` of a Hub snapshot, ``tiny_model.json`` of the tiny
model), so truncated or corrupted weights are refused with the folder and the file named.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path

from spatialreasoner.errors import DataError
from spatialreasoner.utils import sha256_file

log = logging.getLogger(__name__)

PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
#: Files inside a model folder that may record ``weights_sha256`` ({file name: sha256}), in order of preference.
RECORD_FILES = ("run.json", ".snapshot.json", "tiny_model.json", ".local_model.json")
#: The record a linked local model folder (``released: {NAME: {path: DIR}}``) keeps of its source.
LOCAL_RECORD = ".local_model.json"
WEIGHTS_KEY = "weights_sha256"

# sha256 of files already hashed in this process, by (path, size, mtime): a folder checked twice is read once.
_HASHED: dict[tuple[str, int, int], str] = {}


def weight_files(path: str | Path) -> list[Path]:
    """The weight files of a model folder: ``*.safetensors`` and ``pytorch_model*.bin`` at its top level."""
    path = Path(path)
    return sorted(
        p for p in path.iterdir() if p.is_file() and (p.suffix == ".safetensors" or p.name.startswith("pytorch_model"))
    )


def _sha256(file: Path) -> str:
    st = file.stat()
    key = (str(file.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        _HASHED[key] = sha256_file(file)
    return _HASHED[key]


def weight_hashes(path: str | Path) -> dict[str, str]:
    """``{file name: sha256}`` of every weight file of a model folder (what ``run.json`` and the locks record)."""
    return {f.name: _sha256(f) for f in weight_files(path)}


def with_weight_hashes(record: dict, path: str | Path) -> dict:
    """``record`` (a model folder's ``run.json`` or other record) with the sha256 of the folder's weight files."""
    return {**record, WEIGHTS_KEY: weight_hashes(path)}


def recorded_weight_hashes(path: str | Path) -> tuple[dict[str, str], Path] | None:
    """The weight checksums recorded for a model folder and the file recording them, or None when none is."""
    path = Path(path)
    for name in RECORD_FILES:
        record = path / name
        if record.is_file():
            data = _read_json(record, path)
            if isinstance(data, dict) and isinstance(data.get(WEIGHTS_KEY), dict):
                hashes, where = data[WEIGHTS_KEY], record
                lock = path.with_name(path.name + ".lock.json")
                if name == ".snapshot.json" and lock.is_file():
                    # the lock outside the folder survives a new download; it must agree for the same commit
                    locked = _read_json(lock, path)
                    if locked.get("commit") == data.get("commit") and isinstance(locked.get(WEIGHTS_KEY), dict):
                        hashes, where = locked[WEIGHTS_KEY], lock
                return hashes, where
    return None


def _read_json(file: Path, folder: Path):
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"model folder {folder}: {file.name} cannot be read: {exc}") from exc
    if not text.strip():
        raise DataError(f"model folder {folder}: {file.name} is empty (0 bytes or blank); the folder is damaged")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DataError(
            f"model folder {folder}: {file.name} is not valid JSON ({exc}); the file is truncated or damaged"
        ) from exc


def check_safetensors(file: Path, folder: Path) -> None:
    """The file is as long as its header says (a truncated download or copy is refused); reads only the header."""
    size = file.stat().st_size
    where = f"model folder {folder}: {file.name}"
    if size < 8:
        raise DataError(f"{where} has {size} bytes, too few for a safetensors file; the file is truncated or empty")
    with open(file, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8:
            raise DataError(f"{where}: header of {header_len} bytes in a {size}-byte file; the file is truncated")
        try:
            header = json.loads(f.read(header_len))
        except ValueError as exc:
            raise DataError(f"{where}: header is not valid JSON ({exc}); the file is damaged") from exc
    if not isinstance(header, dict):
        raise DataError(f"{where}: header is not a JSON object; the file is damaged")
    try:
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise DataError(f"{where}: header has a tensor without data_offsets; the file is damaged") from exc
    if 8 + header_len + end != size:
        raise DataError(
            f"{where} has {size} bytes but its header describes {8 + header_len + end}; the file is truncated or damaged"
        )


def verify_weights(path: str | Path) -> bool:
    """Compare every weight file's sha256 with the recorded one; True when checked, False when nothing is recorded.

    A recorded file that is missing, an unrecorded weight file, or a different checksum is a DataError naming the
    folder and the file (corrupted bytes of the right size included).
    """
    path = Path(path)
    found = recorded_weight_hashes(path)
    if found is None:
        log.info("model folder %s records no weight checksums; checked its structure only", path)
        return False
    expected, where = found
    actual = weight_hashes(path)
    missing = sorted(set(expected) - set(actual))
    if missing:
        raise DataError(f"model folder {path}: weight file(s) {', '.join(missing)} recorded in {where} are missing")
    unrecorded = sorted(set(actual) - set(expected))
    if unrecorded:
        raise DataError(f"model folder {path}: weight file(s) {', '.join(unrecorded)} are not recorded in {where}")
    for name, digest in expected.items():
        if actual[name] != digest:
            raise DataError(
                f"model folder {path}: {name} has sha256 {actual[name]}, but {where} records {digest}; the file is "
                "corrupt or was replaced (fetch or train the model again)"
            )
    log.info("model folder %s: sha256 of %d weight file(s) match %s", path, len(expected), where)
    return True


def check_model_dir(path: str | Path, verify: bool = True) -> Path:
    """Raise a DataError naming the folder and the file unless ``path`` holds a complete, undamaged model,
    tokenizer and processor; with ``verify`` also check the weights' recorded sha256 (see :func:`verify_weights`)."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"model folder {path} does not exist")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json (model config)")
    if not any((path / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):
        missing.append("model.safetensors or model.safetensors.index.json (weights)")
    if not any((path / f).is_file() for f in PROCESSOR_FILES):
        missing.append("preprocessor_config.json or processor_config.json (image processor)")
    for f in TOKENIZER_FILES:
        if not (path / f).is_file():
            missing.append(f"{f} (tokenizer)")
    if missing:
        raise DataError(f"model folder {path} is incomplete; missing: {', '.join(missing)}")
    config = _read_json(path / "config.json", path)
    if not isinstance(config, dict):
        raise DataError(f"model folder {path}: config.json is not a JSON object")
    for name in (*PROCESSOR_FILES, *TOKENIZER_FILES, "model.safetensors.index.json"):
        if (path / name).is_file():
            _read_json(path / name, path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set((_read_json(index, path).get("weight_map") or {}).values()))
        absent = [s for s in shards if not (path / s).is_file()]
        if absent:
            raise DataError(
                f"model folder {path}: weight shard(s) {', '.join(absent)} named in {index.name} are missing"
            )
    for file in weight_files(path):
        if file.suffix == ".safetensors":
            check_safetensors(file, path)
        elif os.path.getsize(file) == 0:
            raise DataError(f"model folder {path}: {file.name} is empty (0 bytes)")
    if verify:
        verify_weights(path)
    return path


def load_processor(
    path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None, use_fast: bool | None = None
):
    """The folder's processor at the given pixel limits; ``use_fast`` False: the PIL ("slow") image processor,
    True: the torchvision one, None: transformers' default (the torchvision one in transformers 5)."""
    from transformers import AutoProcessor

    path = check_model_dir(path, verify=False)
    kwargs = {} if use_fast is None else {"use_fast": use_fast}
    processor = AutoProcessor.from_pretrained(path, **kwargs)
    if min_pixels is not None or max_pixels is not None:
        # transformers 5 expresses Qwen2-VL's pixel limits as size={shortest_edge: min, longest_edge: max}.
        size = dict(processor.image_processor.size)
        if min_pixels is not None:
            size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            size["longest_edge"] = max_pixels
        processor = AutoProcessor.from_pretrained(path, size=size, **kwargs)
    return processor


def load_model(path: str | Path, dtype: str = "float32", attn_implementation: str = "sdpa", **kwargs):
    """``AutoModelForImageTextToText`` with the given dtype ("float32", "bfloat16", "auto")."""
    import torch
    from transformers import AutoModelForImageTextToText

    # The weights' checksums are verified where a job starts using a folder (inference, a run's init), not again here.
    path = check_model_dir(path, verify=False)
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    log.info("loading model from %s (dtype=%s, attn=%s)", path, dtype, attn_implementation)
    # A weight missing from the folder would silently be freshly initialised, an unused one silently dropped; all
    # three kinds (and wrong shapes) are reported together below, naming the folder.
    kwargs.setdefault("ignore_mismatched_sizes", True)
    model, info = AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch_dtype, attn_implementation=attn_implementation, output_loading_info=True, **kwargs
    )
    problems = loading_problems(info)
    if problems:
        raise DataError(f"model folder {path}: its weights do not match its config.json ({'; '.join(problems)})")
    return model


#: How many key names an error message lists of each kind.
SHOWN_KEYS = 5


def loading_problems(info: dict) -> list[str]:
    """What a ``from_pretrained(..., output_loading_info=True)`` report says went wrong, one phrase per kind."""
    problems = []
    for kind, label in (("missing_keys", "missing"), ("unexpected_keys", "unused"), ("mismatched_keys", "wrong shape")):
        keys = sorted(k[0] if isinstance(k, tuple) else k for k in (info.get(kind) or ()))
        if keys:
            shown = ", ".join(keys[:SHOWN_KEYS]) + (f", ... ({len(keys)} in all)" if len(keys) > SHOWN_KEYS else "")
            problems.append(f"{label}: {shown}")
    if info.get("error_msgs"):
        problems.append("errors: " + "; ".join(str(m) for m in info["error_msgs"]))
    return problems


def resolve_attn_implementation(requested: str = "auto") -> str:
    """``flash_attention_2`` when requested or available on a GPU, else ``sdpa``."""
    if requested != "auto":
        return requested
    try:
        import flash_attn  # noqa: F401
        import torch

        if torch.cuda.is_available():
            return "flash_attention_2"
    except ImportError:
        pass
    return "sdpa"
