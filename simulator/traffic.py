"""Seeded, realistic API traffic over a :class:`~simulator.catalog.Catalog`.

:func:`generate` yields ``int(rate * duration_s)`` :class:`SimRequest` s whose
request timestamps are spread evenly (one per slot of ``1000 / rate`` ms, with
seeded jitter inside the slot) over ``[start_ms, start_ms + duration_s * 1000)``
and never leave it, in non-decreasing order. For each request:

* the API is drawn by popularity; ~3% of requests are unauthenticated (no
  ``Authorization`` header, application ``anonymous``, tier ``Unauthenticated``),
  the rest come from one of the API's subscribers (weighted by application
  activity) and one of that application's users, with the token that user
  holds (reused across requests);
* the resource is drawn by method weight (GET-heavy) and its template filled
  with ids, e.g. ``/orders/{orderId}`` -> ``/orders/8412``;
* the response code follows the profile mix (~88% 2xx, 2% 3xx, 8% 4xx, 2% 5xx),
  method-aware (201 for POST, 204 for DELETE); latency is log-normal with a
  heavy tail, gateway rejections (401/403/429) have no backend time, a 504
  waits for the upstream timeout; response time always >= backend time;
* sizes are log-normal (0-byte bodies for most GETs, 204 and 304).

Same (catalog, seed, rate, duration, start, credentials) -> same sequence.
Throughput matters (benchmarks replay millions of requests), so all
distributions are precomputed: cumulative weights searched with ``bisect`` and
quantile tables indexed by one ``random()`` instead of ``gauss()``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import random
import re
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from itertools import accumulate
from statistics import NormalDist
from typing import Any

from simulator.catalog import ANONYMOUS, UNAUTHENTICATED_TIER, Api, Application, Catalog
from simulator.config import DEFAULT_PROFILE, SimulationProfile
from simulator.tokens import Credentials, shared_signing_key

_PARAM = re.compile(r"\{[^}/]+\}")
#: Per method: (response codes, their cumulative probabilities).
CodeTables = dict[str, tuple[tuple[int, ...], tuple[float, ...]]]


@dataclass(frozen=True, slots=True)
class SimRequest:
    """One simulated request through the mesh, with everything Mixer and the ground truth need.

    ``tier`` is the subscription tier the request counts against
    (``Unauthenticated`` for anonymous calls); ``auth_header`` is the full
    ``Authorization`` value (``Bearer <token>``, or ``""`` when absent);
    ``user_ip`` is the raw 4- or 16-byte address.
    """

    api: Api
    application_id: str
    application_name: str
    consumer_key: str
    tier: str
    key_type: str
    user: str
    user_tenant_domain: str
    method: str
    resource_template: str
    resource_path: str
    response_code: int
    request_ts_ms: int
    response_ts_ms: int
    backend_time_ms: int
    request_size: int
    response_size: int
    user_ip: bytes
    user_agent: str
    auth_header: str
    destination: str
    request_host: str
    protocol: str

    @property
    def api_name(self) -> str:
        return self.api.name

    @property
    def api_version(self) -> str:
        return self.api.version

    @property
    def api_context(self) -> str:
        return self.api.context

    @property
    def is_anonymous(self) -> bool:
        return not self.auth_header

    @property
    def status_class(self) -> str:
        """``"2xx"`` .. ``"5xx"``."""
        return f"{self.response_code // 100}xx"

    @property
    def response_time_ms(self) -> int:
        return self.response_ts_ms - self.request_ts_ms

    @property
    def service_time_ms(self) -> int:
        """The gateway's own share: response time minus backend time."""
        return self.response_time_ms - self.backend_time_ms

    @property
    def bucket_start_ms(self) -> int:
        """Start of the UTC minute the request falls in."""
        return self.request_ts_ms - self.request_ts_ms % 60000

    @property
    def user_ip_text(self) -> str:
        return str(ipaddress.ip_address(self.user_ip))


