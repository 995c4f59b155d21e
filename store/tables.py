"""Table definitions: the single source of truth for the store's schema.

Alembic migrations (store/migrations) are checked against this module by a
test, and docs/store.md is generated from the column comments here.

Invariants every writer relies on:
- Fact tables hold only measures that merge without order: sums (added) and
  minima/maxima (``least``/``greatest``), keyed by bucket start (UTC, event
  time) plus dimensions. Every write is ``insert ... on conflict ... merge``,
  so a late event simply lands in its own bucket, and a run's rows can be
  applied in any order.
- Latencies are stored as integer microseconds, so sums are exact and equal
  whatever the order events were added in (floating-point sums are not).
- ``source_offsets`` records, per topic partition, the next Kafka offset to
  read. It is written in the same transaction as the facts, which is what
  makes a replayed run unable to count anything twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Float, Index, Integer, MetaData, String, Table, Text

from store.latency import BUCKET_COUNT, histogram_column

metadata = MetaData()

# Dimension widths follow WSO2's stats tables (varchar 100-254), widened where
# mesh names are longer.
NAME = 255
SHORT = 64

GRANULARITIES: tuple[str, ...] = ("minute", "hour", "day", "month")


def _dims(*names: str) -> list[Column]:
    """Dimension columns by name; every fact table spells a dimension the same way."""
    spec = {
        "api_name": (String(NAME), "API name (WSO2 apiName; Mixer api.service)"),
        "api_version": (String(SHORT), "API version"),
        "api_context": (String(NAME), "API context, e.g. /pizzashack/1.0.0"),
        "application_id": (String(NAME), "application id; 'anonymous' for unauthenticated calls"),
        "tier": (String(SHORT), "subscription tier (Gold, Silver, Bronze, Unauthenticated, Unlimited, ...)"),
        "key_type": (String(16), "PRODUCTION, SANDBOX or UNKNOWN"),
        "resource_template": (String(NAME), ("resource template (/menu/{id}); raw paths normalised; "
                                             "'other' when the API's resource cap was reached")),
        "method": (String(16), "HTTP method"),
        "user_name": (String(NAME), "end user (JWT sub / username); '' when unknown"),
        "destination": (String(NAME), "backend destination (service host or URL)"),
    }
    return [Column(n, spec[n][0], primary_key=True, comment=spec[n][1]) for n in names]


def _bucket() -> Column:
    return Column("bucket_start", DateTime(timezone=False), primary_key=True,
                  comment="bucket start, UTC, event time (naive timestamp)")


def _sum(name: str, comment: str) -> Column:
    return Column(name, BigInteger, nullable=False, default=0, comment=comment)


# --- usage facts: one table per granularity -------------------------------------------------

USAGE_DIMENSIONS: tuple[str, ...] = (
    "api_name", "api_version", "api_context", "application_id", "tier", "key_type", "resource_template", "method",
)
USAGE_KEY_COLUMNS: tuple[str, ...] = ("bucket_start", *USAGE_DIMENSIONS)
USAGE_SUM_COLUMNS: tuple[str, ...] = (
    "requests", "count_2xx", "count_3xx", "count_4xx", "count_5xx", "faults", "throttled_out",
    "request_bytes", "response_bytes", "latency_sum_us", "backend_latency_sum_us",
    *(histogram_column(i) for i in range(BUCKET_COUNT)),
)
USAGE_MIN_COLUMNS: tuple[str, ...] = ("latency_min_us",)
USAGE_MAX_COLUMNS: tuple[str, ...] = ("latency_max_us",)


def _usage_table(granularity: str, name: str = "", dimensions: Sequence[str] = USAGE_DIMENSIONS,
                 comment: str = "") -> Table:
    return Table(
        name or f"usage_{granularity}",
        metadata,
        _bucket(),
        *_dims(*dimensions),
        _sum("requests", "requests, including throttled-out and faulted ones"),
        _sum("count_2xx", "responses 200-299"),
        _sum("count_3xx", "responses 300-399"),
        _sum("count_4xx", "responses 400-499 (kept: WSO2's Mixer adapter dropped them)"),
        _sum("count_5xx", "responses 500-599"),
        _sum("faults", "requests the gateway reported as faults (backend unreachable, timeouts, ...)"),
        _sum("throttled_out", "requests rejected by throttling (WSO2 throttledOut)"),
        _sum("request_bytes", "request body bytes"),
        _sum("response_bytes", "response body bytes"),
        _sum("latency_sum_us", "sum of response latencies, microseconds (mean = latency_sum_us / requests)"),
        Column("latency_min_us", BigInteger, nullable=False, default=0, comment="smallest response latency, us"),
        Column("latency_max_us", BigInteger, nullable=False, default=0, comment="largest response latency, us"),
        _sum("backend_latency_sum_us", "sum of backend latencies, microseconds"),
        *(_sum(histogram_column(i), f"requests in latency bucket {i} (bounds: table latency_buckets)")
          for i in range(BUCKET_COUNT)),
        comment=comment or f"API usage per {granularity} by API, version, context, application, subscription tier, "
                           "key type, resource and method",
    )


usage_minute = _usage_table("minute")
usage_hour = _usage_table("hour")
usage_day = _usage_table("day")
usage_month = _usage_table("month")
USAGE_TABLES: dict[str, Table] = {"minute": usage_minute, "hour": usage_hour, "day": usage_day,
                                  "month": usage_month}
# Analysts ask about one API (or a few) over a time range. The primary key leads with bucket_start, so
# alone it can only walk every API's rows in the range; this index finds one API's rows in it
# (bench/query_latency.py: a month of the busiest API by application and day on usage_day).
USAGE_API_INDEXES: dict[str, Index] = {
    g: Index(f"ix_{table.name}_api_bucket", table.c.api_name, table.c.bucket_start)
    for g, table in USAGE_TABLES.items()
}

# The daily rollup without resource and method. Analysts mostly ask "a month of one API by application
# (or tier) and day"; usage_day answers with a row per resource and method as well, about 6x the rows
# (bench/query_latency.py: 27,120 rows for the busiest API). The pipeline writes both in one commit,
# and query.usage reads this one whenever the question groups by neither resource nor method.
USAGE_APP_DIMENSIONS: tuple[str, ...] = tuple(d for d in USAGE_DIMENSIONS if d not in ("resource_template", "method"))
USAGE_APP_KEY_COLUMNS: tuple[str, ...] = ("bucket_start", *USAGE_APP_DIMENSIONS)
usage_app_day = _usage_table(
    "day", "usage_app_day", USAGE_APP_DIMENSIONS,
    "API usage per day by API, version, context, application, subscription tier and key type: usage_day without "
    "resource and method, for questions that do not ask for them")
Index("ix_usage_app_day_api_bucket", usage_app_day.c.api_name, usage_app_day.c.bucket_start)

latency_buckets = Table(
    "latency_buckets",
    metadata,
    Column("bucket", Integer, primary_key=True, comment="index; column lat_bNN of the usage tables"),
    Column("lower_ms", Float, nullable=False, comment="inclusive lower bound, milliseconds"),
    Column("upper_ms", Float, nullable=True, comment="exclusive upper bound, milliseconds; NULL for the last"),
    Column("estimate_ms", Float, nullable=False,
           comment="the value a percentile falling in this bucket is reported as"),
    comment="the fixed latency histogram boundaries (store/latency.py), so SQL can compute percentiles",
)

# --- companion facts ------------------------------------------------------------------------

USER_DAY_KEY_COLUMNS: tuple[str, ...] = ("bucket_start", "api_name", "api_version", "application_id", "user_name")
USER_DAY_SUM_COLUMNS: tuple[str, ...] = ("requests", "count_4xx", "count_5xx", "throttled_out", "response_bytes")
usage_user_day = Table(
    "usage_user_day",
    metadata,
    _bucket(),
    *_dims("api_name", "api_version", "application_id", "user_name"),
    _sum("requests", "requests"),
    _sum("count_4xx", "responses 400-499"),
    _sum("count_5xx", "responses 500-599"),
    _sum("throttled_out", "requests rejected by throttling"),
    _sum("response_bytes", "response body bytes"),
    comment="per-user daily usage by API and application (WSO2 ApiUserPerAppAgg)",
)

DESTINATION_DIMENSIONS: tuple[str, ...] = ("api_name", "api_version", "destination")
DESTINATION_SUM_COLUMNS: tuple[str, ...] = ("requests", "count_5xx", "faults", "latency_sum_us",
                                            "backend_latency_sum_us")


def _destination_table(granularity: str) -> Table:
    return Table(
        f"usage_destination_{granularity}",
        metadata,
        _bucket(),
        *_dims(*DESTINATION_DIMENSIONS),
        _sum("requests", "requests"),
        _sum("count_5xx", "responses 500-599"),
        _sum("faults", "gateway faults"),
        _sum("latency_sum_us", "sum of response latencies, microseconds"),
        _sum("backend_latency_sum_us", "sum of backend latencies, microseconds"),
        comment=f"usage per backend destination per {granularity} (WSO2 ApiPerDestinationAgg)",
    )


usage_destination_hour = _destination_table("hour")
usage_destination_day = _destination_table("day")
DESTINATION_TABLES: dict[str, Table] = {"hour": usage_destination_hour, "day": usage_destination_day}

api_last_access = Table(
    "api_last_access",
    metadata,
    *_dims("api_name", "api_version"),
    Column("api_context", String(NAME), nullable=False, default=""),
    Column("last_access", DateTime(timezone=False), nullable=False,
           comment="event time of the latest request seen (merged with greatest())"),
    comment="last access per API (WSO2 ApiLastAccessSummary)",
)

api_catalog = Table(
    "api_catalog",
    metadata,
    *_dims("api_name", "api_version"),
    Column("api_context", String(NAME), nullable=False, default=""),
    Column("api_id", String(NAME), nullable=False, default="", comment="API manager UUID when known"),
    Column("api_creator", String(NAME), nullable=False, default=""),
    Column("api_creator_tenant_domain", String(NAME), nullable=False, default=""),
    Column("first_seen", DateTime(timezone=False), nullable=False, comment="event time, merged with least()"),
    Column("last_seen", DateTime(timezone=False), nullable=False, comment="event time, merged with greatest()"),
    comment="APIs seen in traffic, with their names, so reports need not join on ids alone",
)

application_catalog = Table(
    "application_catalog",
    metadata,
    Column("application_id", String(NAME), primary_key=True),
    Column("application_name", String(NAME), nullable=False, default=""),
    Column("application_owner", String(NAME), nullable=False, default=""),
    Column("application_tier", String(SHORT), nullable=False, default="", comment="application throttling policy"),
    Column("first_seen", DateTime(timezone=False), nullable=False, comment="event time, merged with least()"),
    Column("last_seen", DateTime(timezone=False), nullable=False, comment="event time, merged with greatest()"),
    comment="applications seen in traffic, with names and owners",
)

# --- cardinality guard ------------------------------------------------------------------------

api_resources = Table(
    "api_resources",
    metadata,
    *_dims("api_name", "api_version", "resource_template"),
    Column("first_seen", DateTime(timezone=False), nullable=False),
    comment="resource templates admitted per API; the pipeline caps their number per API "
            "(--max-resources-per-api) and folds the rest into 'other'",
)

resource_folds = Table(
    "resource_folds",
    metadata,
    _bucket(),
    *_dims("api_name", "api_version"),
    _sum("folded_requests", "requests whose resource was folded into 'other' (cap reached)"),
    comment="per day and API, how many requests the cardinality guard folded into 'other'",
)

# --- throttle-quota store -----------------------------------------------------------------------

throttle_policies = Table(
    "throttle_policies",
    metadata,
    Column("level", String(16), primary_key=True, comment="subscription, application or api"),
    Column("name", String(SHORT), primary_key=True, comment="policy (tier) name, e.g. Gold, 50PerMin"),
    Column("quota_type", String(16), nullable=False, comment="requestCount or bandwidthVolume"),
    Column("quota", BigInteger, nullable=True, comment="requests or bytes per window; NULL = unlimited"),
    Column("unit_time", Integer, nullable=False, default=1, comment="window length in time_unit"),
    Column("time_unit", String(8), nullable=False, comment="min, hour, day or month"),
    Column("stop_on_quota_reach", Boolean, nullable=False, default=True),
    Column("description", Text, nullable=False, default=""),
    comment="throttling policies per level (WSO2 AM_POLICY_SUBSCRIPTION and friends)",
)

throttle_assignments = Table(
    "throttle_assignments",
    metadata,
    Column("level", String(16), primary_key=True, comment="api (API-level policies are not on the event)"),
    Column("throttle_key", String(NAME), primary_key=True, comment="for level api: context:version"),
    Column("policy", String(SHORT), nullable=False),
    comment="policies assigned to throttle keys whose policy the events do not carry",
)

THROTTLE_COUNTER_KEY: tuple[str, ...] = ("level", "throttle_key", "window_unit", "window_start")
throttle_counters = Table(
    "throttle_counters",
    metadata,
    Column("level", String(16), primary_key=True, comment="subscription, application or api"),
    Column("throttle_key", String(NAME * 2), primary_key=True,
           comment="subscription: application:context:version; application: application:user; "
                   "api: context:version"),
    Column("window_unit", String(16), primary_key=True, comment="the window, e.g. 1min, 1hour, 1month"),
    Column("window_start", DateTime(timezone=False), primary_key=True, comment="UTC, event time"),
    Column("policy", String(SHORT), nullable=False, comment="the policy the counts were made under"),
    _sum("requests", "requests admitted in the window (throttled-out ones are not counted)"),
    _sum("bytes", "request + response bytes admitted in the window"),
    comment="throttle counters per key and policy window, updated with the analytics facts",
)

throttle_decisions = Table(
    "throttle_decisions",
    metadata,
    Column("level", String(16), primary_key=True),
    Column("throttle_key", String(NAME * 2), primary_key=True),
    Column("policy", String(SHORT), nullable=False),
    Column("window_start", DateTime(timezone=False), nullable=False),
    Column("window_end", DateTime(timezone=False), nullable=False, comment="quota resets here"),
    Column("used", BigInteger, nullable=False, comment="requests or bytes used in the window"),
    Column("quota", BigInteger, nullable=True, comment="NULL = unlimited"),
    Column("throttled", Boolean, nullable=False, comment="used >= quota: throttled until window_end"),
    Column("near_limit", Boolean, nullable=False, comment="used >= near-limit ratio x quota"),
    Column("updated_at", DateTime(timezone=False), nullable=False),
    comment="the latest decision per throttle key (WSO2 GlobalThrottleStream: key, isThrottled, expiry)",
)

# --- pipeline bookkeeping -----------------------------------------------------------------------

api_definitions = Table(
    "api_definitions",
    metadata,
    *_dims("api_name", "api_version"),
    Column("api_context", String(NAME), nullable=False,
           comment="context path (/cart), or with {version} inside it (/cart/{version})"),
    Column("hostnames", Text, nullable=False, default="",
           comment="comma-separated authorities the API is served on; '' for any"),
    Column("source", Text, nullable=False, default="", comment="the OpenAPI document it was loaded from"),
    Column("loaded_at", DateTime(timezone=False), nullable=False, comment="UTC"),
    Column("tcp_clusters", Text, nullable=False, default="",
           comment="comma-separated Envoy clusters whose TCP connections count as calls of this API; '' for none"),
    comment="the API catalog (apim-analytics apis load): what Envoy access logs are matched to",
)

api_definition_resources = Table(
    "api_definition_resources",
    metadata,
    *_dims("api_name", "api_version", "method", "resource_template"),
    comment="each catalog API version's resource templates and methods, from its OpenAPI paths",
)

subscription_catalog = Table(
    "subscription_catalog",
    metadata,
    Column("credential_sha256", String(64), primary_key=True,
           comment="SHA-256 hex (first 32 chars) of the opaque token or API key; never the credential itself"),
    Column("api_name", String(NAME), primary_key=True),
    Column("api_version", String(SHORT), primary_key=True),
    Column("tier", String(SHORT), nullable=False, comment="subscription tier of this application for this API"),
    Column("application_id", String(NAME), nullable=False),
    Column("application_name", String(NAME), nullable=False, default=""),
    Column("application_owner", String(NAME), nullable=False, default=""),
    Column("application_tier", String(SHORT), nullable=False, default=""),
    Column("consumer_key", String(NAME), nullable=False, default=""),
    Column("key_type", String(16), nullable=False, default="PRODUCTION"),
    Column("user_name", String(NAME), nullable=False, default=""),
    Column("credential_kind", String(16), nullable=False, default="OPAQUE_TOKEN",
           comment="OPAQUE_TOKEN or API_KEY"),
    comment="opaque tokens and API keys -> application and subscriptions, for the collector",
)

seen_batches = Table(
    "seen_batches",
    metadata,
    Column("topic", String(NAME), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("call_id", String(SHORT), primary_key=True, comment="record key: the producer call's digest"),
    Column("record_offset", BigInteger, nullable=False),
    Column("committed_at", DateTime(timezone=False), nullable=False),
    comment="recently counted producer calls per partition, so a call delivered twice "
            "(a timed-out send plus its spooled copy) is counted once even across runs",
)
Index("ix_seen_batches_committed_at", seen_batches.c.committed_at)

source_offsets = Table(
    "source_offsets",
    metadata,
    Column("topic", String(NAME), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False, comment="the first offset not yet aggregated"),
    Column("updated_at", DateTime(timezone=False), nullable=False),
    comment="Kafka offsets consumed, committed atomically with the facts",
)

pipeline_runs = Table(
    "pipeline_runs",
    metadata,
    Column("run_id", String(SHORT), primary_key=True, comment="digest of the run's planned offset ranges"),
    Column("topic", String(NAME), nullable=False),
    Column("committed_at", DateTime(timezone=False), nullable=False),
    Column("records", BigInteger, nullable=False, comment="Kafka records read"),
    Column("events", BigInteger, nullable=False, comment="events counted"),
    Column("duplicates", BigInteger, nullable=False, comment="events dropped as already counted"),
    Column("dead_letters", BigInteger, nullable=False, comment="records sent to the dead-letter topic"),
    Column("folded_requests", BigInteger, nullable=False, comment="requests folded into resource 'other'"),
    Column("fact_rows", BigInteger, nullable=False, comment="fact rows upserted, all tables"),
    comment="one row per committed run, written in the run's transaction (an audit trail for operators)",
)
Index("ix_pipeline_runs_committed_at", pipeline_runs.c.committed_at)

# Every table's retention is driven by its bucket column: which tables the purge step prunes, per granularity.
RETENTION_TABLES: dict[str, Sequence[Table]] = {
    "minute": (usage_minute,),
    "hour": (usage_hour, usage_destination_hour),
    "day": (usage_day, usage_app_day, usage_user_day, usage_destination_day, resource_folds),
    "month": (usage_month,),
}

# --- billing (billing/publisher.py) -------------------------------------------------------------
# Appended as a separate block: the monetization publisher's durable state.

billing_watermarks = Table(
    "billing_watermarks",
    metadata,
    Column("sink", String(SHORT), primary_key=True, comment="publisher sink name (e.g. webhook, file)"),
    Column("published_until", DateTime(timezone=False), nullable=False,
           comment="UTC hour boundary: every window before it is fully delivered to the sink"),
    Column("updated_at", DateTime(timezone=False), nullable=False, comment="when the watermark last moved, UTC"),
    comment="per sink, how far usage has been published (WSO2 AM_MONETIZATION_USAGE last publish time)",
)

billing_publications = Table(
    "billing_publications",
    metadata,
    Column("idempotency_key", String(64), primary_key=True,
           comment="sha256 hex of sink|application|api|version|tier|window_start; sent to the receiver"),
    Column("sink", String(SHORT), nullable=False, comment="publisher sink name"),
    Column("application_id", String(NAME), nullable=False, comment="subscribing application id"),
    Column("api_name", String(NAME), nullable=False, comment="API name"),
    Column("api_version", String(SHORT), nullable=False, comment="API version"),
    Column("tier", String(SHORT), nullable=False, comment="subscription tier"),
    Column("window_start", DateTime(timezone=False), nullable=False, comment="usage window start, UTC (an hour)"),
    Column("window_end", DateTime(timezone=False), nullable=False, comment="usage window end, UTC (exclusive)"),
    Column("quantity", BigInteger, nullable=False, comment="billable requests in the window, as sent"),
    Column("status", String(16), nullable=False, comment="pending (recorded, not confirmed) or delivered"),
    Column("attempts", Integer, nullable=False, default=0, comment="delivery attempts so far, all runs"),
    Column("last_error", Text, nullable=False, default="", comment="last delivery error; '' when none"),
    Column("created_at", DateTime(timezone=False), nullable=False, comment="when the row was recorded, UTC"),
    Column("published_at", DateTime(timezone=False), nullable=True,
           comment="when the sink confirmed delivery, UTC; NULL while pending"),
    comment="ledger of usage records published per sink, subscription and window; a pending row is re-sent "
            "with the same key, a delivered one never",
)
Index("ix_billing_publications_sink_window", billing_publications.c.sink, billing_publications.c.window_start)
