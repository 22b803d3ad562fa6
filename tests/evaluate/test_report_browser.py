"""The HTML report in a real browser: headless Chromium loads it, and every table and image must be displayed.

A script added to a copy of the page reports, once the page has loaded, how many images decoded (a broken data URI
gives an image of width 0) and how many tables were laid out with rows; Chromium's `--dump-dom` prints it. A
screenshot of the top of the page is kept beside the test's files for a person to look at.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from .test_report import _report, make_workflow_outputs

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
# Without these, Chromium tries to reach Google's services at start (this machine has no such network).
QUIET = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
    "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
)  # fmt: skip

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)"
)

PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const tables = [...document.querySelectorAll("table")];
  const out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify({
    images: imgs.length,
    decoded: imgs.filter((i) => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0).length,
    tables: tables.length,
    shown: tables.filter((t) => t.getBoundingClientRect().height > 0 && t.rows.length > 1).length,
  });
  document.body.appendChild(out);
});
</script>"""


def browse(page: Path, workdir: Path) -> dict:
    """What Chromium made of ``page``: counts of images and tables, and which of them it displayed."""
    probe = workdir / "probe.html"
    html = page.read_text()
    assert "</body>" in html, "the report has no </body>"
    probe.write_text(html.replace("</body>", PROBE + "</body>", 1))
    profile = workdir / "chromium-profile"
    cmd = [CHROMIUM, *QUIET, f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the page's load handler never ran: {proc.stdout[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"'))


def screenshot(page: Path, workdir: Path) -> Path:
    shot = workdir / "report.png"
    cmd = [CHROMIUM, *QUIET, f"--user-data-dir={workdir / 'chromium-shot'}", "--window-size=1280,1600",
           f"--screenshot={shot}", page.as_uri()]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-3000:]
    return shot


def test_chromium_shows_every_table_and_image_of_the_report(tmp_path):
    page = _report(tmp_path, make_workflow_outputs(tmp_path), per_category=1, seed=0)
    seen = browse(page, tmp_path)
    html = page.read_text()
    assert seen["images"] == html.count("<img ") and seen["images"] >= 6  # the figure and 5 example thumbnails
    assert seen["decoded"] == seen["images"], seen
    assert seen["tables"] == html.count("<table") and seen["shown"] == seen["tables"], seen
    with Image.open(screenshot(page, tmp_path)) as shot:
        colours = shot.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 20, "the screenshot is (nearly) blank"


def test_a_broken_image_is_seen_as_broken(tmp_path):
    # The check itself can fail: one thumbnail's bytes damaged, the browser decodes one image fewer.
    page = _report(tmp_path, make_workflow_outputs(tmp_path), per_category=1, seed=0)
    html = page.read_text()
    start = html.index('<img class="thumb" src="data:image/png;base64,') + len(
        '<img class="thumb" src="data:image/png;base64,'
    )
    page.write_text(html[:start] + "AAAA" + html[start + 4 :])
    seen = browse(page, tmp_path)
    assert seen["decoded"] == seen["images"] - 1, seen
