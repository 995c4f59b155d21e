"""The collector's error root (see core.errors): callers catch one type for
everything the collector raises on purpose."""

from __future__ import annotations

from core.errors import ApimError


class CollectorError(ApimError):
    """An error the collector raises on purpose."""
