"""Billable usage per subscription for a calendar month, from usage_month.

    billable_usage("sqlite:///apim-analytics.db", "2026-11", BillableRule())

A subscription is (application_id, api_name, api_version, tier). The default rule
counts successful 2xx requests, as WSO2's MonetizationAgg does. ``BillableRule``
chooses the status classes that count (2xx, 3xx, 4xx, 5xx, or ``all`` requests)
and whether throttled-out requests count.

Throttled-out requests: the store does not split throttled_out by status class;
the gateway answers them 429, so they are subtracted (unless ``include_throttled``)
only when 4xx or ``all`` is counted, clamped at zero.

Unauthenticated traffic (application_id 'anonymous') has no subscription and is
never billable. Subscriptions whose billable count is 0 are left out.
Bad arguments raise ``BillingArgumentError``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterable

import pandas as pd
from sqlalchemy import Engine, and_, func, select

from billing.errors import BillingArgumentError
from store import tables as t

SUBSCRIPTION: tuple[str, ...] = ("application_id", "api_name", "api_version", "tier")
CLASSES: tuple[str, ...] = ("2xx", "3xx", "4xx", "5xx", "all")
ANONYMOUS = "anonymous"


@dataclasses.dataclass(frozen=True)
class BillableRule:
    """Which requests are billable: status classes (or 'all'), and whether throttled-out ones count."""

    classes: tuple[str, ...] = ("2xx",)
    include_throttled: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.classes, str) or not self.classes:
            raise BillingArgumentError("a billable rule needs at least one status class")
        unknown = [c for c in self.classes if c not in CLASSES]
        if unknown:
            raise BillingArgumentError(f"unknown billable class {unknown[0]!r}; choose from {', '.join(CLASSES)}")

    @classmethod
    def parse(cls, text: str) -> BillableRule:
        """From a CLI flag: comma-separated classes, plus 'throttled' to count throttled-out requests.

        '2xx' (the default), '2xx,3xx', 'all', 'all,throttled'.
        """
        tokens = [x.strip().lower() for x in text.split(",") if x.strip()]
        include = "throttled" in tokens
        classes = tuple(dict.fromkeys(x for x in tokens if x != "throttled"))
        return cls(classes=classes, include_throttled=include)

    def expression(self, table):
        """The per-row billable count as a SQL expression over a usage table."""
        c = table.c
        if "all" in self.classes:
            expr = c.requests
        else:
            expr = sum((c[f"count_{k}"] for k in self.classes[1:]), c[f"count_{self.classes[0]}"])
        if not self.include_throttled and ("all" in self.classes or "4xx" in self.classes):
            expr = expr - c.throttled_out
        return expr

    def describe(self) -> str:
        return ",".join(self.classes) + (",throttled" if self.include_throttled else "")


def parse_period(period: str) -> tuple[dt.datetime, dt.datetime]:
    """'YYYY-MM' -> (first instant of the month, first instant of the next), naive UTC."""
    m = re.fullmatch(r"(\d{4})-(\d{2})", period.strip()) if isinstance(period, str) else None
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise BillingArgumentError(f"period {period!r} is not a calendar month YYYY-MM")
    year, month = int(m.group(1)), int(m.group(2))
    start = dt.datetime(year, month, 1)
    end = dt.datetime(year + (month == 12), month % 12 + 1, 1)
    return start, end


def open_store(store: str | Engine, *, readonly: bool = True) -> tuple[Engine, bool]:
    """(engine, owned): an Engine is used as is, a URL opened (and to be disposed by the caller)."""
    if isinstance(store, Engine):
        return store, False
    from store.engine import make_engine, open_reader

    return (open_reader(store) if readonly else make_engine(store)), True


def billable_by_subscription(engine: Engine, table, start: dt.datetime, end: dt.datetime,
                             rule: BillableRule, extra_group: Iterable = ()) -> list[tuple]:
    """Rows (*extra_group, application_id, api_name, api_version, tier, billable) with billable > 0."""
    c = table.c
    extra = list(extra_group)
    groups = [*extra, *(c[n] for n in SUBSCRIPTION)]
    billable = func.sum(rule.expression(table))
    stmt = (select(*groups, billable)
            .where(and_(c.bucket_start >= start, c.bucket_start < end, c.application_id != ANONYMOUS))
            .group_by(*groups).order_by(*groups))
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [(*r[:-1], max(int(r[-1] or 0), 0)) for r in rows if int(r[-1] or 0) > 0]


def billable_usage(store: str | Engine, period: str, rule: BillableRule | None = None) -> pd.DataFrame:
    """Billable requests per subscription for the calendar month ``period`` ('YYYY-MM', UTC).

    Columns: application_id, api_name, api_version, tier, billable_requests, application_name
    ('' when the application catalog does not know it); sorted by the subscription columns.
    """
    rule = rule or BillableRule()
    start, end = parse_period(period)
    engine, owned = open_store(store)
    try:
        rows = billable_by_subscription(engine, t.usage_month, start, end, rule)
        with engine.connect() as conn:
            names = dict(conn.execute(select(t.application_catalog.c.application_id,
                                             t.application_catalog.c.application_name)).all())
    finally:
        if owned:
            engine.dispose()
    df = pd.DataFrame(rows, columns=[*SUBSCRIPTION, "billable_requests"])
    df["billable_requests"] = df["billable_requests"].astype("int64")
    df["application_name"] = [names.get(a, "") for a in df["application_id"]]
    return df
