"""The HTML report: tables, figures, example predictions with images and verdicts, data statistics, versions, config."""

import base64
import io
import re

import pandas as pd
import pytest
from PIL import Image

from spatialreasoner.errors import DataError
from spatialreasoner.evaluate.tables import write_tables
from spatialreasoner.report import pick_examples, reasoning_of, write_report

from .test_tables import MODELS, write_case


def _png(path, color):
    Image.new("RGB", (64, 48), color).save(path, format="PNG")
    return path


@pytest.fixture
def workflow_outputs(tmp_path):
    return make_workflow_outputs(tmp_path)


def make_workflow_outputs(tmp_path):
    """Tables, a figure, predictions, scores and a data table as the workflow writes them, under ``tmp_path``."""
    # benchmark images: a real PNG per row, so that thumbnails must be decoded and re-encoded
    buf = io.BytesIO()
    Image.new("RGB", (56, 56), (10, 200, 10)).save(buf, format="PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    scores, benchmarks = write_case(tmp_path, MODELS)
    for tsv in benchmarks.values():
        pd.read_csv(tsv, sep="\t").assign(image=image).to_csv(tsv, sep="\t", index=False)
    written = write_tables(scores, benchmarks, tmp_path / "tables")
    figure = _png(tmp_path / "figure.png", (200, 0, 0))
    data = tmp_path / "sft.parquet"
    pd.DataFrame(
        {"kind": ["qa", "qa", "conversation"], "category": ["height_higher", "Depth", None], "image": ["a", "b", "a"]}
    ).to_parquet(data)
    examples = {
        bench: {m: (tmp_path / "pred" / m / f"{bench}.parquet", scores[bench][m] / "hits.csv") for m in MODELS}
        for bench in benchmarks
    }
    return {"written": written, "figure": figure, "benchmarks": benchmarks, "examples": examples, "data": data}


def _report(tmp_path, outputs, **kwargs):
    w = outputs["written"]
    return write_report(
        tmp_path / "report" / "report.html",
        [w["3DSRBench"], w["CV-Bench-3D"]],
        w["summary"],
        [outputs["figure"]],
        outputs["benchmarks"],
        outputs["examples"],
        {"sft": outputs["data"]},
        {"seed": 42, "sources": {"x": {"url": "https://user:s3cr3t@example.org/f.tar"}}},
        **kwargs,
    )


def test_report_shows_every_part(tmp_path, workflow_outputs):
    out = _report(tmp_path, workflow_outputs, per_category=1, seed=0)
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # tables and the summary, with intervals
    assert "chance (expected)" in page and "overall (pooled) ci_low" in page and "Paired differences" in page
    # the figure is embedded as the same bytes
    assert base64.b64encode(workflow_outputs["figure"].read_bytes()).decode() in page
    # one example per category: 3DSRBench has 3 categories, CV-Bench-3D 2; each shows both models
    thumbs = re.findall(r'<img class="thumb" src="data:image/png;base64,([^"]+)"', page)
    assert len(thumbs) == 3 + 2
    with Image.open(io.BytesIO(base64.b64decode(thumbs[0]))) as img:
        assert img.size == (56, 56) and img.getpixel((5, 5)) == (10, 200, 10)
    assert page.count('<span class="right">') + page.count('<span class="wrong">') == 2 * (3 + 2)
    # the verdicts are the hits: "base" answers A everywhere, so it is wrong on q3 (answer C) of location_above
    q3 = page[page.index("(index 106)") :].split("</tr>")
    assert "<td>base</td>" in q3[1] and '<span class="wrong">' in q3[1]
    assert "no letter here" in q3[0] and '<span class="wrong">' in q3[0]  # ours: the unmatched reply, extracted Z
    # data statistics, versions, configuration without the credential
    assert "training table sft (sft.parquet): 3 rows, 2 images" in page
    assert "benchmark 3DSRBench: 10 rows, 5 circular groups" in page
    assert "<td>pandas</td><td>" + pd.__version__ + "</td>" in page
    assert "s3cr3t" not in page and "example.org" in page


def test_examples_are_chosen_by_seed(tmp_path, workflow_outputs):
    rows = pd.DataFrame({"index": [str(i) for i in range(40)], "category": ["a"] * 20 + ["b"] * 20})
    picked = pick_examples(rows, 3, seed=1)
    assert picked == pick_examples(rows, 3, seed=1) and picked != pick_examples(rows, 3, seed=2)
    assert sum(int(i) < 20 for i in picked) == 3 and len(picked) == 6
    a = _report(tmp_path / "a", workflow_outputs, seed=5).read_text()
    b = _report(tmp_path / "b", workflow_outputs, seed=5).read_text()
    assert a == b
    assert reasoning_of("<think>The 3D location of the red cube is (1.0, 0.0, 5.0).</think><answer>A</answer>") == (
        "The 3D location of the red cube is (1.0, 0.0, 5.0)."
    )


def test_report_names_a_damaged_input_and_writes_nothing(tmp_path, workflow_outputs):
    hits = workflow_outputs["examples"]["CV-Bench-3D"]["base"][1]
    hits.write_text(hits.read_text()[:-10])
    with pytest.raises(DataError, match=rf"{hits}: "):
        _report(tmp_path, workflow_outputs)
    workflow_outputs["figure"].unlink()
    with pytest.raises(DataError, match=r"figure\.png: missing"):
        _report(tmp_path, workflow_outputs)
    assert not (tmp_path / "report").exists()
