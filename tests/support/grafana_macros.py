"""What Grafana does to a PostgreSQL panel's SQL before the database sees it, reproduced in Python.

The Grafana dashboards in ``dashboards/grafana/`` are tested by running every panel's SQL on a real
PostgreSQL store (tests/integration/test_grafana_dashboards.py); this module turns the SQL stored in
the JSON into what Grafana 10/11 would send. It follows Grafana's own code, in its order:

1. **Template variables** (browser, ``templateSrv.replace`` with the SQL data sources'
   ``interpolateVariable``): ``$name``, ``${name}``, ``[[name]]`` and ``${name:format}``.
   Without a format, a multi-value or include-All variable becomes a list of SQL literals,
   ``'a','b'`` (each ``'`` doubled); a single-value variable is inserted with ``'`` doubled but
   unquoted. "All" selects every option, or the variable's custom ``allValue`` inserted raw.
   Formats: ``sqlstring`` (``'a','b'``), ``csv``, ``raw``, ``singlequote``, ``doublequote``, ``pipe``,
   ``json``. The built-ins ``$__interval``, ``$__interval_ms``, ``$__from`` and ``$__to`` (epoch ms)
   are variables too. Names that are not variables (``$__timeFilter`` ...) are left alone.
2. **Global SQL substitutions** (backend, ``sqleng.Interpolate``): whatever ``$__interval`` /
   ``$__interval_ms`` is left, ``$__unixEpochFrom()``, ``$__unixEpochTo()``.
3. **PostgreSQL macros** (backend, ``pkg/tsdb/grafana-postgresql-datasource/macros.go``), every
   ``$__name(args)``, arguments split on ``,`` and trimmed:

   - ``$__time(c)`` -> ``c AS "time"``; ``$__timeEpoch(c)`` -> ``extract(epoch from c) as "time"``
   - ``$__timeFilter(c)`` -> ``c BETWEEN 'FROM' AND 'TO'`` (both ends included; times as Go's
     RFC3339Nano in UTC: ``2023-11-14T00:00:00Z``, ``2023-11-15T23:59:59.999Z``)
   - ``$__timeFrom()`` / ``$__timeTo()`` -> ``'FROM'`` / ``'TO'``
   - ``$__timeGroup(c, 1h)`` -> ``floor(extract(epoch from c)/3600)*3600`` (seconds printed as Go's
     ``%v``: ``3600``, ``0.5``, ``1.2096e+06``); with TimescaleDB ``time_bucket('3600.000s',c)``.
     An optional third argument (fill mode) only changes Grafana's post-processing and is accepted.
     Directly followed by ``,`` it gets `` AS "time"`` (Grafana's pre-5.3 compatibility rule).
   - ``$__timeGroupAlias(c, 1h)`` -> ``$__timeGroup`` + `` AS "time"``
   - ``$__unixEpochFilter(c)``, ``$__unixEpochNanoFilter(c)``, ``$__unixEpochNanoFrom()``,
     ``$__unixEpochNanoTo()``, ``$__unixEpochGroup(c, 1h)``, ``$__unixEpochGroupAlias(c, 1h)``
   - anything else: :class:`MacroError`, like Grafana's ``unknown macro``.

Intervals are Grafana's: a number and ``ms``/``s``/``m``/``h``/``d``/``w`` (or Go durations such as
``1h30m``); calendar units (``M``, ``y``) depend on the current date in Grafana and are refused.
Not reproduced: how Grafana picks ``$__interval`` from the range and the panel's width (pass it),
and ad-hoc filters.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

ALL = "$__all"
"""The value Grafana stores when "All" is selected."""


class MacroError(ValueError):
    """A macro or variable Grafana would refuse (the message says which)."""


@dataclass(frozen=True)
class Variable:
    """A dashboard template variable and its current selection.

    ``value`` is the selected value, or a list of them; ``ALL`` (or ``[ALL]``) selects "All":
    ``all_value`` when the variable has a custom one, else every entry of ``options``.
    """

    name: str
    value: str | Sequence[str]
    multi: bool = False
    include_all: bool = False
    all_value: str | None = None
    options: Sequence[str] = field(default_factory=tuple)

    @classmethod
    def from_dashboard(cls, definition: Mapping, value: str | Sequence[str],
                       options: Sequence[str] = ()) -> Variable:
        """A variable as the dashboard JSON's ``templating.list`` entry defines it, with a selection."""
        return cls(definition["name"], value, multi=bool(definition.get("multi")),
                   include_all=bool(definition.get("includeAll")), all_value=definition.get("allValue") or None,
                   options=tuple(options))

    def all_selected(self) -> bool:
        """Whether "All" is selected."""
        return ALL in ([self.value] if isinstance(self.value, str) else list(self.value))

    def selected(self) -> str | list[str]:
        """The value(s) Grafana interpolates; "All" is every option (or the custom all value)."""
        if self.all_selected():
            if not self.include_all:
                raise MacroError(f"variable {self.name!r} has no 'All' option")
            return self.all_value if self.all_value is not None else list(self.options)
        return self.value if isinstance(self.value, str) else list(self.value)


