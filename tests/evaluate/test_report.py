"""The HTML report: Table 1 first, the wide tables folded, figures, example predictions with images and verdicts, data
statistics, versions, config."""

import base64
import html
import io
import re
from html.parser import HTMLParser

import pandas as pd
import PIL
import pytest
from PIL import Image

from spatialreasoner.errors import DataError
from spatialreasoner.evaluate.tables import CANARY_NOTE, CVB_MEAN, CVB_POOLED, write_tables
from spatialreasoner.report import markdown_html, pick_examples, reasoning_of, software_versions, write_report

from .test_tables import MODELS, write_case

#: The report's models: those of the table tests, and one whose reasoning is a single 480-character word (replies
#: without spaces must wrap inside their cell).
LONG_WORD = "Step" * 120
REPORT_MODELS = MODELS | {"verbose": lambda f: [f"<think>{LONG_WORD}</think><answer>{a}</answer>" for a in f["answer"]]}
PAPER = {
    "3DSRBench": {"PaperOurs": {"overall": 60.3, "height": 52.5, "location": 75.2}},
    "CV-Bench-3D": {"PaperOurs": {"overall": 70.0}},  # CV-Bench-3D's published overall is the pooled one
}
PAPER_NAMES = {"ours": "PaperOurs", "base": None, "verbose": None}


def _png(path, color):
    Image.new("RGB", (64, 48), color).save(path, format="PNG")
    return path


@pytest.fixture
def workflow_outputs(tmp_path):
    """Outputs of the test's own, for a test that damages them."""
    return make_workflow_outputs(tmp_path)


@pytest.fixture(scope="module")
def shared_outputs(tmp_path_factory):
    """Outputs built once for the tests that only read them."""
    return make_workflow_outputs(tmp_path_factory.mktemp("workflow-outputs"))


