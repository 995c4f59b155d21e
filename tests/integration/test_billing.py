"""Billing (billing/): monthly billable export, the incremental idempotent publisher
(webhook and file sinks), and reconciliation, on both real stores."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import delete, select, update

from apim_analytics.cli import main
from billing.errors import BillingArgumentError as BillingError
from billing.export import BillableRule, billable_usage, parse_period
from billing.publisher import (
    FileSink,
    PublishError,
    WebhookSink,
    idempotency_key,
    publish,
    watermark,
)
from billing.reconcile import reconcile
from pipeline.commit import commit_run
from pipeline.offsets import OffsetRange
from store import tables as t
from store.engine import create_schema, make_engine
from tests.integration.test_store_commit import event, facts

pytestmark = pytest.mark.integration

H22 = dt.datetime(2025, 11, 30, 22, 0)
H23 = dt.datetime(2025, 11, 30, 23, 0)
H00 = dt.datetime(2025, 12, 1, 0, 0)
AFTER = dt.datetime(2025, 12, 1, 2, 0, tzinfo=dt.UTC)  # "now": hours 22, 23 and 00 are complete
SUB1 = ("app-1", "PizzaAPI", "1.0.0", "Gold")
SUB2 = ("app-2", "PizzaAPI", "1.0.0", "Gold")


def ms(when: dt.datetime, minute: int = 10) -> int:
    return int((when + dt.timedelta(minutes=minute)).replace(tzinfo=dt.UTC).timestamp() * 1000)


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        create_schema(self.engine)
        self.offset = 0

    def add(self, events: list[dict]) -> None:
        commit_run(self.engine, [OffsetRange("t", 0, self.offset, self.offset + 1)], facts(events))
        self.offset += 1


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    s.add([*[event("app-1", 200, ts=ms(H22))] * 3, event("app-1", 302, ts=ms(H22)),
           event("app-1", 404, ts=ms(H22)), event("app-1", 429, ts=ms(H22), throttled=True),
           *[event("app-2", 200, ts=ms(H22, 30))] * 2, *[event("anonymous", 200, ts=ms(H22))] * 2])
    s.add([*[event("app-1", 200, ts=ms(H23))] * 2, event("app-1", 500, ts=ms(H23)),
           event("app-2", 200, ts=ms(H23, 59)), event("app-2", 301, ts=ms(H23))])
    s.add([event("app-1", 200, ts=ms(H00, 5))] * 4)  # December
    yield s
    s.engine.dispose()


def rows(df) -> list[tuple]:
    return [tuple(r) for r in df.itertuples(index=False)]


# --- export -------------------------------------------------------------------------------------

def test_export_default_rule_counts_2xx_per_subscription(store: Store) -> None:
    df = billable_usage(store.url, "2025-11")
    assert list(df.columns) == ["application_id", "api_name", "api_version", "tier", "billable_requests",
                                "application_name"]
    assert rows(df) == [(*SUB1, 5, "app-1-name"), (*SUB2, 3, "app-2-name")]  # anonymous is never billable
    assert rows(billable_usage(store.url, "2025-12")) == [(*SUB1, 4, "app-1-name")]
    assert rows(billable_usage(store.url, "2025-10")) == []


@pytest.mark.parametrize(("flag", "app1", "app2"), [
    ("2xx", 5, 3), ("2xx,3xx", 6, 4), ("all", 8, 4), ("all,throttled", 9, 4), ("4xx", 1, None),
    ("4xx,throttled", 2, None), ("5xx", 1, None),
])
def test_export_billable_rule_variants(store: Store, flag: str, app1: int, app2: int | None) -> None:
    df = billable_usage(store.engine, "2025-11", BillableRule.parse(flag))
    expected = {SUB1: app1, **({SUB2: app2} if app2 is not None else {})}
    assert {tuple(r[:4]): r[4] for r in rows(df)} == expected


def test_rule_and_period_validation() -> None:
    assert BillableRule.parse("2xx,3xx") == BillableRule(classes=("2xx", "3xx"))
    assert BillableRule.parse("all,throttled") == BillableRule(classes=("all",), include_throttled=True)
    with pytest.raises(BillingError, match="unknown billable class '6xx'"):
        BillableRule.parse("2xx,6xx")
    with pytest.raises(BillingError, match="at least one"):
        BillableRule.parse("throttled")
    assert parse_period("2025-12") == (dt.datetime(2025, 12, 1), dt.datetime(2026, 1, 1))
    for bad in ("2025-13", "2025-00", "2025/11", "25-11", "2025-11-01", ""):
        with pytest.raises(BillingError, match="not a calendar month"):
            parse_period(bad)


def test_export_cli_csv_and_jsonl(store: Store, capsys, tmp_path) -> None:
    assert main(["billing", "export", "--store", store.url, "--period", "2025-11", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "application_id,api_name,api_version,tier,billable_requests,application_name",
        "app-1,PizzaAPI,1.0.0,Gold,5,app-1-name",
        "app-2,PizzaAPI,1.0.0,Gold,3,app-2-name",
    ]
    out = tmp_path / "usage.jsonl"
    assert main(["billing", "export", "--store", store.url, "--period", "2025-11", "--format", "jsonl",
                 "--billable", "2xx,3xx", "--out", str(out)]) == 0
    assert [json.loads(x) for x in out.read_text().splitlines()] == [
        {"application_id": "app-1", "api_name": "PizzaAPI", "api_version": "1.0.0", "tier": "Gold",
         "billable_requests": 6, "application_name": "app-1-name"},
        {"application_id": "app-2", "api_name": "PizzaAPI", "api_version": "1.0.0", "tier": "Gold",
         "billable_requests": 4, "application_name": "app-2-name"}]


@pytest.mark.parametrize("argv", [
    ["export", "--period", "2025-13"], ["export", "--period", "2025/11"], ["export", "--period", "nov"],
    ["reconcile", "--period", "2025-00"], ["export", "--period", "2025-11", "--billable", "2xx,9xx"],
    ["publish", "--sink", "webhook"], ["publish", "--sink", "file"],
    ["publish", "--sink", "file", "--path", "x.jsonl", "--until", "yesterday"],
])
def test_cli_errors_are_one_line_exit_2(store: Store, capsys, argv: list[str]) -> None:
    assert main(["billing", argv[0], "--store", store.url, *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("apim-analytics: ") and err.count("\n") == 1


# --- publisher ----------------------------------------------------------------------------------

class Receiver:
    """A billing endpoint: applies each key once (409 for a replay); fails chosen calls with 500."""

    def __init__(self, fail_app: str | None = None, failures: int = 0) -> None:
        self.applied: dict[str, dict] = {}
        self.posts: Counter[str] = Counter()
        self.fail_app, self.failures = fail_app, failures
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = self.headers["Idempotency-Key"]
                assert key == body["idempotency_key"]
                with lock:
                    receiver.posts[key] += 1
                    if body["application_id"] == receiver.fail_app and receiver.failures > 0:
                        receiver.failures -= 1
                        code = 500
                    elif key in receiver.applied:
                        code = 409
                    else:
                        receiver.applied[key] = body
                        code = 201
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args) -> None:
                pass

        lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/usage"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def by_app(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for body in self.applied.values():
            out[body["application_id"]] += body["quantity"]
        return dict(out)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_app="app-2", failures=2)
    yield r
    r.close()


def expected_keys(sink: str, windows: list[tuple[tuple[str, ...], dt.datetime]]) -> set[str]:
    return {idempotency_key(sink, *sub, start) for sub, start in windows}


ALL_WINDOWS = [(SUB1, H22), (SUB2, H22), (SUB1, H23), (SUB2, H23), (SUB1, H00)]


def ledger(store: Store) -> list[tuple]:
    p = t.billing_publications
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(p.c.application_id, p.c.window_start, p.c.quantity,
                                                      p.c.status, p.c.attempts).order_by(p.c.window_start,
                                                                                         p.c.application_id))]


def test_webhook_publisher_delivers_every_row_exactly_once_despite_500s(store: Store, receiver: Receiver) -> None:
    sleeps: list[float] = []
    result = publish(store.url, WebhookSink(receiver.url, timeout=5), now=AFTER, attempts=4, base_delay=0.001,
                     sleep=sleeps.append)
    assert set(receiver.applied) == expected_keys("webhook", ALL_WINDOWS)
    assert receiver.by_app() == {"app-1": 5 + 4, "app-2": 3}  # = the billable usage of Nov + Dec
    assert sleeps == [0.001, 0.002]  # app-2's first record failed twice: exponential backoff
    assert (result.windows, result.delivered, result.resent) == (3, 5, 0)
    assert result.published_until == dt.datetime(2025, 12, 1, 1, 0)
    assert watermark(store.engine, "webhook") == dt.datetime(2025, 12, 1, 1, 0)
    assert ledger(store) == [("app-1", H22, 3, "delivered", 1), ("app-2", H22, 2, "delivered", 3),
                             ("app-1", H23, 2, "delivered", 1), ("app-2", H23, 1, "delivered", 1),
                             ("app-1", H00, 4, "delivered", 1)]
    body = receiver.applied[idempotency_key("webhook", *SUB2, H22)]
    assert body == {"idempotency_key": idempotency_key("webhook", *SUB2, H22), "application_id": "app-2",
                    "api_name": "PizzaAPI", "api_version": "1.0.0", "tier": "Gold",
                    "window_start": "2025-11-30T22:00:00Z", "window_end": "2025-11-30T23:00:00Z", "quantity": 2}
    # a rerun sends nothing: delivered rows are never re-sent
    posts = sum(receiver.posts.values())
    again = publish(store.url, WebhookSink(receiver.url), now=AFTER + dt.timedelta(hours=5), base_delay=0.001)
    assert (again.delivered, sum(receiver.posts.values())) == (0, posts)
    assert again.published_until == dt.datetime(2025, 12, 1, 6, 0)  # 07:00 - settle, floored


def test_only_complete_hours_are_published_and_the_watermark_moves_on(store: Store, receiver: Receiver) -> None:
    sink = WebhookSink(receiver.url)
    # 00:01 minus the 2-minute settle delay is 23:59: only hour 22 is complete
    first = publish(store.engine, sink, now=dt.datetime(2025, 12, 1, 0, 1), base_delay=0.0001)
    assert set(receiver.applied) == expected_keys("webhook", [(SUB1, H22), (SUB2, H22)])
    assert first.published_until == H23
    # --until caps the run too
    publish(store.engine, sink, now=AFTER, until=dt.datetime(2025, 12, 1, 0, 30), base_delay=0.0001)
    assert set(receiver.applied) == expected_keys("webhook", ALL_WINDOWS[:4])
    assert watermark(store.engine, "webhook") == H00
    publish(store.engine, sink, now=AFTER, base_delay=0.0001)
    assert set(receiver.applied) == expected_keys("webhook", ALL_WINDOWS)
    assert max(receiver.posts.values()) <= 3 and receiver.by_app() == {"app-1": 9, "app-2": 3}


def test_a_crash_mid_publish_then_rerun_never_double_publishes(store: Store) -> None:
    receiver = Receiver()
    try:
        class CrashAfterFirst(WebhookSink):
            delivered = 0

            def deliver(self, record: dict) -> None:
                super().deliver(record)
                CrashAfterFirst.delivered += 1
                raise KeyboardInterrupt("simulated crash after the receiver applied the record")

        with pytest.raises(KeyboardInterrupt):
            publish(store.url, CrashAfterFirst(receiver.url), now=AFTER)
        assert len(receiver.applied) == 1
        assert watermark(store.engine, "webhook") is None
        assert [r[3] for r in ledger(store)] == ["pending", "pending"]  # window 22 recorded, not confirmed
        result = publish(store.url, WebhookSink(receiver.url), now=AFTER, base_delay=0.001)
        assert (result.delivered, result.resent) == (5, 2)
        first = idempotency_key("webhook", *SUB1, H22)
        assert receiver.posts[first] == 2  # re-sent with the same key, and the receiver answered 409
        assert set(receiver.applied) == expected_keys("webhook", ALL_WINDOWS)
        assert receiver.by_app() == {"app-1": 9, "app-2": 3}
        assert {r[3] for r in ledger(store)} == {"delivered"}
    finally:
        receiver.close()


def test_a_permanent_4xx_stops_the_run_before_the_window(store: Store) -> None:
    class Rejecting(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(400)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Rejecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(PublishError, match=r"not delivered \(permanent\): .*HTTP 400"):
            publish(store.url, WebhookSink(f"http://127.0.0.1:{server.server_address[1]}/"), now=AFTER,
                    base_delay=0.001)
    finally:
        server.shutdown()
        server.server_close()
    assert watermark(store.engine, "webhook") is None
    assert ledger(store)[0][3:] == ("pending", 1)
    # an unreachable receiver is retried, then gives up
    with pytest.raises(PublishError, match="after 3 attempts"):
        publish(store.url, WebhookSink("http://127.0.0.1:9/"), now=AFTER, attempts=3, base_delay=0.001)


def test_file_sink_is_idempotent_on_rerun(store: Store, tmp_path) -> None:
    path = tmp_path / "usage.jsonl"
    publish(store.url, FileSink(path), now=AFTER)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert {x["idempotency_key"] for x in lines} == expected_keys("file", ALL_WINDOWS) and len(lines) == 5
    # forget that anything was delivered: every row is re-sent, none written twice
    with store.engine.begin() as conn:
        conn.execute(update(t.billing_publications).values(status="pending"))
        conn.execute(delete(t.billing_watermarks))
    result = publish(store.url, FileSink(path), now=AFTER)
    assert result.delivered == 5
    assert path.read_text().splitlines() == [json.dumps(x, sort_keys=True) for x in lines]


# --- reconcile ----------------------------------------------------------------------------------

def test_reconcile_zero_after_publishing_then_the_exact_late_difference(store: Store, tmp_path, capsys) -> None:
    before = reconcile(store.url, "2025-11")
    assert rows(before) == [(*SUB1, 0, 5, 5), (*SUB2, 0, 3, 3)]
    publish(store.url, FileSink(tmp_path / "u.jsonl"), now=AFTER)
    assert rows(reconcile(store.url, "2025-11")) == [(*SUB1, 5, 5, 0), (*SUB2, 3, 3, 0)]
    assert rows(reconcile(store.url, "2025-12", sink="file")) == [(*SUB1, 4, 4, 0)]
    assert main(["billing", "reconcile", "--store", store.url, "--period", "2025-11"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "billing reconcile 2025-11: 2 subscriptions, 0 differ (billed 8, stored 8)")
    # late events land in an hour already published: reconcile shows exactly them
    store.add([event("app-2", 200, ts=ms(H23, 20))] * 2)
    publish(store.url, FileSink(tmp_path / "u.jsonl"), now=AFTER)  # the hour is behind the watermark
    assert rows(reconcile(store.url, "2025-11")) == [(*SUB1, 5, 5, 0), (*SUB2, 3, 5, 2)]
    assert main(["billing", "reconcile", "--store", store.url, "--period", "2025-11", "--sink", "file"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "billing reconcile 2025-11: 2 subscriptions, 1 differ (billed 8, stored 10)")
    assert rows(reconcile(store.url, "2025-11", sink="other")) == [(*SUB1, 0, 5, 5), (*SUB2, 0, 5, 5)]


def test_publish_cli_file_sink(store: Store, tmp_path, capsys) -> None:
    path = tmp_path / "out.jsonl"
    argv = ["billing", "publish", "--store", store.url, "--sink", "file", "--path", str(path),
            "--until", "2025-12-01T00:00Z"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == (
        "billing publish file: 4 records delivered (0 re-sent) in 2 windows; published until 2025-12-01T00:00Z")
    assert len(path.read_text().splitlines()) == 4
    assert main(argv) == 0
    assert "0 records delivered" in capsys.readouterr().out
    assert main(["billing", "publish", "--store", store.url, "--sink", "webhook", "--url", "http://127.0.0.1:9/",
                 "--attempts", "2", "--base-delay", "0.001"]) == 1
    assert "not delivered (after 2 attempts)" in capsys.readouterr().err
