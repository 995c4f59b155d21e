"""What a usage query can group by and measure: shared by the query API and the CLI's help,
which must not import pandas to print them."""

from __future__ import annotations

GRANULARITIES: tuple[str, ...] = ("minute", "hour", "day", "month")

GROUP_BY: dict[str, str] = {
    "api": "api_name", "version": "api_version", "application": "application_id", "tier": "tier",
    "resource": "resource_template", "method": "method", "context": "api_context", "key_type": "key_type",
    "status_class": "status_class", "bucket": "bucket_start", "user": "user_name", "destination": "destination",
}
MEASURES: tuple[str, ...] = (
    "requests", "errors_4xx", "errors_5xx", "throttled_out", "request_bytes", "response_bytes",
    "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "latency_mean_ms", "latency_max_ms", "faults",
)
STATUS_CLASSES: tuple[str, ...] = ("2xx", "3xx", "4xx", "5xx")
