"""``spatialreasoner synthesize``: write the SynthSpatial dataset in the real datasets' file formats.

One call writes, into the output folder, the image tars, the SFT and RL annotation folders and the two benchmark
TSVs, so that the demo runs through the same fetch / extract / canonicalize / prepare-benchmark steps as real data.

Output layout (names fixed, mirroring the Hugging Face sources):

- ``openimages.tar``: members ``openimages/<name>.jpg`` (images of the 3D QA rows, SFT and RL);
- ``llava.tar``: members ``llava/synth/<name>.jpg`` (images of the LLaVA-style conversation rows);
- ``SpatialReasonerTrain-SFT/`` and ``SpatialReasonerTrain-RL/``: a dataset card ``README.md`` and parquet files
  ``all/train-00000-of-00001.parquet`` and ``all/val-00000-of-00001.parquet`` (config ``all``, splits train/val).
  SFT columns: ``question, A, B, C, D, answer, answer_cot, image_filename, category`` (3D QA rows; image relative to
  the extracted ``openimages/`` folder) and ``conversations`` (list of ``{from, value}``), ``image_path`` (LLaVA
  rows; relative to the extracted ``llava/`` folder); the other kind's cells are null. RL columns: ``question, A,
  B, C, D, answer, category, question_index, image_filename``.
- ``3dsrbench_v1_vlmevalkit_circular.tsv``: ``index, qid, question, A, B, C, D, answer, category, image`` with
  circular variants ``X, X-1, ...`` and, for left/right-sensitive subtypes, mirrored ``X-flip, X-flip-1, ...``;
- ``CV-Bench-3D.tsv``: ``index, question, A, B, answer, category, image, source`` (categories Depth, Distance);
- ``Canary.tsv``: the canary (``spatialreasoner.synth.canary``), CV-Bench-3D's columns plus ``pair``; its pictures
  and questions also join the SFT train split ``canary.repeats`` times each (images ``openimages/canary-*.jpg``).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from spatialreasoner.errors import ConfigError
from spatialreasoner.synth.canary import canary_items
from spatialreasoner.synth.questions import CATEGORIES_CVBENCH3D, COT_DECIMALS, SUBTYPES_3DSRBENCH, Question, ask
from spatialreasoner.synth.render import encode_jpeg, render
from spatialreasoner.synth.scene import Scene, mirror, sample_scene
from spatialreasoner.utils import atomic_path, json_object_arg

log = logging.getLogger(__name__)

OPENIMAGES_TAR = "openimages.tar"
LLAVA_TAR = "llava.tar"
SFT_DIR = "SpatialReasonerTrain-SFT"
RL_DIR = "SpatialReasonerTrain-RL"
BENCH_3DSR = "3dsrbench_v1_vlmevalkit_circular.tsv"
BENCH_CVB = "CV-Bench-3D.tsv"
BENCH_CANARY = "Canary.tsv"
OUTPUTS = (OPENIMAGES_TAR, LLAVA_TAR, SFT_DIR, RL_DIR, BENCH_3DSR, BENCH_CVB, BENCH_CANARY)

# Subtypes whose answer changes under a horizontal flip get mirrored "-flip" variants, as in 3DSRBench.
FLIP_SUBTYPES = ("orientation_on_the_left", "orientation_viewpoint", "multi_object_viewpoint_towards_object")

DEFAULTS: dict = {
    "seed": 0,
    "image_size": 112,
    "objects": [3, 5],
    "questions_per_image": 2,
    # `categories`: the question kinds of the 3D QA rows (default the 12 3DSRBench subtypes, as the real training
    # data's; CV-Bench-3D's Depth and Distance may be added).
    "sft": {"train": 300, "val": 24, "conversations": 60, "categories": list(SUBTYPES_3DSRBENCH)},
    "rl": {"train": 96, "val": 12},
    "3DSRBench": {"questions": 60, "flip": list(FLIP_SUBTYPES)},
    "CV-Bench-3D": {"questions": 120},
    # `pairs`: canary scenes (two pictures each); `repeats`: how many times each canary row joins the SFT data
    "canary": {"pairs": 16, "repeats": 0},
    "jpeg_quality": 90,
    "cot_decimals": 2,
}
# Independent random streams, so that changing one count does not change the other parts.
STREAMS = {
    "sft-train": 1, "sft-val": 2, "rl-train": 3, "rl-val": 4, "llava": 5, "3DSRBench": 6, "CV-Bench-3D": 7, "canary": 8
}  # fmt: skip
TAR_MTIME = 0  # fixed tar mtime: identical inputs give byte-identical outputs


def resolve_config(cfg: dict | None) -> dict:
    """Defaults overlaid with ``cfg`` (one level deep for the nested sections); unknown keys are an error."""
    cfg = dict(cfg or {})
    out = json.loads(json.dumps(DEFAULTS))
    for key, value in cfg.items():
        if key not in DEFAULTS:
            raise ConfigError(f"synthetic: unknown key {key!r}; known: {', '.join(DEFAULTS)}")
        if isinstance(DEFAULTS[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"synthetic.{key}: expected a mapping, got {value!r}")
            unknown = set(value) - set(DEFAULTS[key])
            if unknown:
                raise ConfigError(f"synthetic.{key}: unknown keys {sorted(unknown)}; known: {sorted(DEFAULTS[key])}")
            out[key].update(value)
        else:
            out[key] = value
    lo, hi = out["objects"]
    if not (3 <= lo <= hi <= 8):
        raise ConfigError(f"synthetic.objects: expected [min, max] with 3 <= min <= max <= 8, got {out['objects']}")
    if int(out["image_size"]) < 28:
        raise ConfigError(f"synthetic.image_size: expected at least 28 pixels, got {out['image_size']}")
    if not (isinstance(out["cot_decimals"], int) and 0 <= out["cot_decimals"] <= 4):
        raise ConfigError(f"synthetic.cot_decimals: expected an integer from 0 to 4, got {out['cot_decimals']!r}")
    categories = out["sft"]["categories"]
    known = (*SUBTYPES_3DSRBENCH, *CATEGORIES_CVBENCH3D)
    if not categories or set(categories) - set(known) or len(set(categories)) != len(categories):
        raise ConfigError(
            f"synthetic.sft.categories: expected distinct question categories among {', '.join(known)}; "
            f"got {categories!r}"
        )
    for key in ("pairs", "repeats"):
        value = out["canary"][key]
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= (1 if key == "pairs" else 0)):
            least = "1" if key == "pairs" else "0"
            raise ConfigError(f"synthetic.canary.{key}: expected an integer of at least {least}, got {value!r}")
    unknown_flip = set(out["3DSRBench"]["flip"]) - set(SUBTYPES_3DSRBENCH)
    if unknown_flip:
        raise ConfigError(f"synthetic.3DSRBench.flip: unknown subtypes {sorted(unknown_flip)}")
    return out


def scene_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), STREAMS[stream], int(index)])


def make_scene(cfg: dict, rng: np.random.Generator) -> Scene:
    return sample_scene(rng, int(cfg["image_size"]), n_objects=tuple(cfg["objects"]))


@dataclass
class Item:
    """One question about one image (``scene`` kept for mirrored variants)."""

    scene: Scene
    image_name: str
    question: Question
    question_index: int


def questions_stream(cfg: dict, stream: str, categories: Iterable[str], count: int) -> Iterator[Item]:
    """``count`` questions, categories in round-robin, up to ``questions_per_image`` per scene."""
    categories = list(categories)
    per_image = max(1, int(cfg["questions_per_image"]))
    made, scene_index, cat_cursor = 0, 0, 0
    while made < count:
        rng = scene_rng(cfg["seed"], stream, scene_index)
        scene = make_scene(cfg, rng)
        name = f"{stream}-{scene_index:06d}.jpg"
        asked = 0
        while asked < per_image and made < count:
            category = categories[cat_cursor % len(categories)]
            q = ask(scene, category, rng)
            if q is None:  # this scene cannot ask it unambiguously: keep the category for the next scene
                break
            cat_cursor += 1
            yield Item(scene, name, q, made)
            made += 1
            asked += 1
        scene_index += 1
        if scene_index > 100 * (count + 10):
            raise RuntimeError(f"{stream}: no scene allows a {categories[cat_cursor % len(categories)]} question")


class TarWriter:
    """Deterministic tar of in-memory files (fixed mtime/owner)."""

    def __init__(self, path: Path):
        self._tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 (closed by close())
        self.count = 0

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = TAR_MTIME
        info.mode = 0o644
        self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> None:
        self._tar.close()


DATASET_CARD = """---
configs:
- config_name: all
  data_files:
  - split: train
    path: all/train-*.parquet
  - split: val
    path: all/val-*.parquet