def _slot_constructor(cls: type) -> Callable[..., Any]:
    """A positional constructor for a frozen, slotted dataclass that skips ``__init__``.

    A frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__(self, "name", value)``; calling the slot descriptors
    directly builds the same (equal, hashable, immutable) object in about 60% of
    the time, which is a large share of the per-request cost in :meth:`TrafficModel.requests`.
    The code is generated, as ``dataclasses`` generates ``__init__``.
    """
    names = [f.name for f in fields(cls)]
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    namespace.update({f"_set_{n}": getattr(cls, n).__set__ for n in names})
    body = "".join(f"    _set_{n}(obj, {n})\n" for n in names)
    exec(f"def make({', '.join(names)}):\n    obj = _new(_cls)\n{body}    return obj\n", namespace)  # noqa: S102
    return namespace["make"]


_new_request = _slot_constructor(SimRequest)


# ---------------------------------------------------------------------------
# Precomputed distributions


def _cumulative(weights: Sequence[float]) -> list[float]:
    """Normalised cumulative weights, last exactly 1.0, for ``bisect_right(cum, random())``."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    cum = [w / total for w in accumulate(weights)]
    cum[-1] = 1.0
    return cum


def _lognormal_table(median: float, sigma: float, size: int) -> list[int]:
    """``size`` equally likely integer quantiles of LogNormal(ln(median), sigma)."""
    nd = NormalDist()
    return [round(median * math.exp(sigma * nd.inv_cdf((j + 0.5) / size))) for j in range(size)]


def _mixture_table(share: float, median: float, sigma: float, size: int) -> list[int]:
    """A table that is 0 with probability ``1 - share`` and log-normal otherwise."""
    k = round(share * size)
    return [0] * (size - k) + (_lognormal_table(median, sigma, k) if k else [])


@dataclass(frozen=True, slots=True)
class _Route:
    method: str
    template: str
    fmt: str
    params: int
    codes: tuple[int, ...]
    code_cum: tuple[float, ...]


@dataclass(slots=True)
class _Client:
    app: Application
    user: str
    tenant: str
    ip: bytes
    auth: str | None = None


@dataclass(frozen=True, slots=True)
class _AppState:
    app: Application
    clients: tuple[_Client, ...]
    client_cum: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class _ApiState:
    api: Api
    routes: tuple[_Route, ...]
    route_cum: tuple[float, ...]
    subscribers: tuple[tuple[_AppState, str], ...]
    subscriber_cum: tuple[float, ...]


def traffic_seed(seed: int) -> int:
    """The seed of the traffic RNG for a run seed.

    The catalog is built from ``Random(seed)``; drawing the traffic from a
    second ``Random(seed)`` would replay the very same number stream, so the
    traffic uses an independent, reproducible derivative of it.
    """
    return int.from_bytes(hashlib.sha256(f"traffic:{seed}".encode()).digest()[:8], "big")


class TrafficModel:
    """The precomputed sampling tables for one catalog, profile and credential set.

    Build once and call :meth:`requests` for any number of windows; building
    costs milliseconds, each request a few microseconds.
    """

    def __init__(self, catalog: Catalog, credentials: Credentials,
                 profile: SimulationProfile = DEFAULT_PROFILE) -> None:
        self.catalog = catalog
        self.credentials = credentials
        self.profile = profile
        size = profile.quantile_table_size
        method_weights = dict(profile.method_weights)
        code_tables = self._code_tables(profile)
        apps = {a.id: self._app_state(a, catalog, profile) for a in catalog.applications}

        self.apis: list[_ApiState] = []
        for api in catalog.apis:
            routes = []
            for method, template in api.resources:
                codes, cum = code_tables.get(method, code_tables["GET"])
                fmt = _PARAM.sub("%d", template.replace("%", "%%"))
                routes.append(_Route(method, template, fmt, len(_PARAM.findall(template)), codes, cum))
            subs = tuple((apps[app.id], tier) for app, tier in catalog.subscribers(api))
            self.apis.append(_ApiState(
                api=api,
                routes=tuple(routes),
                route_cum=tuple(_cumulative([method_weights.get(r.method, 1.0) for r in routes])),
                subscribers=subs,
                subscriber_cum=tuple(_cumulative([s.app.activity for s, _ in subs])) if subs else (),
            ))
        self.api_cum = _cumulative([s.api.popularity for s in self.apis])
        self.subscribed_apis = [s for s in self.apis if s.subscribers]
        self.subscribed_api_cum = _cumulative([s.api.popularity for s in self.subscribed_apis])

        self.user_agents = [ua for ua, _ in profile.user_agents]
        self.user_agent_cum = _cumulative([w for _, w in profile.user_agents])
        self.gateway_ms = _lognormal_table(profile.gateway_latency_median_ms, profile.gateway_latency_sigma, size)
        self.backend_ms = self._backend_tables(profile, code_tables, size)
        self.response_size = self._response_size_tables(profile, code_tables, size)
        self.request_size = {m: (_lognormal_table(profile.request_size_median, profile.request_size_sigma, size)
                                 if m in profile.body_methods else
                                 _mixture_table(profile.bodyless_method_body_share,
                                                profile.bodyless_method_body_median, profile.request_size_sigma,
                                                size))
                             for m in {r.method for s in self.apis for r in s.routes}}

    @staticmethod
    def _code_tables(profile: SimulationProfile) -> CodeTables:
        """Per method, every response code with its overall probability (class share x in-class share)."""
        shares = dict(profile.status_class_shares)
        non_success = [("3xx", profile.redirect_codes), ("4xx", profile.client_error_codes),
                       ("5xx", profile.server_error_codes)]
        tables: CodeTables = {}
        for method, success in profile.success_codes:
            pairs: list[tuple[int, float]] = []
            for cls, codes in [("2xx", success), *non_success]:
                total = sum(w for _, w in codes)
                pairs.extend((code, shares[cls] * w / total) for code, w in codes)
            tables[method] = (tuple(c for c, _ in pairs), tuple(_cumulative([w for _, w in pairs])))
        return tables

    @staticmethod
    def _all_codes(code_tables: CodeTables) -> list[int]:
        return sorted({c for codes, _ in code_tables.values() for c in codes})

    def _backend_tables(self, profile: SimulationProfile, code_tables: CodeTables, size: int) -> dict[int, list[int]]:
        normal = _lognormal_table(profile.backend_latency_median_ms, profile.backend_latency_sigma, size)
        fast = _lognormal_table(profile.fast_failure_latency_median_ms, profile.fast_failure_latency_sigma, size)
        rejected = [0] * size
        timeout = [profile.upstream_timeout_ms] * size
        out: dict[int, list[int]] = {}
        for code in self._all_codes(code_tables):
            if code in profile.gateway_rejected_codes:
                out[code] = rejected
            elif code in profile.upstream_timeout_codes:
                out[code] = timeout
            elif code in profile.fast_failure_codes:
                out[code] = fast
            else:
                out[code] = normal
        return out

    def _response_size_tables(self, profile: SimulationProfile, code_tables: CodeTables,
                              size: int) -> dict[int, list[int]]:
        body = _lognormal_table(profile.response_size_median, profile.response_size_sigma, size)
        error = _lognormal_table(profile.error_response_size_median, profile.error_response_size_sigma, size)
        empty = [0] * size
        return {code: empty if code in profile.empty_body_codes else body if code < 300 else error
                for code in self._all_codes(code_tables)}

    @staticmethod
    def _app_state(app: Application, catalog: Catalog, profile: SimulationProfile) -> _AppState:
        clients = []
        for user_name in app.users:
            user = catalog.user(user_name)
            clients.append(_Client(app=app, user=user.name, tenant=user.tenant_domain, ip=user.ip))
        weights = [1.0 / (i + 1) ** profile.user_activity_exponent for i in range(len(clients))]
        return _AppState(app=app, clients=tuple(clients), client_cum=tuple(_cumulative(weights)))

    def requests(self, *, rate: float, duration_s: float, start_ms: int, seed: int) -> Iterator[SimRequest]:
        """Yield the window's requests in timestamp order (see the module docstring)."""
        count = int(rate * duration_s)
        if count <= 0:
            return
        span_ms = duration_s * 1000.0
        step = span_ms / count
        last_ms = math.ceil(start_ms + span_ms) - 1  # the window is half-open
        rng = random.Random(traffic_seed(seed))
        rnd = rng.random
        bisect = bisect_right
        profile = self.profile
        anonymous_share = profile.anonymous_share
        id_max = profile.path_id_max
        size = profile.quantile_table_size
        apis, api_cum = self.apis, self.api_cum
        sub_apis, sub_api_cum = self.subscribed_apis, self.subscribed_api_cum
        users = self.catalog.users
        n_users = len(users)
        agents, agent_cum = self.user_agents, self.user_agent_cum
        gateway_ms, backend_tables = self.gateway_ms, self.backend_ms
        request_size_tables, response_size_tables = self.request_size, self.response_size
        auth_header = self.credentials.auth_header
        make = _new_request

        for i in range(count):
            ts = start_ms + int((i + rnd()) * step)
            if ts > last_ms:
                ts = last_ms
            if rnd() < anonymous_share:
                state = apis[bisect(api_cum, rnd())]
                api = state.api
                ip = users[int(rnd() * n_users)].ip
                app_id = app_name = user = ANONYMOUS
                consumer_key, key_type, tier, tenant, auth = "", "PRODUCTION", UNAUTHENTICATED_TIER, \
                    api.creator_tenant_domain, ""
            else:
                state = sub_apis[bisect(sub_api_cum, rnd())]
                api = state.api
                app_state, tier = state.subscribers[bisect(state.subscriber_cum, rnd())]
                client = app_state.clients[bisect(app_state.client_cum, rnd())]
                app = client.app
                cached = client.auth
                if cached is None:
                    cached = client.auth = auth_header(app, client.user)
                auth = cached
                app_id, app_name, consumer_key, key_type = app.id, app.name, app.consumer_key, app.key_type
                user, tenant, ip = client.user, client.tenant, client.ip
            route = state.routes[bisect(state.route_cum, rnd())]
            method = route.method
            code = route.codes[bisect(route.code_cum, rnd())]
            backend = backend_tables[code][int(rnd() * size)]
            response_ts = ts + backend + gateway_ms[int(rnd() * size)]
            params = route.params
            if params == 0:
                path = route.template
            elif params == 1:
                path = route.fmt % (int(rnd() * id_max) + 1)
            else:
                path = route.fmt % tuple(int(rnd() * id_max) + 1 for _ in range(params))
            # Positional, in field order: this is the hot loop.
            yield make(api, app_id, app_name, consumer_key, tier, key_type, user, tenant, method, route.template,
                       path, code, ts, response_ts, backend, request_size_tables[method][int(rnd() * size)],
                       response_size_tables[code][int(rnd() * size)], ip, agents[bisect(agent_cum, rnd())], auth,
                       api.destination, api.hostname, api.protocol)


