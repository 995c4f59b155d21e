"""Dashboards: where people see the numbers.

- ``dashboards.data`` reads the store (through ``query.usage`` and the throttle tables) into one
  JSON-ready document per page;
- ``dashboards.page`` turns that document into a self-contained HTML page (no network access:
  CSS, JavaScript and data are inlined, charts are drawn as SVG in the browser);
- ``dashboards.server`` serves the page, its data, ``/healthz`` and ``/metrics``;
- ``dashboards/grafana/`` holds the Grafana dashboards for the PostgreSQL store.
"""
