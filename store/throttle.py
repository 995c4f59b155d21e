"""The throttle-quota store: policies, windowed counters and decisions (WSO2's model).

WSO2 APIM's Traffic Manager counts requests per throttle key in a time batch
per policy and publishes ``(throttleKey, isThrottled, expiryTimeStamp)``. Here
the analytics pipeline plays that role from the same traffic: it hands
per-minute counts to :func:`apply_counts`, in the transaction that writes the
analytics facts, so counters and facts can never disagree and a replayed run
counts nothing twice. Gateways (or a quota-enforcement poller) read the
decisions with :func:`throttle_status` and :func:`throttled_keys`.

Windows are fixed, in event time, aligned to the Unix epoch (min/hour/day) or
to calendar months, so every writer maps a minute to the same window whatever
order the counts arrive in. All datetimes are naive UTC; aware ones are
converted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, and_, func, select, text, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from core.errors import InputError
from core.settings import syntax_problem
from store.errors import StoreError
from store.tables import NAME, SHORT, throttle_assignments, throttle_counters, throttle_decisions, throttle_policies
from store.upsert import additive_upsert, replace_upsert

log = logging.getLogger(__name__)

LEVELS: tuple[str, ...] = ("subscription", "application", "api")
QUOTA_TYPES: tuple[str, ...] = ("requestCount", "bandwidthVolume")
TIME_UNITS: tuple[str, ...] = ("min", "hour", "day", "month")
UNLIMITED = "Unlimited"

_UNIT_SECONDS = {"min": 60, "hour": 3600, "day": 86400}
_EPOCH = datetime(1970, 1, 1)
_CHUNK = 500  # (level, key, unit) tuples per IN list: 1500 bound parameters, far below both stores' limits


class PolicyError(StoreError, InputError, ValueError):
    """A policies file (or policy) cannot be used; the message names the file, the entry and the problem."""


@dataclass(frozen=True)
class ThrottlePolicy:
    """One throttling policy (tier) at one level, validated on construction.

    Validating here rather than in the loader means no invalid policy can reach
    the store or the window arithmetic, whichever way it was built.
    """

    level: str
    name: str
    quota_type: str
    quota: int | None
    unit_time: int = 1
    time_unit: str = "min"
    stop_on_quota_reach: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"unknown level {self.level!r} (expected subscription, application or api)")
        if not isinstance(self.name, str) or not self.name or len(self.name) > SHORT:
            raise ValueError(f"policy name must be a non-empty string of at most {SHORT} characters, "
                             f"not {self.name!r}")
        if self.quota_type not in QUOTA_TYPES:
            raise ValueError(f"unknown quota_type {self.quota_type!r} (expected requestCount or bandwidthVolume)")
        if self.quota is not None and (not isinstance(self.quota, int) or isinstance(self.quota, bool)):
            raise ValueError(f"quota must be an integer or null (unlimited), not {self.quota!r}")
        if self.quota is not None and self.quota < 0:
            raise ValueError(f"negative quota {self.quota}")
        if self.time_unit not in TIME_UNITS:
            raise ValueError(f"unknown time_unit {self.time_unit!r} (expected min, hour, day or month)")
        if not isinstance(self.unit_time, int) or isinstance(self.unit_time, bool) or self.unit_time < 1:
            raise ValueError(f"unit_time must be an integer >= 1, not {self.unit_time!r}")
        if self.time_unit == "month" and self.unit_time != 1:
            raise ValueError(f"month windows are calendar months: unit_time must be 1, not {self.unit_time}")
        if not isinstance(self.stop_on_quota_reach, bool):
            raise ValueError(f"stop_on_quota_reach must be true or false, not {self.stop_on_quota_reach!r}")
        if not isinstance(self.description, str):
            raise ValueError(f"description must be a string, not {self.description!r}")

    @property
    def window_unit(self) -> str:
        """The counters' window name, e.g. ``1min``, ``5min``, ``1month``."""
        return f"{self.unit_time}{self.time_unit}"


@dataclass(frozen=True)
class ThrottleAssignment:
    """A policy assigned to a throttle key whose events do not carry one (API-level policies)."""

    level: str
    throttle_key: str
    policy: str


def _per_min(level: str, name: str, quota: int | None, description: str) -> ThrottlePolicy:
    return ThrottlePolicy(level, name, "requestCount", quota, 1, "min", True, description)