# --- step 1: template variables (Grafana's templateSrv, SQL data source formatting) --------------

# Grafana's variableRegex: $name | [[name(:format)]] | ${name(.fieldPath)(:format)}
_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}")


def _quote_literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _sql_default(value: str | list[str], variable: Variable | None) -> str:
    """The SQL data sources' interpolateVariable (SqlDatasource.ts)."""
    if isinstance(value, str):
        if variable is not None and (variable.multi or variable.include_all):
            return _quote_literal(value)
        return value.replace("'", "''")
    return ",".join(_quote_literal(v) for v in value)


def _formatted(value: str | list[str], fmt: str) -> str:
    values = [value] if isinstance(value, str) else value
    if fmt == "sqlstring":
        return ",".join(_quote_literal(v) for v in values)
    if fmt == "csv":
        return ",".join(values)
    if fmt == "raw":
        return value if isinstance(value, str) else ",".join(values)
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
    if fmt == "doublequote":
        return ",".join('"' + v.replace('"', '\\"') + '"' for v in values)
    if fmt == "pipe":
        return "|".join(values)
    if fmt == "json":
        return json.dumps(value, separators=(",", ":"))
    raise MacroError(f"variable format {fmt!r} is not reproduced here")


def interpolate_variables(sql: str, variables: Mapping[str, Variable], builtins: Mapping[str, str]) -> str:
    """Step 1: replace template variables; unknown names are left as they are (as Grafana does)."""

    def replace(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6)
        if m.group(5):
            raise MacroError(f"field paths (${{{name}.{m.group(5)}}}) are not reproduced here")
        if name in variables:
            variable = variables[name]
            if variable.all_selected() and variable.all_value is not None:
                return variable.all_value  # Grafana skips formatting of a custom all value
            value = variable.selected()
            return _sql_default(value, variable) if fmt is None else _formatted(value, fmt)
        if name in builtins:
            return builtins[name] if fmt is None else _formatted(builtins[name], fmt)
        return m.group(0)

    return _VARIABLE.sub(replace, sql)


# --- times and intervals --------------------------------------------------------------------------

def _utc(ts: dt.datetime) -> dt.datetime:
    """Naive datetimes are UTC; aware ones are converted."""
    return ts.astimezone(dt.UTC).replace(tzinfo=None) if ts.tzinfo is not None else ts


def rfc3339nano(ts: dt.datetime) -> str:
    """Go's ``t.UTC().Format(time.RFC3339Nano)``: trailing zeros of the fraction dropped, ``Z``."""
    ts = _utc(ts)
    text = ts.strftime("%Y-%m-%dT%H:%M:%S")
    if ts.microsecond:
        text += "." + f"{ts.microsecond:06d}".rstrip("0")
    return text + "Z"


def _epoch(ts: dt.datetime) -> dt.timedelta:
    return _utc(ts) - dt.datetime(1970, 1, 1)


def _unix(ts: dt.datetime) -> int:
    """Go's ``t.Unix()``: whole seconds since the epoch, rounded down."""
    return _epoch(ts) // dt.timedelta(seconds=1)


def _unix_ns(ts: dt.datetime) -> int:
    """Go's ``t.UnixNano()`` (Python datetimes stop at microseconds)."""
    return (_epoch(ts) // dt.timedelta(microseconds=1)) * 1000


_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_interval(text: str) -> float:
    """Grafana's ``gtime.ParseInterval``, in seconds (``1h`` -> 3600, ``2d`` -> 172800)."""
    text = text.strip()
    m = re.fullmatch(r"(\d+)([dwMy])", text)
    if m:
        if m.group(2) in "My":
            raise MacroError(f"interval {text!r}: calendar units depend on the current date in Grafana")
        return int(m.group(1)) * (86400.0 if m.group(2) == "d" else 604800.0)
    if not text or not re.fullmatch(rf"(?:{_GO_DURATION.pattern})+", text):
        raise MacroError(f"error parsing interval {text}")
    return sum(float(n) * _GO_UNITS[u] for n, u in _GO_DURATION.findall(text))


def go_float(x: float) -> str:
    """Go's ``fmt.Sprintf("%v", x)`` for a float64: shortest digits, ``e+NN`` from exponent 6 or below -4."""
    if x == 0:
        return "0"
    d = Decimal(repr(float(x))).normalize()
    sign, digit_tuple, exponent = d.as_tuple()
    digits = "".join(map(str, digit_tuple))
    exp = len(digits) + int(exponent) - 1
    prefix = "-" if sign else ""
    if exp < -4 or exp >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{prefix}{mantissa}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"
    return prefix + format(abs(d), "f")


# --- step 2 and 3: the backend ---------------------------------------------------------------------

_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^)]*)\)")


