"""Incremental usage publisher, after WSO2's monetization usage publisher.

    publish("sqlite:///apim-analytics.db", WebhookSink("https://billing.example/usage"))

State, in the store (store/tables.py, billing block):

- ``billing_watermarks``: per sink, ``published_until`` - an hour boundary before
  which every window has been delivered.
- ``billing_publications``: the ledger, one row per (sink, subscription, window),
  keyed by the idempotency key sha256(sink|application|api|version|tier|window_start).

A run publishes the whole hours (usage_hour) from the watermark up to the cutoff:
the current hour minus the settle delay, floored to an hour (and ``until`` if given),
so only hours that are complete are published. Per window, in order:

1. every subscription's billable quantity (``BillableRule``, default 2xx) is recorded
   in the ledger as *pending* (committed before anything is sent); a row already in
   the ledger keeps its quantity;
2. each pending row is delivered with its key; on success it is marked *delivered*;
3. when every row of the window is delivered, the watermark moves to the window end.

A run that dies between steps leaves pending rows: the next run re-sends them with the
same key (receivers dedupe by key) and never re-sends a delivered row. Deliveries are
retried with exponential backoff (``attempts``, ``base_delay``); a failure that outlives
them (or a permanent one, e.g. HTTP 400) stops the run with ``PublishError`` and the
watermark stays before that window. Usage that lands in an already-published hour is not
re-published; ``billing.reconcile`` reports it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, and_, insert, select, update

from billing.errors import DeliveryError, DeliveryRetriable, PublishError
from billing.export import BillableRule, billable_by_subscription, open_store
from store import tables as t

__all__ = ["DeliveryError", "DeliveryRetriable", "FileSink", "PublishError", "WebhookSink", "publish"]

log = logging.getLogger(__name__)

HOUR = dt.timedelta(hours=1)
DEFAULT_SETTLE = dt.timedelta(minutes=2)
PENDING, DELIVERED = "pending", "delivered"


def idempotency_key(sink: str, application_id: str, api_name: str, api_version: str, tier: str,
                    window_start: dt.datetime) -> str:
    text = f"{sink}|{application_id}|{api_name}|{api_version}|{tier}|{window_start.isoformat()}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def payload(row) -> dict:
    """The JSON record a sink receives, from a ledger row."""
    return {"idempotency_key": row.idempotency_key, "application_id": row.application_id,
            "api_name": row.api_name, "api_version": row.api_version, "tier": row.tier,
            "window_start": row.window_start.isoformat() + "Z", "window_end": row.window_end.isoformat() + "Z",
            "quantity": int(row.quantity)}


class WebhookSink:
    """POSTs each record as JSON with an ``Idempotency-Key`` header.

    2xx and 409 (already applied) are success; 429, 5xx and connection errors are
    retried; any other 4xx is permanent.
    """

    name = "webhook"

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout

    def deliver(self, record: dict) -> None:
        body = json.dumps(record).encode("utf-8")
        req = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Idempotency-Key": record["idempotency_key"]})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 409:
                return
            failure = DeliveryRetriable if exc.code == 429 or exc.code >= 500 else DeliveryError
            raise failure(f"{self.url} answered HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise DeliveryRetriable(f"{self.url}: {getattr(exc, 'reason', exc)}") from exc


class FileSink:
    """Appends one JSON line per record; a key already in the file is not written again."""

    name = "file"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._keys: set[str] | None = None

    def _known(self) -> set[str]:
        if self._keys is None:
            self._keys = set()
            if self.path.exists():
                with self.path.open(encoding="utf-8") as fh:
                    for line in fh:
                        if line.strip():
                            try:
                                self._keys.add(json.loads(line)["idempotency_key"])
                            except (ValueError, KeyError):
                                continue  # a torn last line from a crash: its record is re-sent
        return self._keys

    def deliver(self, record: dict) -> None:
        known = self._known()
        if record["idempotency_key"] in known:
            return
        try:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, sort_keys=True) + "\n")
                fh.flush()
        except OSError as exc:
            raise DeliveryRetriable(f"{self.path}: {exc}") from exc
        known.add(record["idempotency_key"])


@dataclasses.dataclass
class PublishResult:
    sink: str
    windows: int = 0           # windows fully delivered in this run
    delivered: int = 0         # records delivered in this run (re-sent pending ones included)
    resent: int = 0            # of which were pending from an earlier run
    published_until: dt.datetime | None = None


def _utc_naive(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def _floor_hour(value: dt.datetime) -> dt.datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def cutoff(now: dt.datetime, settle: dt.timedelta = DEFAULT_SETTLE, until: dt.datetime | None = None) -> dt.datetime:
    """The end of the last complete window: floor_hour(now - settle), no later than floor_hour(until)."""
    end = _floor_hour(_utc_naive(now) - settle)
    if until is not None:
        end = min(end, _floor_hour(_utc_naive(until)))
    return end


def watermark(engine: Engine, sink: str) -> dt.datetime | None:
    with engine.connect() as conn:
        return conn.execute(select(t.billing_watermarks.c.published_until)
                            .where(t.billing_watermarks.c.sink == sink)).scalar()


def _set_watermark(engine: Engine, sink: str, until: dt.datetime) -> None:
    w = t.billing_watermarks
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        current = conn.execute(select(w.c.published_until).where(w.c.sink == sink)).scalar()
        if current is None:
            conn.execute(insert(w).values(sink=sink, published_until=until, updated_at=now))
        elif until > current:
            conn.execute(update(w).where(w.c.sink == sink).values(published_until=until, updated_at=now))


def _record_window(engine: Engine, sink: str, start: dt.datetime, rule: BillableRule) -> set[str]:
    """Step 1: the window's quantities into the ledger as pending (rows already there are kept)."""
    p = t.billing_publications
    rows = billable_by_subscription(engine, t.usage_hour, start, start + HOUR, rule)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        known = set(conn.execute(select(p.c.idempotency_key).where(
            and_(p.c.sink == sink, p.c.window_start == start))).scalars())
        new = []
        for app, api, version, tier, quantity in rows:
            key = idempotency_key(sink, app, api, version, tier, start)
            if key not in known:
                new.append({"idempotency_key": key, "sink": sink, "application_id": app, "api_name": api,
                            "api_version": version, "tier": tier, "window_start": start,
                            "window_end": start + HOUR, "quantity": quantity, "status": PENDING, "attempts": 0,
                            "last_error": "", "created_at": now, "published_at": None})
        if new:
            conn.execute(insert(p), new)
    return {r["idempotency_key"] for r in new}