def generate(catalog: Catalog, *, rate: float, duration_s: float, start_ms: int, seed: int,
             credentials: Credentials | None = None,
             profile: SimulationProfile = DEFAULT_PROFILE) -> Iterator[SimRequest]:
    """Simulated requests for one window of traffic.

    Args:
        catalog: the APIs, applications and users.
        rate: requests per simulated second.
        duration_s: simulated seconds; ``int(rate * duration_s)`` requests are produced.
        start_ms: epoch ms of the window start (inclusive).
        seed: seed of this window's randomness (a run may reuse the catalog's seed: the
            traffic draws from :func:`traffic_seed` of it).
        credentials: who signs the tokens; default: a per-process shared key,
            with token times derived from ``start_ms``.
        profile: the traffic mix.

    Returns:
        An iterator of requests in non-decreasing ``request_ts_ms`` order.

    Example:
        >>> from simulator.catalog import build_catalog
        >>> reqs = list(generate(build_catalog(apis=2, applications=3, users=4), rate=10, duration_s=1,
        ...                      start_ms=1_700_000_000_000, seed=1))
        >>> len(reqs), all(1_700_000_000_000 <= r.request_ts_ms < 1_700_000_001_000 for r in reqs)
        (10, True)
    """
    if credentials is None:
        credentials = Credentials(catalog, shared_signing_key(), start_ms=start_ms, duration_s=duration_s,
                                  profile=profile)
    return TrafficModel(catalog, credentials, profile).requests(rate=rate, duration_s=duration_s,
                                                                start_ms=start_ms, seed=seed)