def _evaluate(name: str, args: list[str], start: dt.datetime, end: dt.datetime, timescaledb: bool) -> str:
    def column() -> str:
        if not args or args == [""]:
            raise MacroError(f"missing time column argument for macro {name}")
        return args[0]

    def seconds() -> float:
        if len(args) < 2:
            raise MacroError(f"macro {name} needs time column and interval and optional fill value")
        return parse_interval(args[1].strip("'"))

    frm, to = rfc3339nano(start), rfc3339nano(end)
    if name == "__time":
        return f'{column()} AS "time"'
    if name == "__timeEpoch":
        return f'extract(epoch from {column()}) as "time"'
    if name == "__timeFilter":
        return f"{column()} BETWEEN '{frm}' AND '{to}'"
    if name == "__timeFrom":
        return f"'{frm}'"
    if name == "__timeTo":
        return f"'{to}'"
    if name == "__timeGroup":
        col, s = column(), seconds()
        if timescaledb:
            return f"time_bucket('{s:.3f}s',{col})"
        return f"floor(extract(epoch from {col})/{go_float(s)})*{go_float(s)}"
    if name == "__timeGroupAlias":
        return _evaluate("__timeGroup", args, start, end, timescaledb) + ' AS "time"'
    from_s, to_s = _unix(start), _unix(end)
    from_ns, to_ns = _unix_ns(start), _unix_ns(end)
    if name == "__unixEpochFilter":
        col = column()
        return f"{col} >= {from_s} AND {col} <= {to_s}"
    if name == "__unixEpochNanoFilter":
        col = column()
        return f"{col} >= {from_ns} AND {col} <= {to_ns}"
    if name == "__unixEpochNanoFrom":
        return str(from_ns)
    if name == "__unixEpochNanoTo":
        return str(to_ns)
    if name == "__unixEpochGroup":
        col, s = column(), seconds()
        return f"floor(({col})/{go_float(s)})*{go_float(s)}"
    if name == "__unixEpochGroupAlias":
        return _evaluate("__unixEpochGroup", args, start, end, timescaledb) + ' AS "time"'
    raise MacroError(f'unknown macro "{name}"')


def expand_macros(sql: str, start: dt.datetime, end: dt.datetime, *, timescaledb: bool = False) -> str:
    """Step 3: the PostgreSQL data source's macros (see the module docstring)."""

    def replace(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "__timeGroup":  # pre-5.3 compatibility: first occurrence directly followed by ','
            index = sql.find(m.group(0))
            if index >= 0 and sql[index + len(m.group(0)):index + len(m.group(0)) + 1] == ",":
                name = "__timeGroupAlias"
        args = [a.strip(" ") for a in m.group(2).split(",")]
        return _evaluate(name, args, start, end, timescaledb)

    return _MACRO.sub(replace, sql)


def render(sql: str, *, start: dt.datetime, end: dt.datetime, interval: str = "1m",
           variables: Sequence[Variable] = (), timescaledb: bool = False) -> str:
    """The SQL Grafana sends to PostgreSQL for a panel target (or a variable query).

    Args:
        sql: the target's ``rawSql``.
        start, end: the dashboard's time range (naive = UTC).
        interval: the ``$__interval`` text Grafana computed for the panel (e.g. ``1h``, ``2d``).
        variables: the template variables with their current selection.
    """
    seconds = parse_interval(interval)
    text = interval
    builtins = {"__interval": text, "__interval_ms": str(round(seconds * 1000)),
                "__from": str(_epoch(start) // dt.timedelta(milliseconds=1)),
                "__to": str(_epoch(end) // dt.timedelta(milliseconds=1))}
    sql = interpolate_variables(sql, {v.name: v for v in variables}, builtins)
    sql = sql.replace("$__interval_ms", builtins["__interval_ms"]).replace("$__interval", text)
    sql = sql.replace("$__unixEpochFrom()", str(_unix(start)))
    sql = sql.replace("$__unixEpochTo()", str(_unix(end)))
    return expand_macros(sql, start, end, timescaledb=timescaledb)
