"""report.html of a real run, opened in a real headless browser (Debian's chromium): the table has a row per
artifact, the plots load and draw, and the page is not blank. Skipped, saying why, where chromium is missing."""
from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from torchslim.cli import main

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHRINK = ["teacher.train.epochs=2", "stages.student.train.epochs=2", "stages.distill.train.epochs=2",
          "stages.prune.train.epochs=1", "stages.prune.rounds=1", "evaluate.max_seconds=0.05"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: apt-get install chromium")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("browser") / "digits"
    args = ["run", str(ROOT / "recipes/digits.yaml"), "--out", str(out), "--quiet"]
    assert main(args + [a for s in SHRINK for a in ("--set", s)]) == 0
    return out, json.loads((out / "report.json").read_text())


def _chromium(*args: str) -> subprocess.CompletedProcess:
    # --no-sandbox: CI containers run as root, where chromium's sandbox refuses to start.
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=120, check=True)


class _Page(HTMLParser):
    """The rows of the first table and every <img> of the DOM chromium dumped."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.images: list[dict] = []
        self._tables = 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._tables += 1
        elif tag == "tr" and self._tables == 1:
            self.rows.append([])
        elif tag in ("td", "th") and self._tables == 1:
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # the IHDR chunk: width, height


def test_the_browser_sees_a_row_per_artifact_and_every_plot(run):
    out, report = run
    dom = _chromium("--dump-dom", (out / "report.html").as_uri()).stdout
    page = _Page()
    page.feed(dom)
    header, *rows = page.rows
    names = [a["name"] for a in report["artifacts"]]
    assert [row[0] for row in rows] == names
    assert all(len(row) == len(header) for row in rows)
    made_from = {row[0]: row[header.index("made from")] for row in rows}
    assert made_from["int8"] == made_from["onnx-fp32"] == "prune" and made_from["prune"] == "distill"
    alts = [img["alt"] for img in page.images]
    assert alts[:2] == ["accuracy vs lzma size", "accuracy vs latency at batch 1, 64"]
    for img in page.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        width, height = _png_size(base64.b64decode(src.split(",", 1)[1]))
        assert width >= 400 and height >= 300


def test_the_screenshot_shows_the_plots(run, tmp_path):
    out, _ = run
    shot = tmp_path / "report.png"
    _chromium("--window-size=1800,1200", f"--screenshot={shot}", (out / "report.html").as_uri())
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    assert pixels.shape[:2] == (1200, 1800)
    assert pixels.std() > 20  # not a blank page
    # The plots' markers are drawn in matplotlib's first two colours (#1f77b4, #ff7f0e): only a loaded PNG has them.
    for rgb in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):
        assert (np.abs(pixels - rgb).max(axis=2) < 40).sum() > 50, f"no {rgb} pixels: a plot did not load"
    assert not re.search(r"\.\.\.$", (out / "report.md").read_text(), re.M)  # no row of cut JSON
