"""Headless Chromium for page tests: the DOM after the page's scripts ran, the console, screenshots.

Chromium is Debian's package, installed by ``deploy/local/chromium.sh`` (``make test`` runs it).
We drive the browser's own command line (``--dump-dom``, ``--screenshot``) rather than a driver
library: nothing to download, and the browser is the one users run. Console messages reach us
through Chromium's logging (``--enable-logging=stderr``): one ``CONSOLE`` line per message,
uncaught exceptions included.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("APIM_TEST_ARTIFACTS", REPO / "test-artifacts"))


def chromium() -> str:
    """The browser's path (``APIM_CHROMIUM`` or chromium on PATH); fails the test with the fix if absent."""
    path = os.environ.get("APIM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("Chromium is not installed; run deploy/local/chromium.sh (make test does)")
    return path


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="apim-chromium-") as profile:
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
               "--enable-logging=stderr", "--v=0", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


@dataclass
class Loaded:
    dom: str
    console: list[str]


def load(url: str) -> Loaded:
    """Load ``url``; the DOM once the load event has fired, and every console message."""
    done = _run(["--dump-dom", url])
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return Loaded(done.stdout, console)


def screenshot(url: str, out: Path, width: int = 1400, height: int = 2400) -> tuple[int, int]:
    """Save a PNG of ``url`` at ``out``; returns the PNG's (width, height) from its header."""
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _run([f"--window-size={width},{height}", "--hide-scrollbars", f"--screenshot={out}", url])
    assert done.returncode == 0 and out.exists(), f"chromium screenshot failed: {done.stderr[-2000:]}"
    head = out.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{out} is not a PNG"
    return struct.unpack(">II", head[16:24])


class PageReader(HTMLParser):
    """The dashboard's machine-readable parts: body data attributes, tiles and the numbers tables."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str] = {}
        self.tiles: dict[str, str] = {}
        self.tables: dict[str, list[list[str | None]]] = {}
        self._table: str | None = None
        self._in_body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = {k[5:]: v or "" for k, v in a.items() if k.startswith("data-")}
        elif tag == "div" and "data-tile" in a:
            self.tiles[a["data-tile"] or ""] = a.get("data-value") or ""
        elif tag == "table" and "data-panel" in a:
            self._table = a["data-panel"]
            self.tables[self._table] = []
        elif tag == "tbody" and self._table is not None:
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table is not None:
            self.tables[self._table].append([])
        elif tag == "td" and self._in_body and self._table is not None:
            self.tables[self._table][-1].append(a.get("data-value"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table, self._in_body = None, False


def read_page(dom: str) -> PageReader:
    reader = PageReader()
    reader.feed(dom)
    return reader