---
# {name} (SynthSpatial)

Synthetic stand-in for `ccvl/{name}`, generated by `spatialreasoner synthesize` with exact 3D ground truth.
Images are in `{tar}` (relative to its extracted `openimages/` or `llava/` folder).
"""


def _write_parquet(rows: list[dict], schema, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _annotation_folder(out: Path, name: str, splits: dict[str, list[dict]], schema) -> None:
    with atomic_path(out / name) as tmp:
        (tmp / "all").mkdir(parents=True)
        (tmp / "README.md").write_text(DATASET_CARD.format(name=name, tar=OPENIMAGES_TAR))
        for split, rows in splits.items():
            _write_parquet(rows, schema, tmp / "all" / f"{split}-00000-of-00001.parquet")


def _sft_schema():
    import pyarrow as pa

    turn = pa.struct([("from", pa.string()), ("value", pa.string())])
    return pa.schema(
        [(c, pa.string()) for c in ("question", "A", "B", "C", "D", "answer", "answer_cot", "image_filename")]
        + [("category", pa.string()), ("conversations", pa.list_(turn)), ("image_path", pa.string())]
    )


def _rl_schema():
    import pyarrow as pa

    return pa.schema(
        [(c, pa.string()) for c in ("question", "A", "B", "C", "D", "answer", "category")]
        + [("question_index", pa.int64()), ("image_filename", pa.string())]
    )


def _options(q: Question) -> dict[str, str | None]:
    return {letter: (q.options[i] if i < len(q.options) else None) for i, letter in enumerate("ABCD")}


def _qa_row(item: Item, with_cot: bool) -> dict:
    q = item.question
    row = {"question": q.question, **_options(q), "answer": q.answer_letter, "category": q.category}
    row["image_filename"] = item.image_name
    if with_cot:
        row |= {"answer_cot": q.answer_cot(), "conversations": None, "image_path": None}
    else:
        row["question_index"] = item.question_index
    return row


def _a(name: str) -> str:
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _conversation(scene: Scene, rng: np.random.Generator) -> list[dict]:
    """A LLaVA-style two-round chat about the picture (general visual instruction data of the SFT mix)."""
    objs = list(scene.objects)
    names = ", ".join(_a(o.name) for o in objs[:-1]) + f" and {_a(objs[-1].name)}"
    pick = objs[int(rng.integers(len(objs)))]
    nearest = min(objs, key=lambda o: float(np.linalg.norm(o.location)))
    turns = [
        ("human", "<image>\nHow many objects are in this picture, and what are they?"),
        ("gpt", f"There are {len(objs)} objects: {names}."),
        ("human", f"What shape is the {pick.colour} object?"),
        ("gpt", f"The {pick.colour} object is a {pick.shape}."),
        ("human", "Which object is nearest to the camera?"),
        ("gpt", f"The {nearest.name} is nearest to the camera."),
    ]
    return [{"from": who, "value": text} for who, text in turns]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def generate(out_dir: str | Path, cfg: dict | None = None) -> dict:
    """Write every output into ``out_dir``; returns counts (rows, images, scenes/s)."""
    cfg = resolve_config(cfg)
    token = COT_DECIMALS.set(int(cfg["cot_decimals"]))
    try:
        return _generate(out_dir, cfg)
    finally:
        COT_DECIMALS.reset(token)


def _generate(out_dir: str | Path, cfg: dict) -> dict:
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    quality = int(cfg["jpeg_quality"])
    started = time.perf_counter()
    counts: dict[str, int] = {}
    total = (
        cfg["sft"]["train"] + cfg["sft"]["val"] + cfg["sft"]["conversations"] + cfg["rl"]["train"] + cfg["rl"]["val"]
    )
    total += cfg["3DSRBench"]["questions"] + cfg["CV-Bench-3D"]["questions"] + 2 * cfg["canary"]["pairs"]
    bar = tqdm(total=total, desc="synthesize", unit="q", mininterval=1.0)
    scenes = 0

    # 3D QA rows (SFT and RL) share the openimages tar.
    splits: dict[str, dict[str, list[dict]]] = {"sft": {}, "rl": {}}
    with atomic_path(out / OPENIMAGES_TAR) as tmp_tar:
        tar = TarWriter(tmp_tar)
        for kind, split in (("sft", "train"), ("sft", "val"), ("rl", "train"), ("rl", "val")):
            rows: list[dict] = []
            last = None
            categories = cfg["sft"]["categories"] if kind == "sft" else SUBTYPES_3DSRBENCH
            for item in questions_stream(cfg, f"{kind}-{split}", categories, int(cfg[kind][split])):
                if item.image_name != last:
                    tar.add(f"openimages/{item.image_name}", encode_jpeg(render(item.scene), quality))
                    last = item.image_name
                    scenes += 1
                rows.append(_qa_row(item, with_cot=kind == "sft"))
                bar.update()
            splits[kind][split] = rows
        # The canary's pictures share the tar; its rows join the SFT train split, repeated.
        canary = list(
            canary_items(int(cfg["image_size"]), cfg["canary"]["pairs"], lambda i: scene_rng(cfg["seed"], "canary", i))
        )
        canary_b64 = {}
        for item in canary:
            data = encode_jpeg(render(item.scene), quality)
            if cfg["canary"]["repeats"]:  # the SFT rows' pictures; the benchmark carries its own
                tar.add(f"openimages/{item.image_name}", data)
            canary_b64[item.image_name] = _b64(data)
            scenes += 1
            bar.update()
        for _ in range(int(cfg["canary"]["repeats"])):
            splits["sft"]["train"] += [_qa_row(item, with_cot=True) for item in canary]
        # LLaVA-style conversation rows join the SFT train split, with their own tar.
        with atomic_path(out / LLAVA_TAR) as tmp_llava:
            llava = TarWriter(tmp_llava)
            for i in range(int(cfg["sft"]["conversations"])):
                rng = scene_rng(cfg["seed"], "llava", i)
                scene = make_scene(cfg, rng)
                name = f"synth/llava-{i:06d}.jpg"
                llava.add(f"llava/{name}", encode_jpeg(render(scene), quality))
                scenes += 1
                row = dict.fromkeys(
                    ("question", "A", "B", "C", "D", "answer", "answer_cot", "image_filename", "category")
                )
                row |= {"conversations": _conversation(scene, rng), "image_path": name}
                splits["sft"]["train"].append(row)
                bar.update()
            llava.close()
            counts["llava_images"] = llava.count
        tar.close()
        counts["openimages_images"] = tar.count
    _annotation_folder(out, SFT_DIR, splits["sft"], _sft_schema())
    _annotation_folder(out, RL_DIR, splits["rl"], _rl_schema())
    counts |= {f"{k}_{s}_rows": len(v) for k, d in splits.items() for s, v in d.items()}

    # 3DSRBench: each base question X in every option rotation; mirrored variants for left/right subtypes.
    rows = []
    flip = set(cfg["3DSRBench"]["flip"])
    last_name, image_b64 = None, None
    base_items = questions_stream(cfg, "3DSRBench", SUBTYPES_3DSRBENCH, int(cfg["3DSRBench"]["questions"]))
    for base, item in enumerate(base_items):
        if item.image_name != last_name:
            image_b64 = _b64(encode_jpeg(render(item.scene), quality))
            last_name = item.image_name
            scenes += 1
        qid = f"synth{base:05d}"
        variants = [(qid, item.question, image_b64)]
        if item.question.category in flip:
            mirrored = mirror(item.scene)
            mq = _mirrored_question(mirrored, item.question)
            if mq is not None:
                variants.append((f"{qid}-flip", mq, _b64(encode_jpeg(render(mirrored), quality))))
                scenes += 1
        for variant_qid, q, img in variants:
            for k in range(len(q.options)):
                rq = q.rotated(k)
                rows.append(
                    {
                        "index": len(rows),
                        "qid": variant_qid if k == 0 else f"{variant_qid}-{k}",
                        "question": rq.question,
                        **{letter: (v if v is not None else "") for letter, v in _options(rq).items()},
                        "answer": rq.answer_letter,
                        "category": rq.category,
                        "image": img,
                    }
                )
        bar.update()
    _write_tsv(pd.DataFrame(rows), out / BENCH_3DSR)
    counts["3DSRBench_rows"] = len(rows)

    rows = []
    last_name = None
    for item in questions_stream(cfg, "CV-Bench-3D", CATEGORIES_CVBENCH3D, int(cfg["CV-Bench-3D"]["questions"])):
        if item.image_name != last_name:
            image_b64 = _b64(encode_jpeg(render(item.scene), quality))
            last_name = item.image_name
            scenes += 1
        q = item.question
        rows.append(
            {
                "index": len(rows),
                "question": q.question,
                "A": q.options[0],
                "B": q.options[1],
                "answer": q.answer_letter,
                "category": q.category,
                "image": image_b64,
                "source": "SynthSpatial",
            }
        )
        bar.update()
    bar.close()
    _write_tsv(pd.DataFrame(rows), out / BENCH_CVB)
    counts["CV-Bench-3D_rows"] = len(rows)

    rows = []
    for item in canary:
        q = item.question
        row = {"index": len(rows), "question": q.question, "A": q.options[0], "B": q.options[1]}
        row |= {"answer": q.answer_letter, "category": q.category, "image": canary_b64[item.image_name]}
        rows.append(row | {"source": "SynthSpatial canary", "pair": item.pair})
    _write_tsv(pd.DataFrame(rows), out / BENCH_CANARY)
    counts["Canary_rows"] = len(rows)
    elapsed = time.perf_counter() - started
    counts["scenes"] = scenes
    log.info("synthesized %s into %s in %.1f s (%.0f scenes/s)", counts, out, elapsed, scenes / max(elapsed, 1e-9))
    return counts


def _mirrored_question(mirrored: Scene, q: Question) -> Question | None:
    """The same question about the mirrored scene, answered again from the mirrored geometry."""
    from spatialreasoner.synth.questions import BUILDERS

    arity, build = BUILDERS[q.category]
    objs = tuple(mirrored.by_name(n) for n in q.objects)
    return build(mirrored, objs)


def _write_tsv(df, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (receives the tars, annotations, TSVs)")
    parser.add_argument("--config", default="{}", help="the config's `synthetic` section as JSON")


def run(args) -> int:
    generate(args.out, json_object_arg(args.config, "--config"))
    return 0