def make_workflow_outputs(tmp_path):
    """Tables, a figure, predictions, scores and a data table as the workflow writes them, under ``tmp_path``."""
    # benchmark images: a real PNG per row, so that thumbnails must be decoded and re-encoded
    buf = io.BytesIO()
    Image.new("RGB", (56, 56), (10, 200, 10)).save(buf, format="PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    scores, benchmarks = write_case(tmp_path, REPORT_MODELS)
    for tsv in benchmarks.values():
        pd.read_csv(tsv, sep="\t").assign(image=image).to_csv(tsv, sep="\t", index=False)
    written = write_tables(scores, benchmarks, tmp_path / "tables", PAPER, PAPER_NAMES, [("ours", "base")])
    figure = _png(tmp_path / "figure.png", (200, 0, 0))
    data = tmp_path / "sft.parquet"
    pd.DataFrame(
        {"kind": ["qa", "qa", "conversation"], "category": ["height_higher", "Depth", None], "image": ["a", "b", "a"]}
    ).to_parquet(data)
    examples = {
        bench: {m: (tmp_path / "pred" / m / f"{bench}.parquet", scores[bench][m] / "hits.csv") for m in REPORT_MODELS}
        for bench in benchmarks
    }
    return {"written": written, "figure": figure, "benchmarks": benchmarks, "examples": examples, "data": data}


def write_canary_table(path):
    """A further benchmark's table (the canary's) in the shape every table has (model, counts, accuracy with its
    interval, protocol)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "model": ["ours", "base", "chance (expected)"],
            "rows": [48, 48, 48],
            "unmatched (%)": [0.0, 2.1, None],
            "overall": [91.7, 50.0, 50.0],
            "overall ci_low": [83.3, 35.4, 50.0],
            "overall ci_high": [97.9, 64.6, 50.0],
            "protocol": ["answer tag", "answer tag", "–"],
            "judged rows": [0, 0, 0],
        }
    ).to_csv(path, index=False)
    return path


def _report(tmp_path, outputs, tables=None, **kwargs):
    w = outputs["written"]
    return write_report(
        tmp_path / "report" / "report.html",
        tables if tables is not None else [w["3DSRBench"], w["3DSRBench_per_row"], w["CV-Bench-3D"]],
        w["summary"],
        [outputs["figure"]],
        outputs["benchmarks"],
        outputs["examples"],
        {"sft": outputs["data"]},
        {"seed": 42, "sources": {"x": {"url": "https://user:s3cr3t@example.org/f.tar"}}},
        paper=PAPER,
        paper_names=PAPER_NAMES,
        **kwargs,
    )


class _Tables(HTMLParser):
    """Every table of a page: its classes, the section (``<h2>`` id) it is in, whether it sits inside <details>, and
    its rows of cell texts."""

    def __init__(self):
        super().__init__()
        self.tables, self._cell, self._details, self._section = [], None, 0, None

    def handle_starttag(self, tag, attrs):
        if tag == "h2":
            self._section = dict(attrs).get("id")
        elif tag == "details":
            self._details += 1
        elif tag == "table":
            classes = (dict(attrs).get("class") or "").split()
            self.tables.append({"classes": classes, "folded": self._details > 0, "section": self._section, "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th") and self.tables:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "details":
            self._details -= 1
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def tables_of(page: str) -> list[dict]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


def estimate_text(row, column, paper=None) -> str:
    """A cell of the first screen as text: value [low, high], then the paper's number where it gives one."""
    text = f"{row[column]:.1f} [{row[f'{column} ci_low']:.1f}, {row[f'{column} ci_high']:.1f}]"
    return text + (f"paper {paper:.1f}" if paper is not None else "")


def test_report_opens_with_table_1s_layout(tmp_path, shared_outputs):
    page = _report(tmp_path, shared_outputs).read_text()
    tables = tables_of(page)
    first, second = tables[:2]
    assert "headline" in first["classes"] and "headline" in second["classes"]
    assert not first["folded"] and not second["folded"]
    assert first["rows"][0] == ["model", "overall", "height", "location", "orientation", "multi_object"]
    assert second["rows"][0] == ["model", CVB_POOLED, CVB_MEAN, "Depth", "Distance"]
    for table, bench in ((first, "3DSRBench"), (second, "CV-Bench-3D")):
        csv = pd.read_csv(shared_outputs["written"][bench]).set_index("model")
        header = table["rows"][0]
        assert [r[0] for r in table["rows"][1:]] == csv.index.tolist()  # every model, then chance
        published = {CVB_POOLED if c == "overall" and bench == "CV-Bench-3D" else c: v for c, v in
                     PAPER[bench]["PaperOurs"].items()}  # fmt: skip
        for cells in table["rows"][1:]:
            model = cells[0]
            for column, cell in zip(header[1:], cells[1:], strict=True):
                if pd.isna(csv.loc[model, column]):  # no question of that type: no number, no interval
                    assert cell == "–", (bench, model, column)
                    continue
                paper = published.get(column) if model == "ours" else None
                assert cell == estimate_text(csv.loc[model], column, paper), (bench, model, column)
    assert "The paper's numbers beside a row are its paper model's: ours → PaperOurs" in html.unescape(page)
    ours = first["rows"][1]  # the hand-computed circular 3/5 beside the published 60.3
    assert ours[0] == "ours" and ours[1].startswith("60.0 [") and ours[1].endswith("]paper 60.3")
    # every other table of the results (all subtypes, per row, the summary's paired differences) is folded below
    results = [t for t in tables if t["section"] == "results"]
    assert results[:2] == [first, second] and len(results) > 2 and all(t["folded"] for t in results[2:])
    folded = page[page.index("<details") : page.index('<h2 id="figures">')]
    assert "multi_object_parallel" in folded and "multi_object_parallel" not in page[: page.index("<details")]
    assert "Paired differences" in folded and "3DSRBench per row" in folded
    assert "<thead>" in folded and "<code>chance (expected)</code>" in folded  # the summary, by markdown-it


def test_a_further_benchmark_table_joins_the_first_screen_only_when_given(tmp_path, shared_outputs):
    canary = write_canary_table(tmp_path / "tables" / "Canary.csv")
    w = shared_outputs["written"]
    page = _report(tmp_path, shared_outputs, tables=[canary, w["CV-Bench-3D"], w["3DSRBench"]]).read_text()
    headline = [t for t in tables_of(page) if "headline" in t["classes"]]
    # 3DSRBench and CV-Bench-3D first, whatever the order given, then the further table with every accuracy
    assert [t["rows"][0][1] for t in headline] == ["overall", CVB_POOLED, "overall"]
    assert headline[2]["rows"][0] == ["model", "overall"]
    assert headline[2]["rows"][1] == ["ours", "91.7 [83.3, 97.9]"]
    assert page.index('id="headline-canary"') < page.index("<details")
    # the canary is a memorisation check, and says so where it is shown
    assert page.index(CANARY_NOTE.split("; ")[1]) < page.index("<details")
    without = _report(tmp_path / "b", shared_outputs).read_text()
    assert "Canary" not in without and len([t for t in tables_of(without) if "headline" in t["classes"]]) == 2


def test_software_names_what_is_not_installed():
    versions = software_versions(("pandas", "PIL", "no-such-package-here"))
    assert versions["pandas"] == pd.__version__
    assert versions["PIL"] == f"{PIL.__version__} (pillow)"  # a module installed under another distribution name
    assert versions["no-such-package-here"] == "not installed"


def test_markdown_is_rendered_and_raw_html_in_it_escaped():
    html = markdown_html("# Title\n\n| a | b |\n|---|---|\n| `x` | <script>alert(1)</script> |\n")
    assert "<h3>Title</h3>" in html and "<th>a</th>" in html and "<td><code>x</code></td>" in html
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_report_shows_every_part(tmp_path, shared_outputs):
    out = _report(tmp_path, shared_outputs, per_category=1, seed=0)
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # the figure is embedded as the same bytes
    assert base64.b64encode(shared_outputs["figure"].read_bytes()).decode() in page
    # one example per category: 3DSRBench has 3 categories, CV-Bench-3D 2; each shows every model
    thumbs = re.findall(r'<img class="thumb" src="data:image/png;base64,([^"]+)"', page)
    assert len(thumbs) == 3 + 2
    with Image.open(io.BytesIO(base64.b64decode(thumbs[0]))) as img:
        assert img.size == (56, 56) and img.getpixel((5, 5)) == (10, 200, 10)
    n_models = len(REPORT_MODELS)
    assert page.count('<span class="right">') + page.count('<span class="wrong">') == n_models * (3 + 2)
    # the verdicts are the hits: "base" answers A everywhere, so it is wrong on q3 (answer C) of location_above
    q3 = page[page.index("(index 106)") :].split("</tr>")
    assert "<td>base</td>" in q3[1] and '<span class="wrong">' in q3[1]
    assert "no letter here" in q3[0] and '<span class="wrong">' in q3[0]  # ours: the unmatched reply, extracted Z
    assert LONG_WORD in q3[2] and '<span class="right">' in q3[2]
    # data statistics, versions, configuration without the credential
    assert "training table sft (sft.parquet): 3 rows, 2 images" in page
    assert "benchmark 3DSRBench: 10 rows, 5 circular groups" in page
    software = next(t for t in tables_of(page) if t["rows"][0] == ["package", "version"])
    assert ["pandas", pd.__version__] in software["rows"]
    assert "s3cr3t" not in page and "example.org" in page


def test_examples_are_chosen_by_seed(tmp_path, shared_outputs):
    rows = pd.DataFrame({"index": [str(i) for i in range(40)], "category": ["a"] * 20 + ["b"] * 20})
    picked = pick_examples(rows, 3, seed=1)
    assert picked == pick_examples(rows, 3, seed=1) and picked != pick_examples(rows, 3, seed=2)
    assert sum(int(i) < 20 for i in picked) == 3 and len(picked) == 6
    a = _report(tmp_path / "a", shared_outputs, seed=5).read_text()
    b = _report(tmp_path / "b", shared_outputs, seed=5).read_text()
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
