"""SynthSpatial: deterministic output, answers that agree with the geometry, reasoning in the reward's phrases."""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from spatialreasoner.errors import ConfigError
from spatialreasoner.synth.generate import BENCH_3DSR, OUTPUTS, generate, resolve_config
from spatialreasoner.synth.questions import (
    BUILDERS,
    COT_KINDS,
    QUADRANTS,
    SUBTYPES_3DSRBENCH,
    YES_NO,
    ask,
    candidates,
)
from spatialreasoner.synth.render import render
from spatialreasoner.synth.scene import COLOURS, Camera, Object3D, Scene, mirror, sample_scene

SMALL = {
    "sft": {"train": 24, "val": 4, "conversations": 4},
    "rl": {"train": 12, "val": 2},
    "3DSRBench": {"questions": 24},
    "CV-Bench-3D": {"questions": 8},
}

# The phrase patterns of the official 3D-aware process reward (the forms the reasoning must use).
NUM = r"-?\d+\.\d+"
PHRASES = {
    "location": re.compile(rf"3D location of .*? \({NUM}, {NUM}, {NUM}\)", re.I),
    "vector": re.compile(rf"vector from .*? to .*? \({NUM}, {NUM}, {NUM}\)", re.I),
    "dist_from": re.compile(r"distance from .*? to the camera .*? \d+\.\d+", re.I),
    "dist_between": re.compile(r"distance between .*? \d+\.\d+", re.I),
    "cosine": re.compile(r"cosine similarity between .*? -?\d+\.\d+", re.I),
    "angle": re.compile(r"angle between .*? \d+", re.I),
    "front": re.compile(rf"front direction of .*? \({NUM}, {NUM}, {NUM}\)", re.I),
    "left": re.compile(rf"left direction of .*? \({NUM}, {NUM}, {NUM}\)", re.I),
}


