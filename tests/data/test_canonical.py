"""canonicalize: SFT mix and RL tables into the canonical schema; every bad input is an error naming it."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from spatialreasoner.data.canonical import canonical_columns, canonicalize
from spatialreasoner.errors import DataError


def qa_row(i, **kw):
    row = {
        "question": f"Which object is closer to the camera, the red cube or the blue sphere? ({i})",
        "A": "red cube",
        "B": "blue sphere",
        "C": None,
        "D": None,
        "answer": "B",
        "answer_cot": "<think>The 3D location of the red cube is (0.10, 0.20, 3.00).</think>\n<answer>B</answer>",
        "image_filename": f"img{i}.jpg",
        "category": "location_closer_to_camera",
    }
    row.update(kw)
    return row


def conv_row(i, **kw):
    row = {
        "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A cube."}],
        "image_path": f"coco/{i}.jpg",
    }
    row.update(kw)
    return row


@pytest.fixture
def layout(tmp_path):
    """Image roots with img0..img3.jpg (openimages) and coco/0..1.jpg (llava)."""
    oi = tmp_path / "images" / "openimages" / "openimages"
    ll = tmp_path / "images" / "llava" / "llava" / "coco"
    oi.mkdir(parents=True)
    ll.mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (32, 32), (i * 40, 10, 10)).save(oi / f"img{i}.jpg")
    for i in range(2):
        Image.new("RGB", (32, 32), (10, i * 40, 10)).save(ll / f"{i}.jpg")
    roots = {"image_filename": str(oi), "image_path": str(ll.parent)}
    return tmp_path, roots


def write_split(folder, rows, name="train-00000-of-00001.parquet"):
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(folder / name)
    return folder.parent


def test_sft_mix(layout):
    tmp, roots = layout
    empty_qa = dict.fromkeys(qa_row(0))
    rows = [qa_row(i, extra_note=f"n{i}", conversations=None, image_path=None) for i in range(3)]
    rows += [{**empty_qa, **conv_row(i), "extra_note": None} for i in range(2)]
    ann = write_split(tmp / "SFT" / "all", rows)
    out = tmp / "sft.parquet"
    counts = canonicalize("sft", ann, roots, out)
    assert counts == {"rows": 5, "qa": 3, "conversation": 2, "dropped_bad_image": 0, "images_checked": 5}
    table = pq.read_table(out)
    assert table.schema.metadata[b"spatialreasoner.canonical"] == b"1"
    assert table.column_names[: len(canonical_columns("sft"))] == canonical_columns("sft")
    assert "extra_note" in table.column_names  # unknown extras are kept
    df = table.to_pandas()
    assert list(df["kind"]) == ["qa"] * 3 + ["conversation"] * 2
    assert df.loc[0, "image"] == str((tmp / "images/openimages/openimages/img0.jpg").resolve())
    assert df.loc[4, "image"].endswith("images/llava/llava/coco/1.jpg")
    assert df.loc[3, "conversations"][0]["from"] == "human"
    assert df.loc[0, "answer"] == "B" and pd.isna(df.loc[0, "C"])


def test_rl_table_and_jsonl(layout):
    tmp, roots = layout
    ann = tmp / "RL"
    ann.mkdir()
    rows = [{k: v for k, v in qa_row(i, question_index=100 + i).items() if k != "answer_cot"} for i in range(4)]
    (ann / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (ann / "val.jsonl").write_text(json.dumps(rows[0]))
    out = tmp / "rl.parquet"
    assert canonicalize("rl", ann, roots, out)["rows"] == 4
    df = pd.read_parquet(out)
    assert list(df["question_index"]) == [100, 101, 102, 103]
    assert list(df.columns[: len(canonical_columns("rl"))]) == canonical_columns("rl")


def test_missing_required_columns_are_named(layout):
    tmp, roots = layout
    rows = [{k: v for k, v in qa_row(0).items() if k not in ("answer_cot", "category")}]
    ann = write_split(tmp / "SFT" / "all", rows)
    with pytest.raises(DataError, match=r"missing required columns for sft 3D QA rows: answer_cot$"):
        canonicalize("sft", ann, roots, tmp / "o.parquet")
    rows = [{k: v for k, v in qa_row(0).items() if k != "answer_cot"}]
    ann = write_split(tmp / "RL" / "all", rows)
    with pytest.raises(DataError, match=r"missing required columns for rl 3D QA rows: question_index$"):
        canonicalize("rl", ann, roots, tmp / "o.parquet")
    ann = write_split(tmp / "X" / "all", [{"foo": 1}])
    with pytest.raises(DataError, match=r"missing required columns: question \(3D QA rows\) or conversations"):
        canonicalize("sft", ann, roots, tmp / "o.parquet")
    assert not (tmp / "o.parquet").exists()


def test_missing_conversation_image_column(layout):
    tmp, roots = layout
    ann = write_split(tmp / "SFT" / "all", [{"conversations": conv_row(0)["conversations"]}])
    with pytest.raises(DataError, match=r"missing required columns for conversation rows: image_path$"):
        canonicalize("sft", ann, roots, tmp / "o.parquet")


def test_answer_must_name_an_option(layout):
    tmp, roots = layout
    rl = [{k: v for k, v in qa_row(i, question_index=i).items() if k != "answer_cot"} for i in range(2)]
    rl[1]["answer"] = "C"
    ann = write_split(tmp / "RL" / "all", rl)
    with pytest.raises(DataError, match=r"row 1: answer 'C' is not one of its options \['A', 'B'\]"):
        canonicalize("rl", ann, roots, tmp / "o.parquet")
    bad_cot = qa_row(1, answer_cot="<think>far</think><answer>C</answer>")
    del bad_cot["answer"]
    ann = write_split(tmp / "SFT" / "all", [qa_row(0), bad_cot])
    with pytest.raises(DataError, match=r"row 1: answer_cot's <answer>C</answer> names none of the options"):
        canonicalize("sft", ann, roots, tmp / "o.parquet")
    assert not (tmp / "o.parquet").exists()


def test_sft_open_question_without_options(layout):
    tmp, roots = layout
    cot = "<think>It is there.</think><answer>(0.10, 0.20, 3.00)</answer>"
    ann = write_split(tmp / "SFT" / "all", [qa_row(0, A=None, B=None, answer="(0.10, 0.20, 3.00)", answer_cot=cot)])
    canonicalize("sft", ann, roots, tmp / "o.parquet")
    df = pd.read_parquet(tmp / "o.parquet")
    assert df.loc[0, "answer"] == "(0.10, 0.20, 3.00)" and pd.isna(df.loc[0, "A"])
    rl_rows = [{k: v for k, v in qa_row(0, A=None, B=None, question_index=1).items() if k != "answer_cot"}]
    ann = write_split(tmp / "RL" / "all", rl_rows)
    with pytest.raises(DataError, match=r"row 0: answer 'B' is not one of its options \[\]"):
        canonicalize("rl", ann, roots, tmp / "r.parquet")


def test_row_without_question_or_conversation(layout):
    tmp, roots = layout
    rows = [qa_row(0), {**qa_row(1), "question": None, "conversations": None, "image_path": None}]
    rows[0] |= {"conversations": None, "image_path": None}
    ann = write_split(tmp / "SFT" / "all", rows)
    with pytest.raises(DataError, match=r"row 1: neither a question nor conversations"):
        canonicalize("sft", ann, roots, tmp / "o.parquet")


def test_bad_images_error_lists_count_and_first(layout):
    tmp, roots = layout
    (tmp / "images/openimages/openimages/img2.jpg").write_bytes(b"not a jpeg")
    rows = [qa_row(i) for i in range(4)] + [qa_row(9), qa_row(9)]
    ann = write_split(tmp / "SFT" / "all", rows)
    with pytest.raises(DataError) as err:
        canonicalize("sft", ann, roots, tmp / "o.parquet")
    msg = str(err.value)
    assert "3 of 6 rows have a missing or undecodable image (2 distinct files)" in msg
    assert "row 2: " in msg and "img2.jpg does not decode" in msg
    assert "row 4: " in msg and "img9.jpg missing" in msg
    assert not (tmp / "o.parquet").exists()


def test_bad_images_dropped_and_counted(layout, caplog):
    tmp, roots = layout
    rows = [qa_row(i) for i in range(4)] + [qa_row(9)]
    ann = write_split(tmp / "SFT" / "all", rows)
    counts = canonicalize("sft", ann, roots, tmp / "o.parquet", on_bad_image="drop")
    assert counts["rows"] == 4 and counts["dropped_bad_image"] == 1
    assert "dropped 1 rows with a missing or undecodable image" in caplog.text
    assert list(pd.read_parquet(tmp / "o.parquet")["source_row"]) == [0, 1, 2, 3]


def test_image_path_may_not_escape_its_root(layout):
    tmp, roots = layout
    ann = write_split(tmp / "SFT" / "all", [qa_row(0, image_filename="../../llava/llava/coco/0.jpg")])
    with pytest.raises(DataError, match=r"row 0: image_filename '../../llava/llava/coco/0.jpg' points outside"):
        canonicalize("sft", ann, roots, tmp / "o.parquet")


def test_no_files_for_split(layout):
    tmp, roots = layout
    ann = write_split(tmp / "SFT" / "all", [qa_row(0)], name="validation-0.parquet")
    with pytest.raises(DataError, match=r"no files for split 'train'.*found: all/validation-0.parquet"):
        canonicalize("sft", ann, roots, tmp / "o.parquet")


def test_missing_image_root(layout):
    tmp, roots = layout
    ann = write_split(tmp / "SFT" / "all", [qa_row(0)])
    with pytest.raises(DataError, match=r"image root .*nowhere for column 'image_filename' does not exist"):
        canonicalize("sft", ann, {"image_filename": str(tmp / "nowhere")}, tmp / "o.parquet")
