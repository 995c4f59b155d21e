"""Structured (JSON lines) logging for every long-running component.

One JSON object per line, with ``ts``, ``level``, ``logger``, ``msg`` and any
``extra=`` fields, so log shippers index fields instead of parsing prose.
Set ``APIM_LOG_FORMAT=text`` for human-readable lines when developing.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import TextIO

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object; extra fields are kept as keys."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, separators=(",", ":"))


class _DropKnownNoise(logging.Filter):
    """Beam logs at import time that the optional GCP client is absent; it is not used here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("apitools not found")


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at emit time, not the stream current at configure time
    (a process that swaps stderr, such as a test runner capturing output, must not leave the handler
    writing to a closed stream)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure(level: str | None = None) -> None:
    """Install the handler once on the root logger (idempotent)."""
    level_name = (level or os.environ.get("APIM_LOG_LEVEL", "INFO")).upper()
    root = logging.getLogger()
    if any(getattr(h, "_apim", False) for h in root.handlers):
        root.setLevel(level_name)
        return
    # We own the process's logging: drop handlers a library installed with
    # basicConfig at import time, or every line would be printed twice.
    for existing in list(root.handlers):
        root.removeHandler(existing)
    handler = _StderrHandler()
    if os.environ.get("APIM_LOG_FORMAT", "json") == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    handler.addFilter(_DropKnownNoise())
    handler._apim = True  # type: ignore[attr-defined]  # our marker attribute, not a Handler field
    root.addHandler(handler)
    root.setLevel(level_name)
    # Third-party clients are chatty at INFO (kafka-python logs every connection).
    for noisy in ("kafka", "apache_beam", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # kafka-python warns whenever its IO loop is starved of CPU for 100 ms,
    # which a busy 2-core machine does routinely; real connection trouble is logged elsewhere.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