def digest_tree(root):
    h = {}
    for name in OUTPUTS:
        p = root / name
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file():
                h[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return h


def scenes(n, size=112, seed=0):
    return [sample_scene(np.random.default_rng([seed, i]), size) for i in range(n)]


def test_generation_is_deterministic_and_seeded(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, SMALL)
    generate(b, SMALL)
    generate(c, {**SMALL, "seed": 1})
    da, db, dc = digest_tree(a), digest_tree(b), digest_tree(c)
    assert da == db
    assert len(da) == 11  # 2 tars, 3 TSVs (with the canary), 2 annotation folders of a card and 2 parquet splits
    assert da[BENCH_3DSR] != dc[BENCH_3DSR]


def test_outputs_have_real_formats(tmp_path):
    counts = generate(tmp_path, SMALL)
    sft = pd.read_parquet(tmp_path / "SpatialReasonerTrain-SFT/all/train-00000-of-00001.parquet")
    assert len(sft) == 24 + 4 == counts["sft_train_rows"]
    qa = sft[sft["question"].notna()]
    assert set(qa["category"]) == set(SUBTYPES_3DSRBENCH)
    assert qa["answer_cot"].str.match(r"^<think>.*?</think>\s*<answer>[A-D]</answer>$", flags=re.S).all()
    assert (qa["answer_cot"].str.extract(r"<answer>([A-D])</answer>")[0] == qa["answer"]).all()
    conv = sft[sft["question"].isna()]
    assert len(conv) == 4 and conv["image_path"].str.startswith("synth/").all()
    rl = pd.read_parquet(tmp_path / "SpatialReasonerTrain-RL/all/train-00000-of-00001.parquet")
    assert list(rl.columns) == [
        "question",
        "A",
        "B",
        "C",
        "D",
        "answer",
        "category",
        "question_index",
        "image_filename",
    ]
    bench = pd.read_csv(tmp_path / BENCH_3DSR, sep="\t", keep_default_na=False)
    # every base question comes in all its rotations; the answer's text is the same in each
    for qid, group in bench.groupby(bench["qid"].str.replace(r"-\d$", "", regex=True)):
        n_opts = (group[["A", "B", "C", "D"]] != "").sum(axis=1).iloc[0]
        assert len(group) == n_opts, qid
        texts = {row[row["answer"]] for _, row in group.iterrows()}
        assert len(texts) == 1, qid
    assert bench["qid"].str.endswith("-flip").any()


@pytest.mark.parametrize("category", SUBTYPES_3DSRBENCH)
def test_reasoning_states_the_required_3d_facts(category):
    asked = 0
    for i, scene in enumerate(scenes(40)):
        q = ask(scene, category, np.random.default_rng(i))
        if q is None:
            continue
        asked += 1
        cot = q.answer_cot()
        found = Counter({kind: len(p.findall(cot)) for kind, p in PHRASES.items()})
        want = Counter(COT_KINDS[category])
        assert +found == want, (category, cot)
    assert asked >= 20


def test_closer_to_camera_agrees_with_depths():
    checked = 0
    for scene in scenes(60):
        for q in candidates(scene, "location_closer_to_camera"):
            a, b = (scene.by_name(n) for n in q.objects)
            da, db = math.dist(a.center, (0, 0, 0)), math.dist(b.center, (0, 0, 0))
            assert q.options[q.answer] == (a.name if da < db else b.name)
            assert abs(da - db) >= 0.5
            checked += 1
        for q in candidates(scene, "Depth"):
            a, b = (scene.by_name(n) for n in q.objects)
            assert q.options[q.answer] == (a.name if a.center[2] < b.center[2] else b.name)
    assert checked > 100


def test_height_and_distance_answers_agree_with_coordinates():
    for scene in scenes(30):
        for q in candidates(scene, "height_higher"):
            a, b = (scene.by_name(n) for n in q.objects)
            assert q.options[q.answer] == max((a, b), key=lambda o: o.center[1]).name
        for q in candidates(scene, "multi_object_closer_to"):
            ref, a, b = (scene.by_name(n) for n in q.objects)
            assert q.options[q.answer] == min((a, b), key=lambda o: math.dist(o.center, ref.center)).name


def facing(yaw):
    return (math.sin(yaw), math.cos(yaw))


def test_orientation_answers_on_a_hand_built_scene():
    cam = Camera(size=112, focal=120.0)
    # the cube faces the camera (yaw pi); the sphere is to the cube's own left (the camera's right) and in front of it
    cube = Object3D("cube", "red", (0.0, -1.1, 6.0), 1.0, math.pi)
    sphere = Object3D("sphere", "blue", (2.0, -1.1, 4.0), 1.0, math.pi / 2)
    scene = Scene(cam, (cube, sphere))
    on_left = BUILDERS["orientation_on_the_left"][1](scene, (sphere, cube))
    in_front = BUILDERS["orientation_in_front_of"][1](scene, (sphere, cube))
    assert YES_NO[on_left.answer] == "yes" and YES_NO[in_front.answer] == "yes"
    # the camera is exactly in front of the cube: left or right would be ambiguous, so it is not asked
    assert BUILDERS["orientation_viewpoint"][1](scene, (cube,)) is None
    view = BUILDERS["multi_object_viewpoint_towards_object"][1](scene, (cube, sphere))
    assert QUADRANTS[view.answer] == "front left"
    # mirrored, the sphere is on the cube's right
    m = mirror(scene)
    flipped = BUILDERS["orientation_on_the_left"][1](m, (m.by_name("blue sphere"), m.by_name("red cube")))
    assert YES_NO[flipped.answer] == "no"


def test_mirror_flips_left_right_answers():
    changed = 0
    for scene in scenes(30):
        m = mirror(scene)
        for q in candidates(scene, "orientation_on_the_left"):
            objs = tuple(m.by_name(n) for n in q.objects)
            mq = BUILDERS[q.category][1](m, objs)
            assert mq is not None and mq.answer != q.answer
            changed += 1
        # mirrored projections are the horizontal flip of the original ones
        for o, mo in zip(scene.objects, m.objects, strict=True):
            u, v = scene.camera.project(o.location)
            mu, mv = m.camera.project(mo.location)
            assert mu == pytest.approx(scene.camera.size - u) and mv == pytest.approx(v)
    assert changed > 10


def test_perspective_and_occlusion_in_the_picture():
    cam = Camera(size=112, focal=120.0)
    near = Object3D("cube", "red", (0.0, -1.1, 4.0), 1.0, math.pi / 2)
    far = Object3D("cube", "blue", (0.3, -0.6, 9.0), 2.0, math.pi / 2)
    for objects in ((near, far), (far, near)):  # drawing order must not depend on the list order
        img = np.asarray(render(Scene(cam, objects)), dtype=int)
        u, v = (int(x) for x in cam.project(near.location))
        r, g, b = img[v, u]
        assert r > 2 * b, "the nearer red cube must cover the farther blue one"
        fu, fv = (int(x) for x in cam.project(np.array([0.3, 0.2, 9.0])))  # the far cube's top part, unoccluded
        r, g, b = img[fv, fu]
        assert b > 2 * r
    # farther objects project smaller and closer to the horizon (higher in the picture)
    v_near = cam.project(np.array([0.0, -cam.height, 4.0]))[1]
    v_far = cam.project(np.array([0.0, -cam.height, 9.0]))[1]
    assert v_far < v_near


def test_scenes_have_distinct_colours_and_fit_the_view():
    for scene in scenes(50):
        colours = [o.colour for o in scene.objects]
        assert len(set(colours)) == len(colours) and set(colours) <= set(COLOURS)
        for o in scene.objects:
            u, _ = scene.camera.project(o.location)
            assert 0 < u < scene.camera.size
            assert o.bottom >= -scene.camera.height - 1e-9


def test_unknown_config_keys_are_errors():
    with pytest.raises(ConfigError, match=r"synthetic: unknown key 'scenes'"):
        resolve_config({"scenes": 3})
    with pytest.raises(ConfigError, match=r"synthetic.sft: unknown keys \['rows'\]"):
        resolve_config({"sft": {"rows": 3}})
    with pytest.raises(ConfigError, match=r"synthetic.objects: expected \[min, max\]"):
        resolve_config({"objects": [1, 2]})


def test_cot_decimals_round_lengths_but_keep_directions_and_cosines(tmp_path):
    generate(tmp_path / "two", SMALL)
    generate(tmp_path / "zero", {**SMALL, "cot_decimals": 0})
    sft = "SpatialReasonerTrain-SFT/all/train-00000-of-00001.parquet"
    two = pd.read_parquet(tmp_path / "two" / sft).dropna(subset=["answer_cot"])
    zero = pd.read_parquet(tmp_path / "zero" / sft).dropna(subset=["answer_cot"])
    assert (two["answer"].tolist(), two["question"].tolist()) == (zero["answer"].tolist(), zero["question"].tolist())
    for cot2, cot0 in zip(two["answer_cot"], zero["answer_cot"], strict=True):
        for (x2, y2, z2), (x0, y0, z0) in zip(
            re.findall(r"3D location of .*? is \((\S+), (\S+), (\S+)\)", cot2),
            re.findall(r"3D location of .*? is \((\S+), (\S+), (\S+)\)", cot0),
            strict=True,
        ):
            assert "." not in x0 + y0 + z0
            assert all(abs(float(a) - float(b)) <= 0.51 for a, b in ((x2, x0), (y2, y0), (z2, z0)))
        # unit directions and cosines keep two decimals
        assert re.findall(r"(?:direction of [^.]*? is \(.*?\)|cosine similarity .*? is -?\d+\.\d\d)", cot2) == (
            re.findall(r"(?:direction of [^.]*? is \(.*?\)|cosine similarity .*? is -?\d+\.\d\d)", cot0)
        )
    assert len("".join(zero["answer_cot"])) < len("".join(two["answer_cot"]))
    with pytest.raises(ConfigError, match=r"synthetic.cot_decimals: expected an integer from 0 to 4"):
        resolve_config({"cot_decimals": 7})


def test_cli_reports_bad_json(tmp_path, capsys):
    from spatialreasoner.cli import main

    assert main(["synthesize", "--out", str(tmp_path), "--config", "{nope"]) == 2
    assert "--config is not valid JSON" in capsys.readouterr().err


def test_sft_categories_choose_the_question_kinds_of_the_sft_rows(tmp_path):
    import pandas as pd

    cats = ["location_closer_to_camera", "Depth", "Distance"]
    generate(tmp_path, {**SMALL, "sft": {**SMALL["sft"], "categories": cats}})
    for split in ("train", "val"):
        rows = pd.read_parquet(next((tmp_path / "SpatialReasonerTrain-SFT").rglob(f"{split}*.parquet")))
        qa = rows[rows["answer_cot"].notna()] if "answer_cot" in rows else rows
        assert set(qa["category"]) == set(cats), (split, set(qa["category"]))
    rl = pd.read_parquet(next((tmp_path / "SpatialReasonerTrain-RL").rglob("train*.parquet")))
    assert set(rl["category"]) <= set(SUBTYPES_3DSRBENCH)
    for bad in (["Depth", "Depht"], [], ["Depth", "Depth"]):
        with pytest.raises(ConfigError, match=r"synthetic.sft.categories: expected distinct question categories"):
            resolve_config({"sft": {"categories": bad}})