# WSO2 APIM's defaults (carbon-apimgt APIConstants DEFAULT_SUB/APP/API_POLICY_*): requests per minute.
DEFAULT_POLICIES: tuple[ThrottlePolicy, ...] = (
    _per_min("subscription", "Gold", 5000, "Allows 5000 requests per minute"),
    _per_min("subscription", "Silver", 2000, "Allows 2000 requests per minute"),
    _per_min("subscription", "Bronze", 1000, "Allows 1000 requests per minute"),
    _per_min("subscription", "Unauthenticated", 500, "Allows 500 requests per minute (resources with no auth)"),
    _per_min("subscription", UNLIMITED, None, "Allows unlimited requests"),
    _per_min("application", "50PerMin", 50, "Allows 50 requests per minute"),
    _per_min("application", "20PerMin", 20, "Allows 20 requests per minute"),
    _per_min("application", "10PerMin", 10, "Allows 10 requests per minute"),
    _per_min("application", UNLIMITED, None, "Allows unlimited requests"),
    _per_min("api", "50KPerMin", 50000, "Allows 50000 requests per minute"),
    _per_min("api", "20KPerMin", 20000, "Allows 20000 requests per minute"),
    _per_min("api", "10KPerMin", 10000, "Allows 10000 requests per minute"),
    _per_min("api", UNLIMITED, None, "Allows unlimited requests"),
)


# --- throttle keys (WSO2 4.2) -------------------------------------------------------------------


def subscription_key(application_id: str, api_context: str, api_version: str) -> str:
    """``appId:apiContext:apiVersion``: one counter per application and API subscription."""
    return f"{application_id}:{api_context}:{api_version}"


def application_key(application_id: str, user_name: str) -> str:
    """``appId:authorizedUser``: WSO2's per-token quota counts per application and end user."""
    return f"{application_id}:{user_name}"


def api_key(api_context: str, api_version: str) -> str:
    """``apiContext:apiVersion``: one counter per API across all consumers."""
    return f"{api_context}:{api_version}"


# --- windows -------------------------------------------------------------------------------------


def _naive_utc(ts: datetime) -> datetime:
    """Naive UTC, the store's convention; an aware timestamp is converted rather than misread."""
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo is not None else ts


