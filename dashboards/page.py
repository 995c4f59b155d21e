"""The self-contained HTML page: template, stylesheet, script and data in one file.

Why self-contained: a dashboard file is mailed, attached to tickets and opened on machines with no
route to the store or the internet, so nothing may be fetched: the script (no library), the
stylesheet and the data (dashboards.data) are inlined, and charts are drawn as SVG in the browser.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any


def _asset(name: str) -> str:
    return resources.files("dashboards").joinpath("assets", name).read_text(encoding="utf-8")


def embedded_json(doc: dict[str, Any]) -> str:
    """JSON safe inside a <script> element: no '<' can end it, NaN is refused (JSON has none)."""
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def render_page(doc: dict[str, Any], *, title: str = "API usage analytics") -> str:
    """The page for ``doc`` (a dashboards.data document, optionally with ``refresh_s``)."""
    page = _asset("dashboard.html")
    # Replace the data last, so no placeholder text inside the data could ever be substituted.
    for placeholder, value in (("__TITLE__", html.escape(title)), ("__CSS__", _asset("dashboard.css")),
                               ("__JS__", _asset("dashboard.js"))):
        page = page.replace(placeholder, value, 1)
    head, sep, tail = page.partition("__DATA__")
    if not sep:
        raise RuntimeError("dashboard.html has no __DATA__ placeholder")
    return head + embedded_json(doc) + tail