def _deliver(engine: Engine, sink, row, attempts: int, base_delay: float,
             sleep: Callable[[float], None]) -> None:
    p = t.billing_publications
    record = payload(row)
    for attempt in range(1, attempts + 1):
        try:
            sink.deliver(record)
        except DeliveryError as exc:
            with engine.begin() as conn:
                conn.execute(update(p).where(p.c.idempotency_key == row.idempotency_key)
                             .values(attempts=p.c.attempts + 1, last_error=str(exc)[:1000]))
            if not exc.retriable or attempt == attempts:
                kind = "permanent" if not exc.retriable else f"after {attempt} attempts"
                raise PublishError(f"record {row.idempotency_key[:12]} ({row.application_id} {row.api_name} "
                                   f"{row.api_version} {row.tier} {row.window_start:%Y-%m-%dT%H:%M}Z) not "
                                   f"delivered ({kind}): {exc}") from exc
            delay = base_delay * 2 ** (attempt - 1)
            log.warning("billing: %s; retrying in %.3gs", exc, delay)
            sleep(delay)
            continue
        with engine.begin() as conn:
            conn.execute(update(p).where(p.c.idempotency_key == row.idempotency_key).values(
                status=DELIVERED, attempts=p.c.attempts + 1, last_error="",
                published_at=dt.datetime.now(dt.UTC).replace(tzinfo=None)))
        return


def _first_hour(engine: Engine, sink: str) -> dt.datetime | None:
    """Where to start: the watermark, else the earliest pending window or stored hour."""
    mark = watermark(engine, sink)
    if mark is not None:
        return mark
    with engine.connect() as conn:
        first = conn.execute(select(t.usage_hour.c.bucket_start).order_by(t.usage_hour.c.bucket_start)
                             .limit(1)).scalar()
        pending = conn.execute(select(t.billing_publications.c.window_start)
                               .where(t.billing_publications.c.sink == sink)
                               .order_by(t.billing_publications.c.window_start).limit(1)).scalar()
    candidates = [x for x in (first, pending) if x is not None]
    return _floor_hour(min(candidates)) if candidates else None


def _hours_with_work(engine: Engine, sink: str, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    h, p = t.usage_hour, t.billing_publications
    with engine.connect() as conn:
        used = set(conn.execute(select(h.c.bucket_start).distinct().where(
            and_(h.c.bucket_start >= start, h.c.bucket_start < end))).scalars())
        pending = set(conn.execute(select(p.c.window_start).distinct().where(
            and_(p.c.sink == sink, p.c.status == PENDING, p.c.window_start >= start,
                 p.c.window_start < end))).scalars())
    return sorted(used | pending)


def publish(store: str | Engine, sink, *, sink_name: str | None = None,
            rule: BillableRule | None = None, until: dt.datetime | None = None, now: dt.datetime | None = None,
            settle: dt.timedelta = DEFAULT_SETTLE, attempts: int = 5, base_delay: float = 0.5,
            sleep: Callable[[float], None] = time.sleep) -> PublishResult:
    """Publish every complete, unpublished hour to ``sink``; see the module docstring.

    Raises:
        PublishError: a record could not be delivered (the watermark stays before its window).
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    rule = rule or BillableRule()
    name = sink_name or sink.name
    engine, owned = open_store(store, readonly=False)
    result = PublishResult(sink=name)
    try:
        end = cutoff(now or dt.datetime.now(dt.UTC), settle, until)
        start = _first_hour(engine, name)
        if start is None or start >= end:
            result.published_until = watermark(engine, name)
            return result
        p = t.billing_publications
        for window in _hours_with_work(engine, name, start, end):
            recorded = _record_window(engine, name, window, rule)
            with engine.connect() as conn:
                pending = conn.execute(select(p).where(and_(p.c.sink == name, p.c.window_start == window,
                                                            p.c.status == PENDING))
                                       .order_by(p.c.application_id, p.c.api_name, p.c.api_version,
                                                 p.c.tier)).all()
            for row in pending:
                _deliver(engine, sink, row, attempts, base_delay, sleep)
                result.delivered += 1
                result.resent += row.idempotency_key not in recorded
            _set_watermark(engine, name, window + HOUR)
            result.windows += 1
        _set_watermark(engine, name, end)
        result.published_until = end
        return result
    finally:
        if owned:
            engine.dispose()
