"""``apim-analytics dashboard serve``: the page, built fresh from the store on every request.

Endpoints (GET):
- ``/``: the dashboard page; ``?from=T&to=T&api=NAME&granularity=G`` narrow what the page holds
  (the page's own filters then work within it);
- ``/data.json``: the same document as JSON (same parameters);
- ``/healthz``: 200 when the store answers a query, 503 with the reason when not;
- ``/metrics``: Prometheus text format.

A bad parameter gets 400 with the reason; a store error 503; anything else 500, logged. No request
can stop the server: each runs in its own thread and every failure is answered.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import Engine, text

from core.settings import SettingsError, parse_host_port, utc_timestamp
from dashboards.data import dashboard_data
from dashboards.errors import BadRequest
from dashboards.page import embedded_json, render_page
from dashboards.settings import DashboardSettings
from query.errors import QueryArgumentError
from store.errors import StoreError

log = logging.getLogger(__name__)
_PARAMS = ("from", "to", "api", "granularity")


class DashboardMetrics:
    """The server's own metrics, in a registry of their own (several servers may share a process in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("apim_dashboard_requests_total", "HTTP requests, by endpoint and status code",
                                ["endpoint", "code"], registry=self.registry)
        self.build_seconds = Histogram("apim_dashboard_build_seconds", "time to read the store and build a page",
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=self.registry)
        self.store_up = Gauge("apim_dashboard_store_up", "1 when the last store query succeeded",
                              registry=self.registry)


def request_options(query: str) -> dict[str, Any]:
    """The page parameters of a query string, checked.

    Raises:
        BadRequest: an unknown or repeated parameter, or a malformed timestamp.
    """
    raw = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(raw) - set(_PARAMS))
    if unknown:
        raise BadRequest(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(_PARAMS)}")
    repeated = sorted(k for k, v in raw.items() if len(v) > 1)
    if repeated:
        raise BadRequest(f"parameter(s) given more than once: {', '.join(repeated)}")
    one = {k: v[0] for k, v in raw.items() if v[0] != ""}
    try:
        options: dict[str, Any] = {"start": utc_timestamp(one.get("from"), "from"),
                                   "end": utc_timestamp(one.get("to"), "to")}
    except SettingsError as exc:
        raise BadRequest(str(exc)) from exc
    options["api"] = one.get("api")
    if "granularity" in one:
        options["granularity"] = one["granularity"]
    return options


class Dashboard:
    """Builds documents and pages for one store, with the settings' defaults."""

    def __init__(self, engine: Engine, settings: DashboardSettings) -> None:
        self.engine, self.settings = engine, settings
        self.metrics = DashboardMetrics()

    def document(self, **options: Any) -> dict[str, Any]:
        """A dashboards.data document; ``options`` override the settings' granularity and so on."""
        merged: dict[str, Any] = {"granularity": self.settings.granularity, "max_buckets": self.settings.max_buckets,
                  "quota_keys": self.settings.quota_keys} | options
        started = time.perf_counter()
        try:
            doc = dashboard_data(self.engine, **merged)
        except StoreError:
            self.metrics.store_up.set(0)
            raise
        self.metrics.store_up.set(1)
        self.metrics.build_seconds.observe(time.perf_counter() - started)
        if self.settings.refresh_s > 0:
            doc["refresh_s"] = self.settings.refresh_s
        return doc

    def health(self) -> tuple[bool, str]:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except StoreError as exc:
            self.metrics.store_up.set(0)
            return False, f"store unreachable: {type(exc).__name__}\n"
        self.metrics.store_up.set(1)
        return True, "ok\n"


def _handler(dashboard: Dashboard) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "apim-analytics-dashboard"

        def do_GET(self) -> None:  # the stdlib's name
            url = urlsplit(self.path)
            endpoint = {"/": "page", "/index.html": "page", "/data.json": "data", "/healthz": "healthz",
                        "/metrics": "metrics"}.get(url.path, "other")
            try:
                code, ctype, body = self._answer(endpoint, url.query)
            except (BadRequest, QueryArgumentError) as exc:
                code, ctype, body = 400, "text/plain; charset=utf-8", f"bad request: {exc}\n".encode()
            except StoreError as exc:
                log.warning("store query failed", extra={"error": type(exc).__name__, "path": url.path})
                code, ctype, body = 503, "text/plain; charset=utf-8", b"the store did not answer; try again\n"
            except Exception:  # a request must never take the server down (logged with its traceback)
                log.exception("dashboard request failed", extra={"path": url.path})
                code, ctype, body = 500, "text/plain; charset=utf-8", b"internal error (logged)\n"
            dashboard.metrics.requests.labels(endpoint, str(code)).inc()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _answer(self, endpoint: str, query: str) -> tuple[int, str, bytes]:
            if endpoint == "page":
                doc = dashboard.document(**request_options(query))
                return 200, "text/html; charset=utf-8", render_page(doc).encode()
            if endpoint == "data":
                doc = dashboard.document(**request_options(query))
                return 200, "application/json", embedded_json(doc).encode()
            if endpoint == "healthz":
                ok, reason = dashboard.health()
                return (200 if ok else 503), "text/plain; charset=utf-8", reason.encode()
            if endpoint == "metrics":
                return 200, CONTENT_TYPE_LATEST, generate_latest(dashboard.metrics.registry)
            return 404, "text/plain; charset=utf-8", b"not found: try /, /data.json, /healthz or /metrics\n"

        def log_message(self, *args: object) -> None:  # one line per request would drown the logs
            return

    return Handler


def start_server(dashboard: Dashboard, listen: str) -> ThreadingHTTPServer:
    """Serve in a daemon thread (port 0 picks a free one; ``server.server_address`` tells which)."""
    host, port = parse_host_port("--listen", listen)
    server = ThreadingHTTPServer((host, port), _handler(dashboard))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="dashboard-http", daemon=True).start()
    bound_host, bound_port = bound_address(server)
    log.info("dashboard serving", extra={"listen": f"{bound_host}:{bound_port}"})
    return server


def bound_address(server: ThreadingHTTPServer) -> tuple[str, int]:
    """The host and port ``server`` is bound to (port 0 resolved)."""
    host, port = server.server_address[:2]
    return (host.decode() if isinstance(host, (bytes, bytearray)) else host), port

