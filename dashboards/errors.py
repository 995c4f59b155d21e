"""The dashboards package's errors."""

from __future__ import annotations

from core.errors import ApimError, InputError


class DashboardError(ApimError):
    """Root of the dashboards package's errors."""


class BadRequest(DashboardError, InputError, ValueError):
    """A request parameter is invalid; the message says which (HTTP 400)."""