def window_for(policy: ThrottlePolicy, ts: datetime) -> tuple[str, datetime, datetime]:
    """The policy's window containing ``ts``: ``(window_unit, start, end)``, end exclusive.

    min/hour/day windows are multiples of ``unit_time * unit`` since the Unix
    epoch, so a 5min window is always :00-:05, :05-:10, ... and a 1day window
    starts at midnight UTC. Months are calendar months (hence unit_time 1).
    """
    ts = _naive_utc(ts)
    if policy.time_unit == "month":
        start = ts.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        return policy.window_unit, start, end
    length = timedelta(seconds=policy.unit_time * _UNIT_SECONDS[policy.time_unit])
    start = _EPOCH + ((ts - _EPOCH) // length) * length
    return policy.window_unit, start, start + length


# --- policies file -------------------------------------------------------------------------------

_POLICY_REQUIRED = ("level", "name", "quota_type", "quota", "unit_time", "time_unit")
_POLICY_FIELDS = {f.name for f in fields(ThrottlePolicy)}
_ASSIGNMENT_FIELDS = ("level", "throttle_key", "policy")


def _read_document(path: Path) -> Any:
    """Parse the file as JSON (``.json``) or YAML (anything else); errors become one-line PolicyErrors."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PolicyError(f"{path}: cannot read: {reason}") from exc
    import yaml  # only where a policies file is read: every pipeline start imports this module

    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise PolicyError(f"{path}: not valid {kind}{syntax_problem(exc)}") from exc


def _entries(path: Path, doc: Mapping[str, Any], section: str) -> list[Mapping[str, Any]]:
    value = doc.get(section, [])
    if value is None:
        return []
    if not isinstance(value, list):
        raise PolicyError(f"{path}: {section!r} must be a list")
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise PolicyError(f"{path}: {section}[{i}]: expected a mapping, got {entry!r}")
    return value


def load_policies_file(path: str | Path, *, known_policies: Collection[tuple[str, str]] | None = ()
                       ) -> tuple[list[ThrottlePolicy], list[ThrottleAssignment]]:
    """Read and validate custom policies and API-level assignments from YAML or JSON.

    The file is ``{"policies": [...], "assignments": [...]}``. An assignment
    may name a policy from the file, a WSO2 default, or one of
    ``known_policies`` (``(level, name)`` pairs, e.g. those already stored),
    so a typo is caught here instead of silently counting the API as unlimited.
    ``known_policies=None`` skips that one check, for validating a file before
    the store (which holds the stored policies) is opened.

    Raises:
        PolicyError: naming the file, the entry (``policies[2]``) and the problem.
    """
    path = Path(path)
    doc = _read_document(path)
    if not isinstance(doc, dict) or not (set(doc) & {"policies", "assignments"}):
        raise PolicyError(f"{path}: expected a mapping with 'policies' and/or 'assignments'")
    extra = sorted(set(doc) - {"policies", "assignments"})
    if extra:
        raise PolicyError(f"{path}: unknown top-level key(s) {', '.join(map(repr, extra))}")

    policies: list[ThrottlePolicy] = []
    seen: dict[tuple[str, str], int] = {}
    for i, entry in enumerate(_entries(path, doc, "policies")):
        where = f"{path}: policies[{i}]"
        missing = [k for k in _POLICY_REQUIRED if k not in entry]
        if missing:
            raise PolicyError(f"{where}: missing {', '.join(missing)}")
        unknown = sorted(set(entry) - _POLICY_FIELDS)
        if unknown:
            raise PolicyError(f"{where}: unknown field(s) {', '.join(unknown)}")
        try:
            policy = ThrottlePolicy(**entry)
        except ValueError as exc:
            raise PolicyError(f"{where} ({entry.get('name')!r}): {exc}") from exc
        key = (policy.level, policy.name)
        if key in seen:
            raise PolicyError(f"{where}: duplicate policy {policy.name!r} at level {policy.level} "
                              f"(first defined at policies[{seen[key]}])")
        seen[key] = i
        policies.append(policy)

    known = set(seen) | {(p.level, p.name) for p in DEFAULT_POLICIES} | set(known_policies or ())
    assignments: list[ThrottleAssignment] = []
    assigned: dict[str, int] = {}
    for i, entry in enumerate(_entries(path, doc, "assignments")):
        where = f"{path}: assignments[{i}]"
        missing = [k for k in _ASSIGNMENT_FIELDS if k not in entry]
        if missing:
            raise PolicyError(f"{where}: missing {', '.join(missing)}")
        unknown = sorted(set(entry) - set(_ASSIGNMENT_FIELDS))
        if unknown:
            raise PolicyError(f"{where}: unknown field(s) {', '.join(unknown)}")
        level, key, policy_name = entry["level"], entry["throttle_key"], entry["policy"]
        if level != "api":
            raise PolicyError(f"{where}: assignments are for level 'api' only (subscription and application "
                              f"policies come with each request), not {level!r}")
        if not isinstance(key, str) or not key or len(key) > NAME:
            raise PolicyError(f"{where}: throttle_key must be a non-empty string of at most {NAME} characters")
        if known_policies is not None and (level, policy_name) not in known:
            raise PolicyError(f"{where}: unknown policy {policy_name!r} at level {level}")
        if key in assigned:
            raise PolicyError(f"{where}: {key!r} is already assigned at assignments[{assigned[key]}]")
        assigned[key] = i
        assignments.append(ThrottleAssignment(level, key, policy_name))
    return policies, assignments


# --- storing and reading policies ----------------------------------------------------------------


def _policy_row(p: ThrottlePolicy) -> dict[str, Any]:
    return {f.name: getattr(p, f.name) for f in fields(ThrottlePolicy)}


def store_policies(conn: Connection, policies: Iterable[ThrottlePolicy],
                   assignments: Iterable[ThrottleAssignment] = ()) -> int:
    """Write policies and assignments, replacing same-named ones; returns rows written.

    Runs in the caller's transaction. Counters already made under a changed
    policy keep their windows; the next counts are judged by the new quota.
    """
    policy_rows = sorted((_policy_row(p) for p in policies), key=lambda r: (r["level"], r["name"]))
    assignment_rows = sorted(({"level": a.level, "throttle_key": a.throttle_key, "policy": a.policy}
                              for a in assignments), key=lambda r: (r["level"], r["throttle_key"]))
    return (replace_upsert(conn, throttle_policies, policy_rows, key=("level", "name"))
            + replace_upsert(conn, throttle_assignments, assignment_rows, key=("level", "throttle_key")))


def ensure_default_policies(engine: Engine) -> int:
    """Insert the WSO2 default policies that are missing; returns how many were inserted.

    ``ON CONFLICT DO NOTHING``: a default the user redefined (say Gold at
    10000/min) is never overwritten, and concurrent callers cannot collide.
    """
    with engine.begin() as conn:
        # Each dialect's own Insert: ON CONFLICT DO NOTHING is not part of the generic one.
        insert_ignoring = {"postgresql": lambda: postgresql.insert(throttle_policies).on_conflict_do_nothing(),
                           "sqlite": lambda: sqlite.insert(throttle_policies).on_conflict_do_nothing()
                           }[conn.dialect.name]
        existing = {(r.level, r.name) for r in conn.execute(select(throttle_policies.c.level,
                                                                    throttle_policies.c.name))}
        missing = [_policy_row(p) for p in DEFAULT_POLICIES if (p.level, p.name) not in existing]
        if missing:
            conn.execute(insert_ignoring(), missing)
        return len(missing)


def load_policies(conn: Connection) -> dict[tuple[str, str], ThrottlePolicy]:
    """Every stored policy by ``(level, name)``."""
    return {(r.level, r.name): ThrottlePolicy(r.level, r.name, r.quota_type,
                                              None if r.quota is None else int(r.quota), int(r.unit_time),
                                              r.time_unit, bool(r.stop_on_quota_reach), r.description or "")
            for r in conn.execute(select(throttle_policies))}


def load_assignments(conn: Connection) -> dict[tuple[str, str], str]:
    """Every assignment: ``(level, throttle_key) -> policy name``."""
    return {(r.level, r.throttle_key): r.policy for r in conn.execute(select(throttle_assignments))}


def effective_policies(conn: Connection) -> dict[tuple[str, str], ThrottlePolicy]:
    """The WSO2 defaults overlaid with the stored policies.

    A store nobody ran :func:`ensure_default_policies` on still judges Gold
    as 5000/min rather than as unknown; stored edits win.
    """
    return {(p.level, p.name): p for p in DEFAULT_POLICIES} | load_policies(conn)


# --- applying the pipeline's counts --------------------------------------------------------------


class ThrottleCount(NamedTuple):
    """Admitted traffic for one throttle key in one event-time minute, as the pipeline aggregates it.

    ``policy`` is the tier the events carry (subscription, application) and ""
    for level api, whose policy comes from ``throttle_assignments``.
    """

    level: str
    throttle_key: str
    policy: str
    minute: datetime
    requests: int
    bytes: int


_warned_unknown: set[tuple[str, str]] = set()


def _resolve(level: str, name: str, policies: Mapping[tuple[str, str], ThrottlePolicy]) -> ThrottlePolicy:
    """The named policy, or the level's Unlimited one: an unknown tier must not stop the pipeline."""
    policy = policies.get((level, name))
    if policy is not None:
        return policy
    if (level, name) not in _warned_unknown:
        _warned_unknown.add((level, name))
        log.warning("unknown throttle policy; counting it as Unlimited",
                    extra={"throttle_level": level, "throttle_policy": name})
    return policies[(level, UNLIMITED)]


def _judge(policy: ThrottlePolicy, used: int, near_limit_ratio: float) -> tuple[bool, bool]:
    """``(throttled, near_limit)``. A policy with stop_on_quota_reach false is never throttled
    (WSO2 lets such traffic through and bills it); it still reports near_limit."""
    if policy.quota is None:
        return False, False
    return policy.stop_on_quota_reach and used >= policy.quota, used >= near_limit_ratio * policy.quota


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def apply_counts(conn: Connection, counts: Sequence[ThrottleCount], *, now: datetime,
                 near_limit_ratio: float = 0.8) -> int:
    """Add ``counts`` to the window counters and refresh the touched keys' decisions.

    Runs in the caller's transaction (the one writing the analytics facts).
    Counts are first summed per counter row in memory: fewer statements, and
    PostgreSQL refuses an upsert that hits the same row twice. Each touched
    key's decision is then recomputed from its latest stored window, not this
    batch's, so late events never move a decision back in time. A key's
    current policy is the one carried by its latest-minute count in this call
    (a tier change applies from then on). Rows are written sorted by key so
    concurrent writers lock in the same order. Counters keep the policy name
    they were first created under (the additive upsert adds measures only).

    Returns:
        The number of counter rows written.

    Raises:
        ValueError: a count has an unknown level, or near_limit_ratio is outside [0, 1].
    """
    if not 0.0 <= near_limit_ratio <= 1.0:
        raise ValueError(f"near_limit_ratio must be within [0, 1], not {near_limit_ratio}")
    if not counts:
        return 0
    now = _naive_utc(now)
    policies = effective_policies(conn)
    assignments = load_assignments(conn)

    counters: dict[tuple[str, str, str, datetime], list[Any]] = {}
    current: dict[tuple[str, str], tuple[datetime, ThrottlePolicy]] = {}  # key -> (latest minute, its policy)
    for c in counts:
        if c.level not in LEVELS:
            raise ValueError(f"throttle count with unknown level {c.level!r}")
        if c.level == "api":
            name = assignments.get(("api", c.throttle_key))
            if name is None:
                continue  # no API-level policy assigned: nothing to enforce
        else:
            name = c.policy
        policy = _resolve(c.level, name, policies)
        unit, start, _ = window_for(policy, c.minute)
        row = counters.setdefault((c.level, c.throttle_key, unit, start), [policy.name, 0, 0])
        row[1] += c.requests
        row[2] += c.bytes
        minute = _naive_utc(c.minute)
        seen = current.get((c.level, c.throttle_key))
        if seen is None or minute >= seen[0]:
            current[(c.level, c.throttle_key)] = (minute, policy)

    rows = [{"level": k[0], "throttle_key": k[1], "window_unit": k[2], "window_start": k[3],
             "policy": v[0], "requests": v[1], "bytes": v[2]} for k, v in sorted(counters.items())]
    additive_upsert(conn, throttle_counters, rows, key=("level", "throttle_key", "window_unit", "window_start"),
                    measures=("requests", "bytes"))

    decisions = []
    for (level, key, _unit), (start, requests, nbytes) in sorted(_latest_windows(conn, current).items()):
        policy = current[(level, key)][1]
        _, win_start, win_end = window_for(policy, start)
        used = requests if policy.quota_type == "requestCount" else nbytes
        throttled, near = _judge(policy, used, near_limit_ratio)
        decisions.append({"level": level, "throttle_key": key, "policy": policy.name, "window_start": win_start,
                          "window_end": win_end, "used": used, "quota": policy.quota, "throttled": throttled,
                          "near_limit": near, "updated_at": now})
    replace_upsert(conn, throttle_decisions, decisions, key=("level", "throttle_key"))
    return len(rows)


def _latest_windows(conn: Connection, current: Mapping[tuple[str, str], tuple[datetime, ThrottlePolicy]]
                    ) -> dict[tuple[str, str, str], tuple[datetime, int, int]]:
    """Per touched key, its latest counter under its current policy's window unit: one query per chunk."""
    t = throttle_counters.c
    wanted = sorted((level, key, policy.window_unit) for (level, key), (_, policy) in current.items())
    found: dict[tuple[str, str, str], tuple[datetime, int, int]] = {}
    if conn.dialect.name == "postgresql" and wanted:
        # three array parameters joined with unnest: SQLAlchemy compiles a tuple IN of thousands of
        # values slowly (a bind name each), and PostgreSQL walks the primary key once per wanted key
        levels, keys, units = (list(col) for col in zip(*wanted))
        rows = conn.execute(text(
            "SELECT DISTINCT ON (c.level, c.throttle_key, c.window_unit) c.level, c.throttle_key, c.window_unit, "
            "c.window_start, c.requests, c.bytes FROM throttle_counters c "
            "JOIN unnest(CAST(:levels AS text[]), CAST(:keys AS text[]), CAST(:units AS text[])) "
            "AS w(level, throttle_key, window_unit) "
            "ON c.level = w.level AND c.throttle_key = w.throttle_key AND c.window_unit = w.window_unit "
            "ORDER BY c.level, c.throttle_key, c.window_unit, c.window_start DESC"),
            {"levels": levels, "keys": keys, "units": units})
        for r in rows:
            found[(r.level, r.throttle_key, r.window_unit)] = (r.window_start, int(r.requests), int(r.bytes))
        return found
    for chunk in _chunks(wanted):
        latest = (select(t.level, t.throttle_key, t.window_unit, func.max(t.window_start).label("window_start"))
                  .where(tuple_(t.level, t.throttle_key, t.window_unit).in_(list(chunk)))
                  .group_by(t.level, t.throttle_key, t.window_unit)
                  .subquery())
        query = (select(t.level, t.throttle_key, t.window_unit, t.window_start, t.requests, t.bytes)
                 .join(latest, and_(t.level == latest.c.level, t.throttle_key == latest.c.throttle_key,
                                    t.window_unit == latest.c.window_unit,
                                    t.window_start == latest.c.window_start)))
        for r in conn.execute(query):
            found[(r.level, r.throttle_key, r.window_unit)] = (r.window_start, int(r.requests), int(r.bytes))
    return found


# --- queries -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThrottleStatus:
    """A throttle key's standing at some moment; ``quota``/``remaining`` None mean unlimited."""

    level: str
    throttle_key: str
    policy: str | None
    quota: int | None
    used: int
    remaining: int | None
    throttled: bool
    near_limit: bool
    resets_at: datetime
    window_start: datetime

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: datetimes as ISO-8601 UTC with a ``Z``."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("resets_at", "window_start"):
            out[name] = out[name].isoformat() + "Z"
        return out


@contextmanager
def _connection(engine_or_conn: Engine | Connection) -> Iterator[Connection]:
    if isinstance(engine_or_conn, Connection):
        yield engine_or_conn
    else:
        with engine_or_conn.connect() as conn:
            yield conn


def _remaining(quota: int | None, used: int) -> int | None:
    return None if quota is None else max(quota - used, 0)


def _from_decision(r: Any) -> ThrottleStatus:
    quota = None if r.quota is None else int(r.quota)
    return ThrottleStatus(r.level, r.throttle_key, r.policy, quota, int(r.used), _remaining(quota, int(r.used)),
                          bool(r.throttled), bool(r.near_limit), r.window_end, r.window_start)


def throttle_status(engine_or_conn: Engine | Connection, level: str, throttle_key: str,
                    now: datetime) -> ThrottleStatus:
    """Where ``throttle_key`` stands at ``now``, from its latest decision.

    - A decision whose window has ended by ``now`` no longer binds: the key is
      not throttled, used is 0, remaining is the full quota and resets_at is
      the end of the policy's window containing ``now``.
    - A key never counted has used 0 and is not throttled. Its policy is None
      (subscription and application tiers only arrive with traffic), except
      an api key with an assignment, which reports that policy and its quota.
      A key with no policy is unlimited and its window is the current minute.
    - A ``now`` before the decision's window (a look into the past) is
      answered with the latest decision: past windows' decisions are not kept.

    Raises:
        ValueError: unknown level.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r} (expected subscription, application or api)")
    now = _naive_utc(now)
    d = throttle_decisions.c
    with _connection(engine_or_conn) as conn:
        row = conn.execute(select(throttle_decisions).where(d.level == level, d.throttle_key == throttle_key)
                           ).first()
        if row is not None and row.window_end > now:
            return _from_decision(row)
        policies = effective_policies(conn)
        if row is not None:
            name: str | None = row.policy
        elif level == "api":
            name = load_assignments(conn).get(("api", throttle_key))
        else:
            name = None
    policy = policies.get((level, name)) if name is not None else None
    window_policy = policy or policies[(level, UNLIMITED)]
    _, start, end = window_for(window_policy, now)
    if policy is None and row is not None:
        quota = None if row.quota is None else int(row.quota)  # policy since deleted: keep what was enforced
    else:
        quota = policy.quota if policy is not None else None
    return ThrottleStatus(level, throttle_key, name, quota, 0, quota, False, False, end, start)


def throttled_keys(engine_or_conn: Engine | Connection, now: datetime) -> list[ThrottleStatus]:
    """Every key throttled at ``now`` (its window not yet ended), sorted by level and key.

    What a quota-enforcement poller mirrors into the gateways' reject lists.
    """
    now = _naive_utc(now)
    d = throttle_decisions.c
    with _connection(engine_or_conn) as conn:
        rows = conn.execute(select(throttle_decisions).where(d.throttled.is_(True), d.window_end > now)
                            .order_by(d.level, d.throttle_key)).all()
    return [_from_decision(r) for r in rows]
