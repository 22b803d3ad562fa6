"""The HTML report in a real browser: headless Chromium loads it in a 1,400 x 900 window, and every table and image
must be displayed, the first screen must be Table 1, and no cell may run over its column.

A script added to a copy of the page reports, once the page has loaded, the first table's header and place and how
many lines its cells take, then opens every folded part and reports how many images decoded (a broken data URI gives
an image of width 0), how many tables were laid out with rows, which cells hold content wider than their column and
whether any table reaches past the window; Chromium's `--dump-dom` prints it. A screenshot of the first screen is kept
beside the test's files for a person to look at.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from .test_report import _report, make_workflow_outputs, tables_of, write_canary_table

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
# Without these, Chromium tries to reach Google's services at start (this machine has no such network).
QUIET = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
    "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
)  # fmt: skip

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)"
)

#: The window the checks measure in: a laptop screen's width, and the height of what shows before any scrolling.
WIDTH, HEIGHT = 1400, 900
#: The first screen in the paper's Table 1 layout.
TABLE_1_HEADER = ["model", "overall", "height", "location", "orientation", "multi_object"]

PROBE = """<script>
window.addEventListener("load", () => {
  const width = window.innerWidth, height = window.innerHeight;
  const box = (el) => {
    const r = el.getBoundingClientRect();
    return {left: r.left, right: r.right, top: r.top + window.scrollY, bottom: r.bottom + window.scrollY};
  };
  // lines of text in a cell: its content height over its line height
  const lines = (cell) => {
    const cs = getComputedStyle(cell);
    const inner = cell.clientHeight - parseFloat(cs.paddingTop) - parseFloat(cs.paddingBottom);
    return inner / parseFloat(cs.lineHeight);
  };
  const first = document.querySelector("table");
  const headline = [...document.querySelectorAll("table.headline td")];
  const firstScreen = {
    header: [...first.querySelectorAll("thead th")].map((th) => th.textContent.trim()),
    box: box(first),
    headlineCells: headline.length,
    maxLines: Math.max(...headline.map(lines)),
  };
  // open every folded part, so that its tables are measured too
  const details = [...document.querySelectorAll("details")];
  const folded = details.filter((d) => !d.open).length;
  details.forEach((d) => { d.open = true; });
  const imgs = [...document.images];
  const tables = [...document.querySelectorAll("table")];
  const cells = [...document.querySelectorAll("td, th")];
  // the box a table is seen in: itself or the nearest box that scrolls sideways
  const viewBox = (el) => {
    for (let p = el; p; p = p.parentElement) {
      const o = getComputedStyle(p).overflowX;
      if (o === "auto" || o === "scroll") return p;
    }
    return el;
  };
  const out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify({
    viewport: [width, height],
    pageWidth: document.documentElement.scrollWidth,
    images: imgs.length,
    decoded: imgs.filter((i) => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0).length,
    tables: tables.length,
    shown: tables.filter((t) => t.getBoundingClientRect().height > 0 && t.rows.length > 1).length,
    folded: folded,
    firstScreen: firstScreen,
    cells: cells.length,
    overflowing: cells.filter((c) => c.scrollWidth > c.clientWidth + 1).map((c) => ({
      text: c.textContent.trim().slice(0, 60), content: c.scrollWidth, column: c.clientWidth,
    })),
    beyondWindow: tables.filter((t) => viewBox(t).getBoundingClientRect().right > width + 0.5).length,
  });
  document.body.appendChild(out);
});
</script>"""


def browse(page: Path, workdir: Path, width: int = WIDTH) -> dict:
    """What Chromium made of ``page`` in a ``width`` x 900 window: counts of images and tables and which of them it
    displayed, the first table's header and place, and every cell whose content runs over its column."""
    probe = workdir / "probe.html"
    html = page.read_text()
    assert "</body>" in html, "the report has no </body>"
    probe.write_text(html.replace("</body>", PROBE + "</body>", 1))
    profile = workdir / "chromium-profile"
    cmd = [CHROMIUM, *QUIET, f"--user-data-dir={profile}", f"--window-size={width},{HEIGHT}",
           "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the page's load handler never ran: {proc.stdout[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def screenshot(page: Path, out: Path, workdir: Path) -> Path:
    """The report's first screen (the 1,400 x 900 window) as a PNG."""
    cmd = [CHROMIUM, *QUIET, f"--user-data-dir={workdir / 'chromium-shot'}", f"--window-size={WIDTH},{HEIGHT}",
           "--virtual-time-budget=10000", f"--screenshot={out}", page.as_uri()]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> Path:
    """The report of the shared workflow outputs (with a further benchmark table and a reply that is one long
    word), built once; tests that change it work on a copy."""
    tmp = tmp_path_factory.mktemp("browser-report")
    outputs = make_workflow_outputs(tmp)
    w = outputs["written"]
    tables = [
        w["3DSRBench"],
        w["3DSRBench_per_row"],
        w["CV-Bench-3D"],
        write_canary_table(tmp / "tables" / "Canary.csv"),
    ]
    return _report(tmp, outputs, tables=tables, per_category=1, seed=0)


@pytest.fixture(scope="module")
def seen(report_page, tmp_path_factory) -> dict:
    return browse(report_page, tmp_path_factory.mktemp("browse"))


def test_chromium_shows_every_table_and_image_of_the_report(report_page, seen, tmp_path):
    html = report_page.read_text()
    # Chromium's window keeps room for its (invisible) bars: the page sees the full width, a little less height
    assert seen["viewport"][0] == WIDTH and 0.75 * HEIGHT < seen["viewport"][1] <= HEIGHT, seen["viewport"]
    assert seen["images"] == html.count("<img ") and seen["images"] >= 6  # the figure and 5 example thumbnails
    assert seen["decoded"] == seen["images"], seen
    assert seen["tables"] == html.count("<table") and seen["shown"] == seen["tables"], seen
    assert seen["folded"] == html.count("<details") >= 4  # the summary, 3DSRBench in full, per row, CV-Bench-3D, ...
    with Image.open(screenshot(report_page, tmp_path / "report.png", tmp_path)) as shot:
        assert shot.size == (WIDTH, HEIGHT)
        colours = shot.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 20, "the screenshot is (nearly) blank"


def test_the_first_screen_is_table_1(report_page, seen):
    first = seen["firstScreen"]
    assert first["header"] == TABLE_1_HEADER
    # the whole table inside the first screen, its right side not cut off
    width, height = seen["viewport"]
    assert first["box"]["left"] >= 0 and first["box"]["right"] <= width, first["box"]
    assert first["box"]["bottom"] <= height, first["box"]
    # every value with its interval and the paper's number on one line (3DSRBench, CV-Bench-3D, Canary)
    headline = [t for t in tables_of(report_page.read_text()) if "headline" in t["classes"]]
    assert len(headline) == 3 and first["headlineCells"] == sum(len(r) for t in headline for r in t["rows"][1:])
    assert first["maxLines"] < 1.5, first


def test_no_cell_runs_over_its_column_at_1400_px(seen):
    assert seen["cells"] > 200
    assert seen["overflowing"] == [], seen["overflowing"][:5]
    # wide tables scroll inside their own box; the page itself is no wider than the window
    assert seen["beyondWindow"] == 0 and seen["pageWidth"] <= WIDTH, seen


def test_a_reply_that_cannot_wrap_is_seen_running_over(report_page, tmp_path):
    # The check itself can fail: without `overflow-wrap: anywhere` the 480-character word of the "verbose" model's
    # reasoning cannot break, and the browser sees it run over its column or push the page past the window.
    html = report_page.read_text()
    assert html.count("overflow-wrap: anywhere") == 2
    page = tmp_path / "report.html"
    page.write_text(html.replace("overflow-wrap: anywhere", "overflow-wrap: normal"))
    seen = browse(page, tmp_path)
    over = [c for c in seen["overflowing"] if c["text"].startswith("StepStep")]
    assert over and all(c["content"] > c["column"] for c in over), seen["overflowing"]
    assert seen["pageWidth"] > WIDTH


def test_a_value_wrapping_onto_two_lines_is_seen(report_page, tmp_path):
    # The line count can fail too: cells allowed to wrap, in a window too narrow for the table, take two lines.
    html = report_page.read_text()
    page = tmp_path / "report.html"
    page.write_text(html.replace("white-space: nowrap", "white-space: normal"))
    seen = browse(page, tmp_path, width=700)
    assert seen["viewport"][0] == 700 and seen["firstScreen"]["maxLines"] >= 1.9, seen["firstScreen"]


def test_a_window_narrower_than_table_1_scrolls_the_table_not_the_page(report_page, tmp_path):
    # Many or long model names make a headline table wider than the window: it scrolls in its own box, its values
    # stay on one line, and the page keeps the window's width.
    narrow = 560
    seen = browse(report_page, tmp_path, width=narrow)
    assert seen["firstScreen"]["box"]["right"] > narrow, "the table fits: the check would prove nothing"
    assert seen["pageWidth"] <= narrow and seen["beyondWindow"] == 0, seen
    assert seen["firstScreen"]["maxLines"] < 1.5, seen["firstScreen"]
    # without its box the same table widens the page
    page = tmp_path / "report.html"
    page.write_text(report_page.read_text().replace('<div class="scroll"><table', "<div><table"))
    assert browse(page, tmp_path, width=narrow)["pageWidth"] > narrow


def test_a_broken_image_is_seen_as_broken(report_page, tmp_path):
    # The check itself can fail: one thumbnail's bytes damaged, the browser decodes one image fewer.
    html = report_page.read_text()
    page = tmp_path / "report.html"
    start = html.index('<img class="thumb" src="data:image/png;base64,') + len(
        '<img class="thumb" src="data:image/png;base64,'
    )
    page.write_text(html[:start] + "AAAA" + html[start + 4 :])
    seen = browse(page, tmp_path)
    assert seen["decoded"] == seen["images"] - 1, seen
