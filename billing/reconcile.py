"""Billed versus stored usage per subscription for a calendar month.

    reconcile("sqlite:///apim-analytics.db", "2026-11", sink="webhook")

billed: the sum of *delivered* quantities in billing_publications for the sink's
windows starting in the month; stored: the billable requests of usage_month for
the month (billing.export, same ``BillableRule`` as the publisher used);
difference = stored - billed (positive: usage not billed yet, e.g. hours not yet
published or late events in an already published hour).

``sink=None`` uses the ledger's only sink; with several, one must be named.
"""

from __future__ import annotations

import pandas as pd
from sqlalchemy import Engine, and_, func, select

from billing.errors import BillingArgumentError
from billing.export import (
    SUBSCRIPTION,
    BillableRule,
    billable_usage,
    open_store,
    parse_period,
)
from billing.publisher import DELIVERED
from store import tables as t

COLUMNS: tuple[str, ...] = (*SUBSCRIPTION, "billed", "stored", "difference")


def reconcile(store: str | Engine, period: str, *, sink: str | None = None,
              rule: BillableRule | None = None) -> pd.DataFrame:
    """One row per subscription billed or used in the month: billed, stored, difference (stored - billed)."""
    start, end = parse_period(period)
    engine, owned = open_store(store)
    p = t.billing_publications
    try:
        with engine.connect() as conn:
            if sink is None:
                sinks = list(conn.execute(select(p.c.sink).distinct().order_by(p.c.sink)).scalars())
                if len(sinks) > 1:
                    raise BillingArgumentError(
                        f"the ledger has several sinks ({', '.join(sinks)}); name one with --sink")
                sink = sinks[0] if sinks else ""
            groups = [p.c[n] for n in SUBSCRIPTION]
            billed = conn.execute(select(*groups, func.sum(p.c.quantity)).where(and_(
                p.c.sink == sink, p.c.status == DELIVERED, p.c.window_start >= start, p.c.window_start < end))
                .group_by(*groups)).all()
        stored = billable_usage(engine, period, rule)
    finally:
        if owned:
            engine.dispose()
    b = pd.DataFrame([(*r[:-1], int(r[-1])) for r in billed], columns=[*SUBSCRIPTION, "billed"])
    s = stored[[*SUBSCRIPTION, "billable_requests"]].rename(columns={"billable_requests": "stored"})
    df = b.merge(s, on=list(SUBSCRIPTION), how="outer")
    df[["billed", "stored"]] = df[["billed", "stored"]].fillna(0).astype("int64")
    df["difference"] = df["stored"] - df["billed"]
    return df.sort_values(list(SUBSCRIPTION)).reset_index(drop=True)[list(COLUMNS)]
